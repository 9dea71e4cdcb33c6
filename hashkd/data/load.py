"""``load_dataset(spec)``: one door to every image source hashkd reads."""

from __future__ import annotations

import os
from pathlib import Path

from hashkd.data.cache import DataOptions, resolve_options
from hashkd.data.datasets import (
    DigitsDataset,
    FolderDataset,
    ImageDataset,
    ListFileDataset,
    SplitFolderDataset,
)

CIFAR10_ENV = "HASHKD_CIFAR10"
CIFAR10_DEFAULT = Path("..") / "shared" / "data" / "cifar10"
_REPO = Path(__file__).resolve().parents[2]

SPEC_HELP = (
    "expected 'digits', 'cifar10[:PATH]', an image folder (one sub-folder per class) or a list file"
)


def cifar10_root(path: str | os.PathLike[str] | None = None) -> Path:
    """Where the CIFAR-10 JPEG tree (``train/<class>/``, ``test/<class>/``) lives.

    ``path`` if given; else ``$HASHKD_CIFAR10``; else ``../shared/data/cifar10`` relative to
    the working directory, then to the hashkd source checkout.
    """
    if path:
        return Path(path)
    if os.environ.get(CIFAR10_ENV):
        return Path(os.environ[CIFAR10_ENV])
    for candidate in (CIFAR10_DEFAULT, _REPO / CIFAR10_DEFAULT):
        if (candidate / "train").is_dir():
            return candidate.resolve()
    return CIFAR10_DEFAULT


def load_dataset(
    spec: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    cache: bool | str | None = None,
    options: DataOptions | None = None,
) -> ImageDataset:
    """Open an image source by name or path.

    - ``digits``: scikit-learn's 1,797 8x8 digits upsampled to 32x32 RGB (in memory);
    - ``cifar10`` or ``cifar10:PATH``: the CIFAR-10 JPEG tree as one dataset of 60,000 images
      with ``groups["train"]`` (50,000) and ``groups["test"]`` (10,000) (see :func:`cifar10_root`);
    - a folder: an ImageFolder tree (one sub-folder per class, single-label);
    - a file: a DeepHash list file (``path 0 1 0 ...``) with paths relative to ``root``
      (default: the list file's folder).
    Files are decoded once when the dataset is built (:mod:`hashkd.data.cache`): unreadable
    ones are skipped with a warning (``strict``: the first raises) and the pixels are kept
    by ``cache`` mode (``None``: the current :class:`~hashkd.data.cache.DataOptions`, set by
    :func:`~hashkd.data.cache.use_data_options`; ``True``: memory; ``False``: off; or a
    mode name). ``options`` replaces the current options.
    """
    opts = resolve_options(cache, options)
    text = os.fspath(spec)
    if not text.strip():
        raise ValueError(f"dataset spec {text!r} is empty: {SPEC_HELP}")
    if text == "digits":
        return DigitsDataset()
    if text == "cifar10" or text.startswith("cifar10:"):
        where = cifar10_root(text.partition(":")[2] or None)
        if not where.is_dir():
            raise ValueError(
                f"CIFAR-10 folder {where} does not exist: expected train/<class>/ and test/<class>/ JPEG folders "
                f"there (pass cifar10:PATH or set ${CIFAR10_ENV})"
            )
        return SplitFolderDataset(where, parts=("train", "test"), options=opts)
    path = Path(text)
    if path.is_dir():
        if root is not None:
            raise ValueError(
                f"root={os.fspath(root)!r} only applies to list files, but {path} is a folder: expected no root"
            )
        return FolderDataset(path, options=opts)
    if path.is_file():
        return ListFileDataset(path, root=root, options=opts)
    raise ValueError(f"dataset path {path} does not exist: {SPEC_HELP}")
