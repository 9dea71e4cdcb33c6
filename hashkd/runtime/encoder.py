"""``Encoder``: images (PIL, bytes or paths) -> packed binary codes, for any model artifact.

The encoder reads preprocessing from the artifact's ``config.json`` (``img_size``, ``mean``,
``std``), decodes and converts images with :func:`hashkd.runtime.images.load_image`, resizes
and normalises with PIL + numpy (:mod:`hashkd.runtime.preprocess`), runs one of three
backends and packs the signs of the logits (bit 1 where logit > 0, ``np.packbits``).

``backend='auto'`` takes the first of :data:`AUTO_ORDER` that is usable: ONNX Runtime when the
artifact has a current ONNX export and onnxruntime is installed, else eager PyTorch. The order
comes from ``scripts/bench_encode.py`` (docs/bench-encode.md): onnxruntime was the fastest for
the CNN students at every batch size; TorchScript was not consistently faster than eager
PyTorch (and ``torch.jit`` is deprecated in torch 2.14), so ``auto`` never picks it.

``precision='auto'`` runs the int8 ONNX graph (``hashkd export --quantize int8``, listed under
``exports["onnx"]["int8"]``) when the onnx backend is used and the artifact has one; ``'fp32'``
always runs the float graph; ``'int8'`` requires the int8 graph (and so the onnx backend).

Nothing here imports torch or timm: the config is read as JSON
(:func:`hashkd.runtime.config.read_artifact_config`) and only the ``torch`` and
``torchscript`` backends import torch, when they are opened.

Batches are handed to the backend in chunks of at most ``batch_size`` images. By default
(``batch_size=None``) the chunk holds about :data:`AUTO_BATCH_PIXELS` input pixels, i.e. 4
images at 224 px and 196 at 32 px: on a CPU the activations of a CNN student at 224 px stop
fitting in cache beyond a few images, and EfficientNet-B0 under onnxruntime ran 5x slower per
image on one backend call of 64 images than on 16 calls of 4 (docs/bench-encode.md), while
small inputs and ViTs gain from large chunks or do not care. Callers still pass batches of
any size; the codes do not depend on the chunking.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hashkd.codes import pack_codes
from hashkd.runtime.backends import (
    BACKENDS,
    PRECISIONS,
    Backend,
    BackendError,
    export_is_current,
    export_path,
    int8_path,
    onnxruntime_available,
    open_backend,
)
from hashkd.runtime.config import RuntimeConfig, read_artifact_config
from hashkd.runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from hashkd.runtime.preprocess import images_to_array

#: Preference of ``backend='auto'``, fastest first (see docs/bench-encode.md).
AUTO_ORDER = ("onnx", "torch", "torchscript")
#: Input pixels per backend call when ``batch_size`` is not given (4 images of 224 x 224).
AUTO_BATCH_PIXELS = 4 * 224 * 224


def auto_batch_size(img_size: int) -> int:
    """Images per backend call for ``img_size`` inputs: about :data:`AUTO_BATCH_PIXELS` pixels."""
    return max(1, AUTO_BATCH_PIXELS // (int(img_size) ** 2))


def available_backends(
    model_dir: str | os.PathLike[str], raw: dict[str, Any] | None = None
) -> list[str]:
    """Backends usable for an artifact, in :data:`AUTO_ORDER` (exports must be current)."""
    if raw is None:
        _, raw = read_artifact_config(model_dir)
    out = []
    for name in AUTO_ORDER:
        if name == "torch":
            out.append(name)  # always usable: the weights are the artifact
        elif name == "onnx" and not onnxruntime_available():
            continue
        elif export_path(model_dir, raw, name) is not None and export_is_current(
            model_dir, raw, name
        ):
            out.append(name)
    return out


def _require_current_export(model_dir: Path, raw: dict[str, Any], name: str) -> None:
    if export_path(model_dir, raw, name) is None:
        raise BackendError(
            f"model artifact {str(model_dir)!r} has no {name} export: "
            f"run `hashkd export {model_dir} --format {name}` or use backend='torch'"
        )
    if not export_is_current(model_dir, raw, name):
        raise BackendError(
            f"the {name} export in {str(model_dir)!r} was made from other weights than "
            f"model.safetensors: export again with `hashkd export {model_dir} --format {name}`"
        )


class Encoder:
    """Turns batches of images into packed uint8 codes (n x K/8) with one backend."""

    def __init__(
        self,
        model_dir: Path,
        config: RuntimeConfig,
        raw: dict[str, Any],
        backend: Backend,
        threads: int | None = None,
        batch_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        precision: str = "fp32",
    ):
        if batch_size is None:
            batch_size = auto_batch_size(config.img_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size={batch_size!r} is not valid: expected a positive integer "
                "(images per backend call) or None for the automatic size"
            )
        self.model_dir = model_dir
        self.config = config
        self.raw_config = raw
        self._backend = backend
        self.threads = threads
        self.batch_size = int(batch_size)
        self.max_pixels = int(max_pixels)
        #: 'int8' when the quantized ONNX graph runs, else 'fp32'.
        self.precision = precision

    @classmethod
    def from_artifact(
        cls,
        model_dir: str | os.PathLike[str],
        backend: str = "auto",
        threads: int | None = None,
        batch_size: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        precision: str = "auto",
    ) -> Encoder:
        """Open a model artifact with ``backend`` in 'auto', 'torch', 'torchscript', 'onnx'.

        ``batch_size`` is the largest number of images per backend call (default: about
        :data:`AUTO_BATCH_PIXELS` input pixels, see :func:`auto_batch_size`). ``precision``
        is 'auto' (the int8 ONNX graph when the onnx backend runs and the artifact has one),
        'fp32' or 'int8' (needs the int8 graph; with ``backend='auto'`` it selects onnx).
        """
        if precision not in PRECISIONS:
            raise BackendError(
                f"precision={precision!r} is not valid: expected one of {', '.join(PRECISIONS)}"
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(
                f"threads={threads!r} is not valid: expected a positive integer or None"
            )
        model_dir = Path(model_dir)
        config, raw = read_artifact_config(model_dir)
        if backend == "auto":
            # the int8 graph is an ONNX graph: asking for it selects onnx
            name = "onnx" if precision == "int8" else available_backends(model_dir, raw)[0]
        elif backend in BACKENDS:
            name = backend
        else:
            raise BackendError(
                f"backend={backend!r} is not valid: expected 'auto' or one of {', '.join(BACKENDS)}"
            )
        if name != "torch":
            _require_current_export(model_dir, raw, name)
        target = model_dir if name == "torch" else export_path(model_dir, raw, name)
        quantized = int8_path(model_dir, raw) if name == "onnx" else None
        if precision == "int8":
            if name != "onnx":
                raise BackendError(
                    f"precision='int8' needs the onnx backend, not {name!r}: "
                    "use backend='onnx' or 'auto'"
                )
            if quantized is None:
                raise BackendError(
                    f"model artifact {str(model_dir)!r} has no int8 export: run "
                    f"`hashkd export {model_dir} --format onnx --quantize int8` or use precision='fp32'"
                )
        use_int8 = quantized is not None and precision in ("auto", "int8")
        if use_int8:
            target = quantized
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            impl = open_backend(name, target, threads)  # type: ignore[arg-type]
        return cls(
            model_dir,
            config,
            raw,
            impl,
            threads,
            batch_size,
            max_pixels,
            precision="int8" if use_int8 else "fp32",
        )

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def bits(self) -> int:
        return int(self.config.bits)

    @property
    def img_size(self) -> int:
        return int(self.config.img_size)

    # ------------------------------------------------------------------ preprocessing
    def load_images(self, images: Iterable[Any], start: int = 0) -> list:
        """Decode inputs into RGB PIL images; errors name the position of the bad input."""
        out = []
        for i, item in enumerate(images):
            try:
                out.append(load_image(item, max_pixels=self.max_pixels))
            except ImageDecodeError as exc:
                raise ImageDecodeError(
                    f"image #{start + i}: {exc}", too_large=exc.too_large
                ) from None
        return out

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """Images (any accepted input) -> normalised NCHW float32 array for the model."""
        pil = self.load_images(images)
        return images_to_array(pil, self.img_size, self.config.mean, self.config.std)

    def _check_arrays(self, arrays: Any) -> np.ndarray:
        x = np.asarray(arrays)
        s = self.img_size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise ValueError(
                f"arrays have shape {x.shape}: expected (n, 3, {s}, {s}) normalised float32 images"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(
                f"arrays have dtype {x.dtype}: expected float32 images already normalised"
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------------ encoding
    def logits_from_arrays(self, arrays: Any, batch_size: int | None = None) -> np.ndarray:
        """Normalised NCHW float32 images -> float32 logits (n x K)."""
        x = self._check_arrays(arrays)
        bs = int(batch_size or self.batch_size)
        if x.shape[0] == 0:
            return np.empty((0, self.bits), dtype=np.float32)
        parts = [self._backend.run(x[i : i + bs]) for i in range(0, x.shape[0], bs)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def encode_arrays(self, arrays: Any, batch_size: int | None = None) -> np.ndarray:
        """Normalised NCHW float32 images -> packed uint8 codes (n x K/8)."""
        return pack_codes(self.logits_from_arrays(arrays, batch_size))

    def encode_logits(self, images: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        """Images (PIL, bytes or paths) -> float32 logits (n x K); the code is their sign."""
        images = list(images)
        bs = int(batch_size or self.batch_size)
        if not images:
            return np.empty((0, self.bits), dtype=np.float32)
        parts = []
        for i in range(0, len(images), bs):
            pil = self.load_images(images[i : i + bs], start=i)
            x = images_to_array(pil, self.img_size, self.config.mean, self.config.std)
            parts.append(self._backend.run(x))
        return np.concatenate(parts).astype(np.float32, copy=False)

    def encode(self, images: Sequence[Any], batch_size: int | None = None) -> np.ndarray:
        """Images (PIL, bytes or paths) -> packed uint8 codes (n x K/8)."""
        return pack_codes(self.encode_logits(images, batch_size))

    def __repr__(self) -> str:
        return (
            f"Encoder(model_dir={str(self.model_dir)!r}, backend={self.backend!r}, "
            f"precision={self.precision!r}, bits={self.bits}, "
            f"img_size={self.img_size}, threads={self.threads}, batch_size={self.batch_size})"
        )
