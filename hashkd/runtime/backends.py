"""Inference backends: eager PyTorch (safetensors), TorchScript and ONNX Runtime.

Each backend maps a normalised NCHW float32 array to the K real-valued logits (n x K,
float32). Exported graphs are listed in the artifact's ``config.json`` under ``exports``
(written by :mod:`hashkd.export`), e.g. ``{"onnx": {"file": "model.onnx", ...}}``.

Threads: ``threads`` sets ``torch.set_num_threads`` for the PyTorch backends (a process-wide
setting) and ``SessionOptions.intra_op_num_threads`` for ONNX Runtime (per session);
``None`` keeps the library defaults.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: Exported file names, by format.
EXPORT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
#: The int8 (quantized) ONNX graph, listed under ``exports["onnx"]["int8"]``.
INT8_FILE = "model.int8.onnx"
BACKENDS = ("torch", "torchscript", "onnx")
#: ``precision`` of :meth:`hashkd.runtime.Encoder.from_artifact`.
PRECISIONS = ("auto", "fp32", "int8")


class BackendError(ValueError):
    """A backend cannot be used for an artifact (no export, missing library, stale export)."""


class Backend(Protocol):
    name: str

    def run(self, x: np.ndarray) -> np.ndarray:
        """Normalised NCHW float32 images -> float32 logits (n x K)."""
        ...


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def export_entry(raw: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    """The ``exports[fmt]`` entry of a raw config as a dict (a bare file name is accepted)."""
    entry = (raw.get("exports") or {}).get(fmt)
    if entry is None:
        return None
    if isinstance(entry, str):
        return {"file": entry}
    if isinstance(entry, dict) and isinstance(entry.get("file"), str):
        return entry
    raise BackendError(
        f"config.json exports[{fmt!r}] is {entry!r}: expected a file name or a dict with 'file'"
    )


def export_path(model_dir: str | os.PathLike[str], raw: dict[str, Any], fmt: str) -> Path | None:
    """Path of the exported ``fmt`` file of an artifact, or None when there is none."""
    entry = export_entry(raw, fmt)
    if entry is None:
        return None
    return _listed_file(model_dir, entry["file"], f"exports[{fmt!r}]")


def int8_entry(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The ``exports["onnx"]["int8"]`` entry (the quantized graph), or None when there is none."""
    entry = (export_entry(raw, "onnx") or {}).get("int8")
    if entry is None:
        return None
    if isinstance(entry, dict) and isinstance(entry.get("file"), str):
        return entry
    raise BackendError(
        f"config.json exports['onnx']['int8'] is {entry!r}: expected a dict with 'file'"
    )


def int8_path(model_dir: str | os.PathLike[str], raw: dict[str, Any]) -> Path | None:
    """Path of the int8 ONNX graph of an artifact, or None when there is none."""
    entry = int8_entry(raw)
    if entry is None:
        return None
    return _listed_file(model_dir, entry["file"], "exports['onnx']['int8']")


def _listed_file(model_dir: str | os.PathLike[str], name: str, where: str) -> Path | None:
    if Path(name).name != name:  # never follow a path out of the artifact directory
        raise BackendError(f"config.json {where} file {name!r} is not a plain file name")
    path = Path(model_dir) / name
    return path if path.is_file() else None


def export_is_current(model_dir: str | os.PathLike[str], raw: dict[str, Any], fmt: str) -> bool:
    """True when the export was made from the artifact's current ``model.safetensors``."""
    entry = export_entry(raw, fmt) or {}
    want = entry.get("weights_sha256")
    weights = Path(model_dir) / "model.safetensors"
    if not want or not weights.is_file():
        return True  # nothing recorded to compare with: trust the listing
    return file_sha256(weights) == want


def _set_torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


class TorchBackend:
    """Eager PyTorch from ``model.safetensors``; a foldable two-linear head is folded."""

    name = "torch"

    def __init__(self, model_dir: str | os.PathLike[str], threads: int | None = None):
        import torch

        from hashkd.models import load_artifact
        from hashkd.runtime.fold import fold_linear_head

        _set_torch_threads(threads)
        self._torch = torch
        model = load_artifact(model_dir)
        model.head = fold_linear_head(model.head)
        self.model = model.eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(x)).float().numpy()


class TorchScriptBackend:
    """A frozen TorchScript graph (``torch.jit.load``, CPU)."""

    name = "torchscript"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        import torch

        _set_torch_threads(threads)
        self._torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.module(self._torch.from_numpy(x)).float().numpy()


class OnnxBackend:
    """An ONNX graph run by ONNX Runtime's CPU execution provider."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "backend 'onnx' needs onnxruntime, which is not installed: pip install 'hashkd[onnx]'"
            ) from None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def open_backend(fmt: str, path: str | os.PathLike[str], threads: int | None = None) -> Backend:
    """Open an exported file (``fmt`` 'onnx' or 'torchscript') or, for 'torch', an artifact dir."""
    if fmt == "torch":
        return TorchBackend(path, threads)
    if fmt == "torchscript":
        return TorchScriptBackend(path, threads)
    if fmt == "onnx":
        return OnnxBackend(path, threads)
    raise BackendError(f"backend {fmt!r} is not known: expected one of {', '.join(BACKENDS)}")
