"""Fast encoding runtime: images -> packed binary codes with PyTorch, TorchScript or ONNX Runtime.

See :class:`hashkd.runtime.encoder.Encoder` and :func:`hashkd.runtime.images.load_image`.
"""

from hashkd.runtime.backends import BACKENDS, EXPORT_FILES, BackendError
from hashkd.runtime.encoder import AUTO_ORDER, Encoder, available_backends
from hashkd.runtime.fold import fold_linear_head
from hashkd.runtime.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from hashkd.runtime.preprocess import images_to_array, normalize_uint8

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "DEFAULT_MAX_PIXELS",
    "EXPORT_FILES",
    "BackendError",
    "Encoder",
    "ImageDecodeError",
    "available_backends",
    "fold_linear_head",
    "images_to_array",
    "load_image",
    "normalize_uint8",
]
