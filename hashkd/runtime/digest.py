"""The digest that identifies a model's weights, read from an artifact without PyTorch.

:func:`artifact_digest` is SHA-256 over the tensors of ``model.safetensors`` (name, torch
dtype name, shape, raw bytes, in name order), read as NumPy arrays. It equals
:func:`hashkd.encoding.model_digest` of the built model, which a code set's ``meta.json``
records as ``model_digest``; the service compares the two to refuse codes of another model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from hashkd.runtime.config import WEIGHTS_NAME

#: NumPy dtype name -> the name ``str(torch dtype)`` gives, for :func:`artifact_digest`
TORCH_DTYPE_NAMES = {
    name: f"torch.{name}"
    for name in (
        "float64",
        "float32",
        "float16",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
    )
}


def tensor_digest(items: Iterable[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    """SHA-256 over ``(name, torch dtype name, shape, raw bytes)`` items, in name order."""
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(items, key=lambda item: item[0]):
        h.update(f"{name}|{dtype}|{shape}|".encode())
        h.update(data)
    return h.hexdigest()


def artifact_digest(model_dir: str | os.PathLike[str]) -> str:
    """:func:`hashkd.encoding.model_digest` of an artifact's model, from ``model.safetensors``.

    The tensors are read as NumPy arrays (no model is built, torch is not imported); a file
    with a dtype NumPy lacks (bfloat16) falls back to loading the model. Needs the
    ``safetensors`` package (ImportError without it).
    """
    from safetensors import safe_open

    path = Path(model_dir) / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="numpy") as f:
            items = []
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                array = np.asarray(f.get_tensor(name))  # tobytes() is C order; 0-d stays 0-d
                dtype = TORCH_DTYPE_NAMES[array.dtype.name]
                items.append((name, dtype, tuple(array.shape), array.tobytes()))
    except (KeyError, TypeError, ValueError):  # a dtype without a NumPy twin
        from hashkd.encoding import model_digest
        from hashkd.models import load_artifact

        return model_digest(load_artifact(model_dir))
    return tensor_digest(items)
