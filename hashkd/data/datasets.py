"""Image datasets with multi-hot labels: image folders, DeepHash list files, in-memory arrays.

Every dataset is a :class:`torch.utils.data.Dataset` sharing one base, :class:`ImageDataset`:

- ``labels``: ``n x C`` uint8 multi-hot numpy array (one-hot for single-label data);
- ``class_names``: ``C`` names; ``paths``: file paths, or ``None`` for in-memory data;
- ``groups``: optional named index sets (e.g. ``{"train": ..., "test": ...}`` for CIFAR-10);
- ``load_image(i)`` -> PIL RGB image; ``dataset[i]`` -> ``(image, label_vector, i)`` where the
  image goes through ``transform`` when one is set and ``label_vector`` is a uint8 tensor;
- ``subset(indices)`` / ``with_transform(t)`` -> :class:`DatasetView`, a light view that keeps
  ``labels``, ``class_names`` and ``paths`` of the selected items;
- file datasets decode every file once when built: unreadable files are skipped (or raise
  with ``strict``) and the pixels are kept at a working resolution, in memory or on disk
  (:mod:`hashkd.data.cache`); ``cache()`` decodes the images of any dataset or view once into
  uint8 arrays held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from hashkd.data.cache import DataOptions, decode_once, logger, resolve_options
from hashkd.runtime.images import IMG_EXTENSIONS, is_image_name, load_image

Transform = Callable[[Image.Image], Any]


class ImageDataset(Dataset):
    """Base class: a sequence of RGB images with multi-hot labels (see module docstring)."""

    kind = "images"

    def __init__(
        self,
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Transform | None = None,
        groups: dict[str, np.ndarray] | None = None,
    ) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.uint8)
        if labels.ndim != 2 or labels.shape[1] != len(class_names):
            raise ValueError(
                f"labels of shape {labels.shape} do not match {len(class_names)} class names: "
                "expected an n x C multi-hot array"
            )
        self.labels = labels
        self.class_names = [str(c) for c in class_names]
        self.transform = transform
        self.groups = groups
        self._cache: np.ndarray | list[np.ndarray] | None = None

    # --- to be provided by subclasses -------------------------------------------------
    def _decode(self, i: int) -> Image.Image:
        raise NotImplementedError

    @property
    def paths(self) -> list[str] | None:
        """File path of every image, or ``None`` for in-memory datasets."""
        return None

    # --- shared behaviour ------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def source_indices(self) -> np.ndarray:
        """Index of every item in the root dataset (identity for a root dataset)."""
        return np.arange(len(self), dtype=np.int64)

    def load_image(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL RGB image (from the in-memory cache when :meth:`cache` ran)."""
        i = self._check_index(i)
        if self._cache is not None:
            return Image.fromarray(self._cache[i])
        return self._decode(i)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, int]:
        i = self._check_index(i)
        image = self.load_image(i)
        x = self.transform(image) if self.transform is not None else image
        return x, torch.from_numpy(self.labels[i].copy()), i

    def _check_index(self, i: int) -> int:
        i = int(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} is out of range for a dataset of {n} images")
        return i

    def subset(
        self, indices: Sequence[int] | np.ndarray, transform: Transform | None | str = "keep"
    ) -> DatasetView:
        """A view of the items ``indices`` (positions in this dataset), in that order."""
        return DatasetView(
            self, indices, transform=self.transform if transform == "keep" else transform
        )

    def with_transform(self, transform: Transform | None) -> DatasetView:
        """A view of every item with ``transform`` applied (the dataset itself is not changed)."""
        return DatasetView(self, np.arange(len(self)), transform=transform)

    def cache(self, progress: bool = True) -> ImageDataset:
        """Decode every image once and keep the uint8 pixels in memory; returns ``self``.

        Meant for small images (CIFAR-10's 50,000 32x32 images take 150 MB). Images of one
        size are stacked into a single array so that forked DataLoader workers share it.
        """
        if self._cache is not None:
            return self
        arrays = [
            np.asarray(self.load_image(i), dtype=np.uint8)
            for i in tqdm(
                range(len(self)), desc="caching images", disable=not progress, leave=False
            )
        ]
        shapes = {a.shape for a in arrays}
        self._cache = np.stack(arrays) if len(shapes) == 1 and arrays else arrays
        return self

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable summary (kind, size, classes) for ``meta.json`` files."""
        return {"kind": self.kind, "num_images": len(self), "class_names": list(self.class_names)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={self.num_classes})"


class DatasetView(ImageDataset):
    """Items ``indices`` of a parent dataset (a ``Subset`` that keeps labels and paths).

    ``dataset[i]`` returns ``(image, label, i)`` with ``i`` the position *in the view*;
    ``view.indices[i]`` is the parent's index and ``view.source_indices[i]`` the root's.
    Images are read through the parent, so views of a cached view use its cache.
    """

    kind = "view"

    def __init__(
        self,
        parent: ImageDataset,
        indices: Sequence[int] | np.ndarray,
        transform: Transform | None = None,
    ) -> None:
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"subset indices of shape {idx.shape} and dtype {idx.dtype} are not valid: expected a 1-D integer array"
            )
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(parent)):
            bad = int(idx[(idx < 0) | (idx >= len(parent))][0])
            raise ValueError(
                f"subset index {bad} is out of range: expected 0 <= index < {len(parent)}"
            )
        self.indices = idx
        self.parent = parent
        if isinstance(parent, DatasetView):
            self.root: ImageDataset = parent.root
            self._root_idx = parent._root_idx[idx]
        else:
            self.root = parent
            self._root_idx = idx
        super().__init__(parent.labels[idx], parent.class_names, transform=transform)

    @property
    def source_indices(self) -> np.ndarray:
        return self._root_idx

    @property
    def paths(self) -> list[str] | None:
        root_paths = self.root.paths
        return None if root_paths is None else [root_paths[j] for j in self._root_idx]

    def _decode(self, i: int) -> Image.Image:
        # Through the parent, not the root: a cached parent view answers from its cache.
        return self.parent.load_image(int(self.indices[i]))

    def describe(self) -> dict[str, Any]:
        return {**self.root.describe(), "view_of": len(self.root), "num_images": len(self)}


class ArrayDataset(ImageDataset):
    """Images held in memory as a uint8 array ``n x H x W x 3`` (or ``n x H x W`` gray)."""

    kind = "array"

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Transform | None = None,
    ) -> None:
        images = np.asarray(images)
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[3] != 3)
        ):
            raise ValueError(
                f"images of shape {images.shape} and dtype {images.dtype} are not valid: "
                "expected uint8 n x H x W x 3 (RGB) or n x H x W (gray)"
            )
        if images.ndim == 3:
            images = np.repeat(images[..., None], 3, axis=3)
        if len(images) != len(labels):
            raise ValueError(
                f"{len(images)} images but {len(labels)} label rows: expected one row per image"
            )
        super().__init__(labels, class_names, transform=transform)
        self._cache = np.ascontiguousarray(images)

    def _decode(self, i: int) -> Image.Image:  # pragma: no cover - the cache always answers
        return Image.fromarray(self._cache[i])


class FileDataset(ImageDataset):
    """Images read from files, decoded once when the dataset is built (:mod:`hashkd.data.cache`).

    The readability pass runs over every file: unreadable ones are skipped with a warning
    (``skipped`` lists ``(path, reason)``; ``groups`` are re-indexed to the kept files), or
    with ``strict`` the first raises. The kept pixels (``cache`` mode ``memory``/``disk``) are
    at the working resolution; with ``off`` images are decoded at full size on every access.
    ``cache``: ``None`` = the current :class:`~hashkd.data.cache.DataOptions`, ``True`` =
    ``memory``, ``False`` = ``off``, or a mode name; ``options`` replaces the current options.
    """

    kind = "files"

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        labels: np.ndarray,
        class_names: Sequence[str],
        transform: Transform | None = None,
        groups: dict[str, np.ndarray] | None = None,
        cache: bool | str | None = None,
        options: DataOptions | None = None,
        source: str | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(
                f"{len(paths)} paths but {len(labels)} label rows: expected one row per image"
            )
        all_paths = [str(p) for p in paths]
        self.options = resolve_options(cache, options)
        decoded = decode_once(all_paths, self.options, source or f"{len(all_paths)} files")
        keep = decoded.readable
        self.skipped: list[tuple[str, str]] = decoded.skipped
        self.cache_mode = decoded.mode
        if groups is not None and not keep.all():
            position = np.cumsum(keep) - 1
            groups = {k: position[g[keep[g]]].astype(np.int64) for k, g in groups.items()}
        super().__init__(np.asarray(labels)[keep], class_names, transform=transform, groups=groups)
        self._paths = [p for p, k in zip(all_paths, keep, strict=True) if k]
        self._cache = decoded.pixels

    @property
    def paths(self) -> list[str]:
        return self._paths

    def _decode(self, i: int) -> Image.Image:
        # The serving runtime's decoder: the same RGB conversion (EXIF orientation, alpha on
        # white, palette, 16-bit) at training time as at query time, and the same clear errors.
        return load_image(self._paths[i])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "unreadable_skipped": len(self.skipped)}


_is_image = is_image_name


def _scan_folder(root: Path, strict: bool = False) -> tuple[list[str], list[str], list[int]]:
    """(class names, image paths, class ids) of an ImageFolder tree (sorted, recursive).

    A class folder without image files is skipped with a warning, or with ``strict`` raises.
    """
    if not root.exists():
        raise ValueError(
            f"image folder {root} does not exist: expected a folder with one sub-folder per class"
        )
    if not root.is_dir():
        raise ValueError(
            f"image folder {root} is not a directory: expected a folder with one sub-folder per class"
        )
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(
            f"image folder {root} has no class sub-folders: expected one sub-folder of images per class"
        )
    classes: list[str] = []
    paths: list[str] = []
    targets: list[int] = []
    for name in names:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
        if not found:
            message = (
                f"class folder {root / name} holds no images: "
                f"expected files ending in {', '.join(IMG_EXTENSIONS)}"
            )
            if strict:
                raise ValueError(message)
            logger.warning("hashkd: warning: skipped %s", message)
            continue
        paths.extend(found)
        targets.extend([len(classes)] * len(found))
        classes.append(name)
    if not classes:
        raise ValueError(
            f"image folder {root} has no images in any of its {len(names)} class folders: "
            f"expected files ending in {', '.join(IMG_EXTENSIONS)}"
        )
    return classes, paths, targets


def _one_hot(targets: Sequence[int], num_classes: int) -> np.ndarray:
    labels = np.zeros((len(targets), num_classes), dtype=np.uint8)
    labels[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)] = 1
    return labels


class FolderDataset(FileDataset):
    """An ImageFolder tree: ``root/<class>/**/<image>``; single-label, one-hot, sorted class names.

    Hidden files and folders are ignored; image extensions are :data:`IMG_EXTENSIONS`
    (case-insensitive). A missing folder, or one without any image, is a ``ValueError``
    naming it. A class folder without image files, or whose files are all unreadable, is
    skipped with a warning (with ``strict``, the empty folder or first unreadable file raises).
    """

    kind = "folder"

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        cache: bool | str | None = None,
        options: DataOptions | None = None,
    ) -> None:
        self.root_dir = Path(root)
        opts = resolve_options(cache, options)
        classes, paths, targets = _scan_folder(self.root_dir, strict=opts.strict)
        super().__init__(
            paths,
            _one_hot(targets, len(classes)),
            classes,
            transform=transform,
            options=opts,
            source=f"image folder {self.root_dir}",
        )
        present = self.labels.any(axis=0)
        if not present.all():
            for name in np.asarray(self.class_names)[~present]:
                logger.warning(
                    "hashkd: warning: skipped class folder %s: none of its images could be read",
                    self.root_dir / name,
                )
            self.labels = np.ascontiguousarray(self.labels[:, present])
            self.class_names = [
                c for c, keep in zip(self.class_names, present, strict=True) if keep
            ]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "root": str(self.root_dir)}


class SplitFolderDataset(FileDataset):
    """One dataset over several ImageFolder trees ``root/<part>/<class>/...``, with ``groups[part]``.

    The parts must hold the same class folders (CIFAR-10's ``train`` and ``test``);
    ``groups[part]`` holds the indices of that part's images.
    """

    kind = "split-folders"

    def __init__(
        self,
        root: str | os.PathLike[str],
        parts: Sequence[str] = ("train", "test"),
        transform: Transform | None = None,
        cache: bool | str | None = None,
        options: DataOptions | None = None,
    ) -> None:
        self.root_dir = Path(root)
        opts = resolve_options(cache, options)
        if not self.root_dir.is_dir():
            raise ValueError(
                f"dataset folder {self.root_dir} does not exist: expected a folder with sub-folders {', '.join(parts)}"
            )
        all_paths: list[str] = []
        all_targets: list[int] = []
        groups: dict[str, np.ndarray] = {}
        classes: list[str] = []
        for part in parts:
            part_classes, paths, targets = _scan_folder(self.root_dir / part, strict=opts.strict)
            if not classes:
                classes = part_classes
            elif part_classes != classes:
                raise ValueError(
                    f"folder {self.root_dir / part} has classes {part_classes}: expected the same classes as "
                    f"{self.root_dir / parts[0]} ({classes})"
                )
            start = len(all_paths)
            groups[part] = np.arange(start, start + len(paths), dtype=np.int64)
            all_paths.extend(paths)
            all_targets.extend(targets)
        labels = _one_hot(all_targets, len(classes))
        super().__init__(
            all_paths,
            labels,
            classes,
            transform=transform,
            groups=groups,
            options=opts,
            source=f"dataset folder {self.root_dir}",
        )

    def describe(self) -> dict[str, Any]:
        sizes = {k: len(v) for k, v in (self.groups or {}).items()}
        return {**super().describe(), "root": str(self.root_dir), "groups": sizes}


class ListFileDataset(FileDataset):
    """A DeepHash-style list file: one ``relative/path.jpg 0 1 0 ...`` line per image.

    Paths are relative to ``root`` (default: the list file's folder) and may not contain
    spaces. Every line must carry the same number of 0/1 labels as the first one. A
    malformed line, a missing image, or a path that leaves ``root`` (``../``, absolute
    paths, symlinks pointing outside) raises ``ValueError`` naming the file and line number.
    Blank lines are skipped. An image that exists but cannot be decoded is skipped with a
    warning (with ``strict`` it raises).
    """

    kind = "list"

    def __init__(
        self,
        list_file: str | os.PathLike[str],
        root: str | os.PathLike[str] | None = None,
        class_names: Sequence[str] | None = None,
        transform: Transform | None = None,
        cache: bool | str | None = None,
        options: DataOptions | None = None,
    ) -> None:
        self.list_file = Path(list_file)
        if not self.list_file.is_file():
            raise ValueError(
                f"list file {self.list_file} does not exist: expected a text file of 'path 0 1 ...' lines"
            )
        self.root_dir = Path(root) if root is not None else self.list_file.parent
        if not self.root_dir.is_dir():
            raise ValueError(
                f"image root {self.root_dir} is not a directory: expected the folder the list's paths are relative to"
            )
        paths, labels = _parse_list_file(self.list_file, self.root_dir)
        if class_names is None:
            class_names = [f"class_{j}" for j in range(labels.shape[1])]
        elif len(class_names) != labels.shape[1]:
            raise ValueError(
                f"{len(class_names)} class names given but list file {self.list_file} has {labels.shape[1]} labels per line: "
                "expected one name per label column"
            )
        super().__init__(
            paths,
            labels,
            class_names,
            transform=transform,
            cache=cache,
            options=options,
            source=f"list file {self.list_file}",
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "list_file": str(self.list_file), "root": str(self.root_dir)}


def _parse_list_file(list_file: Path, root: Path) -> tuple[list[str], np.ndarray]:
    root_real = root.resolve()
    paths: list[str] = []
    rows: list[list[int]] = []
    num_labels: int | None = None
    with open(list_file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            tokens = line.split()
            if not tokens:
                continue
            where = f"list file {list_file} line {lineno}"
            rel, label_tokens = tokens[0], tokens[1:]
            if not label_tokens:
                raise ValueError(
                    f"{where} has no labels after {rel!r}: expected 'relative/path.jpg 0 1 0 ...'"
                )
            bad = [t for t in label_tokens if t not in ("0", "1")]
            if bad:
                raise ValueError(
                    f"{where} has label {bad[0]!r}: expected only 0 or 1 after the path"
                )
            if num_labels is None:
                num_labels = len(label_tokens)
            elif len(label_tokens) != num_labels:
                raise ValueError(
                    f"{where} has {len(label_tokens)} labels: expected {num_labels} like the first line"
                )
            if (
                os.path.isabs(rel)
                or rel.startswith(("/", "\\"))
                or (rel[:1].isalpha() and rel[1:2] == ":")
            ):
                raise ValueError(
                    f"{where} has absolute path {rel!r}: expected a path relative to {root}"
                )
            full = root / rel
            real = full.resolve()
            if not real.is_relative_to(root_real):
                raise ValueError(
                    f"{where} has path {rel!r} that leads outside the root {root}: expected a path inside it"
                )
            if not real.is_file():
                raise ValueError(f"{where} names image {rel!r} that does not exist under {root}")
            paths.append(str(full))
            rows.append([int(t) for t in label_tokens])
    if not rows:
        raise ValueError(
            f"list file {list_file} has no entries: expected 'relative/path.jpg 0 1 0 ...' lines"
        )
    return paths, np.asarray(rows, dtype=np.uint8)


class DigitsDataset(ArrayDataset):
    """scikit-learn's ``load_digits``: 1,797 real 8x8 handwritten digits (16 gray levels), 10 classes.

    Embedded in scikit-learn (no download). Gray levels 0..16 are scaled to 0..255 and the
    images upsampled to ``img_size`` (bilinear by default) and repeated to RGB. Source: the UCI
    "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak, 1998).
    """

    kind = "digits"

    def __init__(
        self,
        img_size: int = 32,
        interpolation: str = "bilinear",
        transform: Transform | None = None,
    ) -> None:
        from sklearn.datasets import load_digits

        modes = {
            "nearest": Image.Resampling.NEAREST,
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
        }
        if interpolation not in modes:
            raise ValueError(
                f"interpolation={interpolation!r} is not valid: expected one of {', '.join(modes)}"
            )
        if int(img_size) < 8:
            raise ValueError(f"img_size={img_size!r} is too small: expected at least 8 pixels")
        self.img_size = int(img_size)
        digits = load_digits()
        gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        up = np.stack(
            [
                np.asarray(
                    Image.fromarray(g).resize((self.img_size, self.img_size), modes[interpolation])
                )
                for g in gray
            ]
        )
        labels = _one_hot(digits.target, 10)
        super().__init__(up, labels, [str(d) for d in range(10)], transform=transform)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "img_size": self.img_size}
