"""The unlabeled pool a student is distilled on (``hashkd distill --pool SPEC``).

Distillation needs no labels, so the student can learn from every image that is not held
out for measurement. ``SPEC`` is one of:

* ``all``: every image of ``--data``;
* a group of ``--data``, e.g. ``train`` for CIFAR-10 (its 50,000 training images);
* another image source in ``--data`` syntax -- ``digits``, ``cifar10[:PATH]``, a list file,
  or a folder of images (every image under it, recursively; class sub-folders are allowed
  but not needed) -- optionally followed by ``@GROUP``: ``cifar10@train``.

The validation images and the test queries of ``--data``'s protocol are always removed from
the pool, by identity: by index when the pool is drawn from ``--data`` itself, and by
resolved file path whenever both sides are files (so a second copy of the same folder, or a
symlink to it, is caught too). Near-duplicates with other paths are not detected.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashkd.data import IMG_EXTENSIONS, FileDataset, load_dataset
from hashkd.training.common import Split
from hashkd.training.data_setup import TrainingData

POOL_HELP = (
    "expected 'all', a group of --data (e.g. 'train'), or an image source ('digits', "
    "'cifar10[:PATH]', a folder of images, a list file) with an optional '@GROUP'"
)


@dataclass
class Pool:
    """The pool's images (``split.source`` indexed by ``split.indices``) and where they came from."""

    split: Split
    spec: str
    candidates: int
    excluded: int

    def __len__(self) -> int:
        return len(self.split)

    def describe(self) -> dict[str, Any]:
        """For ``run.json`` and the student's metadata."""
        describe = getattr(self.split.source, "describe", None)
        return {
            "spec": self.spec,
            "size": len(self.split),
            "candidates": self.candidates,
            "excluded_val_query": self.excluded,
            "source": describe() if describe else None,
        }


def image_folder(root: str | os.PathLike[str]) -> FileDataset:
    """Every image under ``root`` (recursive, sorted, hidden entries skipped), one dummy class."""
    root = Path(root)
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")
        )
    if not paths:
        raise ValueError(
            f"pool folder {root} holds no images: expected files ending in {', '.join(IMG_EXTENSIONS)}"
        )
    return FileDataset(paths, np.ones((len(paths), 1), dtype=np.uint8), ["unlabeled"])


def _group(dataset, group: str, spec: str) -> np.ndarray:
    groups = getattr(dataset, "groups", None) or {}
    if group not in groups:
        raise ValueError(
            f"--pool {spec!r} names group {group!r}, but the images have groups "
            f"{sorted(groups) or '(none)'}: {POOL_HELP}"
        )
    return np.asarray(groups[group], dtype=np.int64)


def _everything(dataset) -> np.ndarray:
    return np.arange(len(dataset), dtype=np.int64)


def _resolve(spec: str, data_spec: str, base) -> tuple[Any, np.ndarray]:
    """(dataset, candidate indices) named by ``spec`` (module docstring)."""
    text = spec.strip()
    if not text:
        raise ValueError(f"--pool {spec!r} is empty: {POOL_HELP}")
    base_groups = getattr(base, "groups", None) or {}
    if text == "all" or text == data_spec:
        return base, _everything(base)
    if text in base_groups:
        return base, _group(base, text, spec)
    source, group = text, None
    if not Path(text).exists() and "@" in text:
        source, group = text.rsplit("@", 1)
    if source == data_spec:
        dataset = base
    elif Path(source).is_dir():
        dataset = image_folder(source)
    elif source in ("digits", "cifar10") or source.startswith("cifar10:") or Path(source).is_file():
        dataset = load_dataset(source)
    else:
        raise ValueError(
            f"--pool {spec!r} is neither a group of --data nor an image source: {POOL_HELP}"
        )
    return dataset, (_group(dataset, group, spec) if group else _everything(dataset))


def _root_ids(split: Split) -> np.ndarray:
    """Indices in the root dataset of the images of a split drawn by :func:`prepare_data`."""
    return np.asarray(split.source.source_indices, dtype=np.int64)[split.indices]


def _real_paths(dataset, ids: np.ndarray) -> list[str] | None:
    paths = getattr(dataset, "paths", None)
    if paths is None:
        return None
    return [os.path.realpath(paths[int(i)]) for i in ids]


def select_pool(spec: str, data: TrainingData, data_spec: str) -> Pool:
    """The images of ``spec`` minus ``data``'s validation images and queries (module docstring)."""
    base = data.dataset
    if base is None:
        raise ValueError("select_pool needs the TrainingData of prepare_data (with its dataset)")
    dataset, candidates = _resolve(spec, data_spec, base)
    held_out = {"val": data.val, "query": data.query}
    keep = np.ones(len(candidates), dtype=bool)
    if dataset is base:
        held_ids = np.concatenate([_root_ids(s) for s in held_out.values()])
        keep &= ~np.isin(candidates, held_ids)
    held_paths: set[str] = set()
    for split in held_out.values():
        held_paths.update(_real_paths(base, _root_ids(split)) or [])
    pool_paths = _real_paths(dataset, candidates) if held_paths else None
    if pool_paths is not None:
        keep &= np.array([p not in held_paths for p in pool_paths], dtype=bool)
    indices = candidates[keep]
    if indices.size == 0:
        raise ValueError(
            f"--pool {spec!r} has no image left once the validation images and queries are removed: "
            "expected a pool with other images"
        )
    return Pool(
        split=Split(source=dataset, indices=indices),
        spec=spec,
        candidates=int(len(candidates)),
        excluded=int((~keep).sum()),
    )
