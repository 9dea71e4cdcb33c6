"""hashkd.data.cache: decode once at a working resolution, in memory or on disk, keyed by file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hashkd.data.cache as cache_mod
from hashkd.data import DataOptions, FolderDataset, eval_transform, load_dataset, use_data_options
from hashkd.data.cache import resize_to_side, working_side, working_size


def _photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A smooth random RGB image (JPEG or PNG by suffix), like a photo rather than noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _photo(root / "a" / "wide.jpg", (300, 200), 0)
    _photo(root / "a" / "tall.png", (120, 250), 1)
    _photo(root / "b" / "small.jpg", (40, 30), 2)  # below the working side: kept as is
    _photo(root / "b" / "square.png", (90, 90), 3)
    return root


def _direct(path: str, side: int) -> np.ndarray:
    """Oracle: a plain PIL decode to RGB and the documented resize (bilinear, shorter side)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    size = working_size(rgb.width, rgb.height, side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def test_working_resolution_rule() -> None:
    assert working_side(32) == 37  # ceil(36.8)
    assert working_side(224) == 258  # ceil(257.6)
    assert working_side(20) == 23  # 1.15 * 20 = 23 exactly: no extra pixel
    assert working_size(300, 200, 74) == (111, 74)
    assert working_size(120, 250, 74) == (74, 154)
    assert working_size(40, 30, 74) == (40, 30)  # never upscaled


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_pixels_equal_decode_then_resize(photos: Path, tmp_path: Path, mode: str) -> None:
    opts = DataOptions(cache=mode, cache_dir=str(tmp_path / "c"), img_size=64, progress=False)
    ds = FolderDataset(photos, options=opts)
    assert ds.cache_mode == mode and ds.cached and len(ds) == 4
    side = working_side(64)
    for i, path in enumerate(ds.paths):
        got = np.asarray(ds.load_image(i))
        np.testing.assert_array_equal(got, _direct(path, side))
        assert min(got.shape[:2]) == min(side, *Image.open(path).size)


def test_eval_transform_of_cached_image_is_eval_of_resized_original(
    photos: Path, tmp_path: Path
) -> None:
    ds = FolderDataset(photos, options=DataOptions(cache="memory", img_size=32, progress=False))
    t = eval_transform(32)
    largest = 0.0
    for i, path in enumerate(ds.paths):
        from hashkd.runtime.images import load_image

        original = load_image(path)
        assert torch.equal(t(ds.load_image(i)), t(resize_to_side(original, working_side(32))))
        # The documented difference from resizing the full-size original in one step is small.
        largest = max(largest, float((t(ds.load_image(i)) - t(original)).abs().max()))
    assert largest < 0.25  # in normalised units (about 0.05 of the 0..1 range)


def test_disk_cache_is_reused_and_a_changed_file_is_decoded_again(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = DataOptions(cache="disk", cache_dir=str(tmp_path / "c"), img_size=64, progress=False)
    first = FolderDataset(photos, options=opts)
    folder = tmp_path / "c" / f"side-{working_side(64)}"
    index = json.loads((folder / "index.json").read_text())["entries"]
    assert sorted(index) == sorted(os.path.abspath(p) for p in first.paths)
    total = sum(int(np.prod(e["shape"])) for e in index.values())
    assert (folder / "pixels.bin").stat().st_size == total

    decoded: list[str] = []
    real = cache_mod.decode_pixels

    def counting(path: str, side: int | None) -> np.ndarray:
        decoded.append(path)
        return real(path, side)

    monkeypatch.setattr(cache_mod, "decode_pixels", counting)
    again = FolderDataset(photos, options=opts)
    assert decoded == []  # every file was a hit
    for i in range(len(first)):
        np.testing.assert_array_equal(
            np.asarray(again.load_image(i)), np.asarray(first.load_image(i))
        )
    # Rewrite one file with other pixels (new size and mtime): only it is decoded again.
    changed = photos / "b" / "square.png"
    _photo(changed, (90, 90), 99)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = FolderDataset(photos, options=opts)
    assert decoded == [str(changed)]
    i = third.paths.index(str(changed))
    np.testing.assert_array_equal(
        np.asarray(third.load_image(i)), _direct(str(changed), working_side(64))
    )


def test_auto_picks_memory_below_the_limit_and_disk_above(photos: Path, tmp_path: Path) -> None:
    base = DataOptions(cache_dir=str(tmp_path / "c"), img_size=64, progress=False)
    assert FolderDataset(photos, options=base).cache_mode == "memory"
    assert not (tmp_path / "c").exists()
    tight = DataOptions(cache_dir=str(tmp_path / "c"), img_size=64, memory_limit=100)
    assert FolderDataset(photos, options=tight).cache_mode == "disk"
    assert (tmp_path / "c" / f"side-{working_side(64)}" / "index.json").is_file()


def test_off_decodes_full_size_on_access(photos: Path) -> None:
    ds = FolderDataset(photos, cache="off")
    assert ds.cache_mode == "off" and not ds.cached
    i = [Path(p).name for p in ds.paths].index("wide.jpg")
    assert ds.load_image(i).size == (300, 200)


def test_options_from_context_reach_load_dataset(photos: Path, tmp_path: Path) -> None:
    with use_data_options(cache="disk", cache_dir=str(tmp_path / "ctx"), img_size=16) as report:
        ds = load_dataset(str(photos))
    assert ds.cache_mode == "disk" and report.summary() is None
    assert (tmp_path / "ctx" / f"side-{working_side(16)}").is_dir()
    assert min(ds.load_image(0).size) == working_side(16)
    with pytest.raises(ValueError, match="cache='fast' is not valid"):
        DataOptions(cache="fast")
