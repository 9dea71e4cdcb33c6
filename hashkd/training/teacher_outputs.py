"""A frozen teacher's outputs over fixed inputs, computed once and kept on disk.

Distillation runs that share a teacher, a pool and a seed -- the rows of a table, a baseline
beside BRCD, a control run, a run resumed after an interruption -- code exactly the same
images: the teacher's logits of the pool (BRCD's clusters, the losses' fit) and of the pool's
seeded views (the streamed view bank). On CIFAR-10's 49,000-image pool with 4 views that is
about ten CPU minutes of a ViT-Tiny forward pass per run. ``hashkd distill --teacher-cache
DIR`` keeps those logits in ``DIR`` and later runs read them instead.

A file is found by a key that hashes *what* was coded, never *where* it lives:

* the teacher's :func:`hashkd.encoding.model_digest` (its tensors),
* the pixels of every image in order (:func:`images_digest`: the images as the data layer
  hands them over, so a changed file, another working resolution or another order is
  another key),
* the transform's ``repr`` (torchvision prints every parameter) and the torch and torchvision
  versions that run it,
* for views: the number of views per image, the seed and the view-seeding scheme.

A hit therefore returns the logits the run would have computed, bit for bit (float32 as
computed); anything else is a miss. Files are safetensors (never a pickle), written to a
temporary name and renamed, so a crash leaves no half file; an unreadable file is a miss and
is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["TeacherOutputs", "images_digest", "outputs_key"]

#: Bumped when what a key covers changes (e.g. how views are seeded).
KEY_VERSION = 1


def images_digest(source: Any, indices: np.ndarray) -> str:
    """sha256 of the pixels (shape and bytes) of ``source``'s images ``indices``, in order."""
    h = hashlib.sha256()
    for i in np.asarray(indices, dtype=np.int64):
        pixels = np.asarray(source.load_image(int(i)), dtype=np.uint8)
        h.update(repr(pixels.shape).encode())
        h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def outputs_key(
    kind: str, teacher_digest: str, images: str, transform: Callable, **extra: Any
) -> str:
    """The cache key of ``kind`` outputs (e.g. ``"pool"``, ``"views"``) of one teacher."""
    parts = {
        "version": KEY_VERSION,
        "kind": kind,
        "teacher": teacher_digest,
        "images": images,
        "transform": repr(transform),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        **extra,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class TeacherOutputs:
    """Logit tensors kept in ``folder`` by key; ``folder=None`` keeps nothing (every lookup a miss)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / f"{key}.safetensors"

    def load(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            return load_file(str(path))["logits"]
        except (OSError, KeyError, SafetensorError):
            return None  # unreadable or truncated by hand: computed and written again

    def save(self, key: str, logits: torch.Tensor, description: dict[str, Any]) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(
            {"logits": logits.detach().float().contiguous().cpu()},
            str(tmp),
            metadata={"description": json.dumps(description, sort_keys=True)},
        )
        os.replace(tmp, path)

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], torch.Tensor],
        description: dict[str, Any],
        write: bool = True,
    ) -> tuple[torch.Tensor, bool]:
        """``(logits, hit)``: the stored logits, or ``compute()`` stored (when ``write``) and returned."""
        stored = self.load(key)
        if stored is not None:
            return stored, True
        logits = compute()
        if write:
            self.save(key, logits, description)
        return logits, False
