"""Int8 quantization of an exported ONNX graph with ONNX Runtime (``hashkd export --quantize int8``).

Two methods of :mod:`onnxruntime.quantization`:

* ``static``: weights *and* activations in int8 (QDQ format, per-channel int8 weights, uint8
  activations with MinMax ranges) for the ops in :data:`STATIC_OP_TYPES`. The activation
  ranges come from calibration images, drawn from a data spec and prepared with the training
  evaluation transform (:func:`draw_images`, :class:`ArrayCalibrationReader`). Quantizing
  only the matrix products keeps normalisation layers, softmax and residual additions in
  float, which a ViT needs to keep its codes (on a tiny ViT: 88% bit agreement with every op
  quantized, 99.2% with these).
* ``dynamic``: int8 weights, activation ranges computed per batch at run time, for the
  linear layers only (:data:`DYNAMIC_OP_TYPES`); needs no calibration data. This is ONNX
  Runtime's advice for transformers; dynamically quantized convolutions (``ConvInteger``) ran
  ~6x *slower* than float ones for a MobileNetV3 at 32 px (a smoke run on a busy host), so a
  CNN keeps its convolutions in float here and gains from int8 only with static calibration.

The caller (:func:`hashkd.export.export_model`) checks the result against the PyTorch model on
held-out images and decides which method to keep.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANTIZE_METHODS = ("auto", "static", "dynamic")
#: Ops quantized by the static method (the matrix products: convolutions and linear layers).
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: Ops quantized by the dynamic method (linear layers: all of a ViT's matrix products).
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
#: Images per calibration batch.
CALIBRATION_BATCH = 16


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds normalised NCHW float32 images to ONNX Runtime's calibrator, in batches."""

    def __init__(self, images: np.ndarray, input_name: str = "images", batch: int = 16):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch = int(batch)
        self._batches: Iterator[dict[str, np.ndarray]] = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.images), self.batch):
            yield {self.input_name: self.images[i : i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def draw_images(
    data: str,
    img_size: int,
    mean: Any,
    std: Any,
    n_calibration: int,
    n_check: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint seeded random samples of ``data``: calibration and held-out check images.

    Both are prepared with the training evaluation transform (normalised NCHW float32).
    """
    import torch

    from hashkd.data import eval_transform, load_dataset

    dataset = load_dataset(data)
    need = int(n_calibration) + int(n_check)
    if len(dataset) < need:
        raise ValueError(
            f"data {data!r} has {len(dataset)} images: expected at least {need} "
            f"({n_calibration} calibration + {n_check} held-out check images)"
        )
    order = np.random.default_rng(seed).permutation(len(dataset))[:need]
    transform = eval_transform(img_size, mean, std)

    def prepare(indices: np.ndarray) -> np.ndarray:
        tensors = [transform(dataset.load_image(int(i))) for i in indices]
        return torch.stack(tensors).numpy().astype(np.float32, copy=False)

    return prepare(order[:n_calibration]), prepare(order[n_calibration:])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization's root-logger warnings (one per skipped weight axis)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _preprocessed(src: Path, workdir: Path) -> tuple[Path, bool]:
    """ONNX Runtime's recommended pre-processing (shape inference + graph optimisation)."""
    dst = workdir / "preprocessed.onnx"
    try:
        with _quiet():
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst, True
    except Exception:  # noqa: BLE001 - optional step: quantize the graph as exported instead
        dst.unlink(missing_ok=True)
        return src, False


def _common_info(method: str, pre: bool) -> dict[str, Any]:
    return {
        "method": method,
        "onnxruntime_version": onnxruntime.__version__,
        "preprocessed": pre,
        "weight_type": "int8",
    }


def quantize_onnx_static(
    src: Path, dst: Path, calibration: np.ndarray, workdir: Path
) -> dict[str, Any]:
    """Static QDQ int8 quantization of ``src`` into ``dst``, calibrated on ``calibration``."""
    model, pre = _preprocessed(Path(src), Path(workdir))
    reader = ArrayCalibrationReader(calibration, batch=CALIBRATION_BATCH)
    with _quiet():
        quantize_static(
            str(model),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        **_common_info("static", pre),
        "format": "QDQ",
        "per_channel": True,
        "activation_type": "uint8",
        "op_types": list(STATIC_OP_TYPES),
        "calibrate_method": "MinMax",
    }


def quantize_onnx_dynamic(src: Path, dst: Path, workdir: Path) -> dict[str, Any]:
    """Dynamic int8 quantization of ``src`` into ``dst`` (weights int8, activations per batch)."""
    model, pre = _preprocessed(Path(src), Path(workdir))
    with _quiet():
        quantize_dynamic(
            str(model),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(DYNAMIC_OP_TYPES),
        )
    return {**_common_info("dynamic", pre), "op_types": list(DYNAMIC_OP_TYPES)}
