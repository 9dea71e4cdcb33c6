"""Fast encoding runtime: images -> packed binary codes with PyTorch, TorchScript or ONNX Runtime.

See :class:`hashkd.runtime.encoder.Encoder` and :func:`hashkd.runtime.images.load_image`.

Importing this package (and encoding with the ``onnx`` backend) needs neither torch nor timm:
the artifact's config is read as JSON (:mod:`hashkd.runtime.config`) and images are prepared
with PIL + numpy (:mod:`hashkd.runtime.preprocess`). torch is imported only by the ``torch`` and
``torchscript`` backends and by :func:`fold_linear_head` (loaded on first use).
"""

from __future__ import annotations

from typing import Any

from hashkd.runtime.backends import BACKENDS, EXPORT_FILES, PRECISIONS, BackendError
from hashkd.runtime.config import ArtifactConfigError, RuntimeConfig, read_artifact_config
from hashkd.runtime.encoder import AUTO_ORDER, Encoder, available_backends
from hashkd.runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from hashkd.runtime.preprocess import images_to_array, normalize_uint8

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "DEFAULT_MAX_PIXELS",
    "EXPORT_FILES",
    "PRECISIONS",
    "ArtifactConfigError",
    "BackendError",
    "Encoder",
    "ImageDecodeError",
    "RuntimeConfig",
    "available_backends",
    "fold_linear_head",
    "images_to_array",
    "load_image",
    "normalize_uint8",
    "read_artifact_config",
]


def __getattr__(name: str) -> Any:
    if name == "fold_linear_head":  # imports torch: only when asked for
        from hashkd.runtime.fold import fold_linear_head

        return fold_linear_head
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
