"""Datasets of hashkd.data: image folders, list files, digits, views, caching, load_dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hashkd.data import (
    DataOptions,
    DatasetView,
    DigitsDataset,
    FolderDataset,
    ListFileDataset,
    SplitFolderDataset,
    load_dataset,
)

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _write(path: Path, color: tuple[int, int, int], size: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """root/{cat,ant,bee}/..., with a nested folder, upper-case extension and files to ignore."""
    root = tmp_path / "imgs"
    _write(root / "cat" / "c1.png", (200, 0, 0))
    _write(root / "cat" / "nested" / "c2.PNG", (201, 0, 0))
    _write(root / "ant" / "a1.png", (0, 100, 0))
    _write(root / "bee" / "b1.bmp", (0, 0, 50))
    _write(root / "bee" / "b2.png", (0, 0, 51))
    (root / "bee" / "notes.txt").write_text("not an image")
    _write(root / "bee" / ".hidden.png", (9, 9, 9))
    _write(root / ".cache" / "x.png", (9, 9, 9))
    return root


def test_folder_dataset_classes_labels_and_pixels(folder: Path) -> None:
    ds = FolderDataset(folder)
    assert ds.class_names == ["ant", "bee", "cat"]
    assert len(ds) == 5
    assert ds.labels.dtype == np.uint8 and ds.labels.shape == (5, 3)
    # Oracle: the class of each file is the first folder under the root.
    for path, row in zip(ds.paths, ds.labels, strict=True):
        cls = Path(path).relative_to(folder).parts[0]
        expected = np.zeros(3, dtype=np.uint8)
        expected[ds.class_names.index(cls)] = 1
        np.testing.assert_array_equal(row, expected)
    names = sorted(Path(p).name for p in ds.paths)
    assert names == ["a1.png", "b1.bmp", "b2.png", "c1.png", "c2.PNG"]
    i = [Path(p).name for p in ds.paths].index("c2.PNG")
    img = ds.load_image(i)
    assert img.mode == "RGB" and img.size == (6, 6)
    assert np.asarray(img)[0, 0].tolist() == [201, 0, 0]
    x, y, idx = ds[i]
    assert isinstance(x, Image.Image) and idx == i
    assert y.dtype == torch.uint8 and y.tolist() == [0, 0, 1]


def test_folder_dataset_missing_or_empty_folders_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        FolderDataset(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no class sub-folders"):
        FolderDataset(empty)
    _write(tmp_path / "some" / "full" / "a.png", (1, 2, 3))
    (tmp_path / "some" / "hollow").mkdir()
    # An empty class folder is skipped (with a warning) unless strict.
    assert FolderDataset(tmp_path / "some").class_names == ["full"]
    with pytest.raises(ValueError, match="hollow holds no images"):
        FolderDataset(tmp_path / "some", options=DataOptions(strict=True))
    (tmp_path / "hollow_only" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in any of its 1 class folders"):
        FolderDataset(tmp_path / "hollow_only")


def test_views_keep_labels_paths_and_map_indices(folder: Path) -> None:
    ds = FolderDataset(folder)
    view = ds.subset([4, 0, 2])
    assert isinstance(view, DatasetView) and len(view) == 3
    np.testing.assert_array_equal(view.labels, ds.labels[[4, 0, 2]])
    assert view.paths == [ds.paths[4], ds.paths[0], ds.paths[2]]
    assert view.class_names == ds.class_names
    inner = view.subset([2, 0])
    np.testing.assert_array_equal(inner.source_indices, [2, 4])
    np.testing.assert_array_equal(inner.indices, [2, 0])
    assert np.array_equal(np.asarray(inner.load_image(1)), np.asarray(ds.load_image(4)))
    _, y, idx = inner[1]
    assert idx == 1 and y.tolist() == ds.labels[4].tolist()
    with pytest.raises(ValueError, match="index 7 is out of range"):
        ds.subset([0, 7])
    with pytest.raises(IndexError):
        view[3]


def test_cache_keeps_pixels_after_files_are_gone(folder: Path) -> None:
    ds = FolderDataset(folder, cache="off")
    before = [np.asarray(ds.load_image(i)) for i in range(len(ds))]
    cached = FolderDataset(folder, cache=True)
    assert cached.cached
    for p in cached.paths:
        os.remove(p)
    after = [np.asarray(cached.load_image(i)) for i in range(len(cached))]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="does not exist"):
        ds.load_image(0)


def test_views_of_a_cached_view_use_its_cache(folder: Path) -> None:
    ds = FolderDataset(folder, cache=False)
    view = ds.subset([3, 1]).cache(progress=False)
    expected = [np.asarray(ds.load_image(i)) for i in (3, 1)]
    for p in ds.paths:
        os.remove(p)
    derived = view.with_transform(np.asarray).subset([1, 0])
    np.testing.assert_array_equal(derived[0][0], expected[1])
    np.testing.assert_array_equal(derived[1][0], expected[0])
    np.testing.assert_array_equal(derived.source_indices, [1, 3])


# --- list files -------------------------------------------------------------------------


@pytest.fixture
def list_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _write(root / "a" / "x.png", (10, 20, 30))
    _write(root / "b" / "y.png", (40, 50, 60))
    _write(root / "z.jpg", (70, 80, 90))
    _write(tmp_path / "outside.png", (1, 1, 1))
    return root


def test_list_file_parses_multi_hot_labels(list_root: Path) -> None:
    lst = list_root / "train.txt"
    lst.write_text("a/x.png 1 0 1\n\nb/y.png 0 1 0\nz.jpg 1 1 1\n")
    ds = ListFileDataset(lst)
    assert len(ds) == 3 and ds.class_names == ["class_0", "class_1", "class_2"]
    np.testing.assert_array_equal(ds.labels, [[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert np.asarray(ds.load_image(1))[0, 0].tolist() == [40, 50, 60]
    # An explicit root: the same list read from elsewhere.
    other = list_root.parent / "lists" / "t.txt"
    other.parent.mkdir()
    other.write_text(lst.read_text())
    ds2 = ListFileDataset(other, root=list_root, class_names=["r", "g", "b"])
    assert ds2.paths == ds.paths and ds2.class_names == ["r", "g", "b"]
    with pytest.raises(ValueError, match="2 class names"):
        ListFileDataset(lst, class_names=["r", "g"])


BAD_LINES = [
    ("b/y.png", "has no labels"),
    ("b/y.png 0 2 0", "label '2'"),
    ("b/y.png 0 x 0", "label 'x'"),
    ("b/y.png 0 1", "has 2 labels: expected 3"),
    ("b/missing.png 0 1 0", "does not exist"),
    ("../outside.png 0 1 0", "outside the root"),
    ("a/../../outside.png 0 1 0", "outside the root"),
    ("{abs} 0 1 0", "absolute path"),
    ("{link} 0 1 0", "outside the root"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_list_file_rejects_bad_line_naming_file_and_line(
    list_root: Path, bad: str, message: str
) -> None:
    link = list_root / "link.png"
    link.symlink_to(list_root.parent / "outside.png")
    bad = bad.format(abs=list_root / "a" / "x.png", link="link.png")
    lst = list_root / "list.txt"
    lst.write_text(f"a/x.png 1 0 1\n\n{bad}\nz.jpg 1 1 1\n")
    with pytest.raises(ValueError, match=message) as info:
        ListFileDataset(lst)
    assert f"list file {lst} line 3" in str(info.value)


def test_list_file_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.txt does not exist"):
        ListFileDataset(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="has no entries"):
        ListFileDataset(tmp_path / "empty.txt")


# --- digits and load_dataset ------------------------------------------------------------


def test_digits_are_sklearn_digits_upsampled() -> None:
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = DigitsDataset(img_size=32, interpolation="nearest")
    assert len(ds) == 1797 and ds.class_names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(ds.labels.argmax(1), ref.target)
    assert (ds.labels.sum(1) == 1).all()
    # Oracle: nearest upsampling by 4 is a Kronecker product with a 4x4 block of ones.
    for i in (0, 5, 1796):
        gray = np.rint(ref.images[i] * 255 / 16).astype(np.uint8)
        expected = np.kron(gray, np.ones((4, 4), dtype=np.uint8))
        img = ds.load_image(i)
        assert img.mode == "RGB" and img.size == (32, 32)
        arr = np.asarray(img)
        for ch in range(3):
            np.testing.assert_array_equal(arr[..., ch], expected)
    smooth = load_dataset("digits")
    assert smooth.load_image(0).size == (32, 32) and len(smooth) == 1797
    assert DigitsDataset(img_size=16).load_image(3).size == (16, 16)


def test_load_dataset_dispatch_and_errors(folder: Path, list_root: Path, tmp_path: Path) -> None:
    assert isinstance(load_dataset(str(folder)), FolderDataset)
    lst = list_root / "l.txt"
    lst.write_text("a/x.png 1 0\nz.jpg 0 1\n")
    ds = load_dataset(lst)
    assert isinstance(ds, ListFileDataset) and ds.paths[0] == str(list_root / "a" / "x.png")
    elsewhere = tmp_path / "l2.txt"
    elsewhere.write_text(lst.read_text())
    assert load_dataset(elsewhere, root=list_root).paths == ds.paths
    with pytest.raises(ValueError, match="missing_dir does not exist"):
        load_dataset(tmp_path / "missing_dir")
    with pytest.raises(ValueError, match="no_cifar.*does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'no_cifar'}")
    with pytest.raises(ValueError, match="is empty"):
        load_dataset("")


def test_split_folders_need_matching_classes(tmp_path: Path) -> None:
    _write(tmp_path / "train" / "a" / "1.png", (1, 1, 1))
    _write(tmp_path / "train" / "b" / "1.png", (2, 2, 2))
    _write(tmp_path / "test" / "a" / "1.png", (3, 3, 3))
    with pytest.raises(ValueError, match="expected the same classes"):
        SplitFolderDataset(tmp_path)
    _write(tmp_path / "test" / "b" / "1.png", (4, 4, 4))
    _write(tmp_path / "test" / "b" / "2.png", (5, 5, 5))
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert isinstance(ds, SplitFolderDataset) and len(ds) == 5
    np.testing.assert_array_equal(ds.groups["train"], [0, 1])
    np.testing.assert_array_equal(ds.groups["test"], [2, 3, 4])
    assert all("/test/" in ds.paths[i] for i in ds.groups["test"])


def test_cifar10_preset_on_real_folder(cifar10_dir: Path) -> None:
    ds = load_dataset(f"cifar10:{cifar10_dir}")
    assert ds.class_names == CIFAR10_CLASSES
    assert len(ds) == 60_000
    assert len(ds.groups["train"]) == 50_000 and len(ds.groups["test"]) == 10_000
    np.testing.assert_array_equal(ds.labels[ds.groups["train"]].sum(0), [5000] * 10)
    np.testing.assert_array_equal(ds.labels[ds.groups["test"]].sum(0), [1000] * 10)
    i = int(ds.groups["test"][-1])
    assert Path(ds.paths[i]).parent.name == "truck" and ds.labels[i, 9] == 1
    assert ds.load_image(i).size == (32, 32)
