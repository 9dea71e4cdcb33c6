"""Model input preparation with PIL + numpy only (no torchvision at serving time).

Matches the training evaluation transform exactly:
``Resize((S, S), bilinear) -> ToTensor -> Normalize(mean, std)``. torchvision resizes PIL
images with ``PIL.Image.resize(..., BILINEAR)``, ``ToTensor`` divides by 255 in float32 and
``Normalize`` subtracts the mean then divides by the std; the same float32 operations in the
same order give bit-identical arrays (tests/test_runtime.py checks against torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_uint8(img: Image.Image, img_size: int) -> np.ndarray:
    """An RGB image resized to ``img_size x img_size`` (bilinear) as an HWC uint8 array."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (img_size, img_size):
        img = img.resize((img_size, img_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def normalize_uint8(batch: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """NHWC uint8 pixels -> NCHW float32 ``(x / 255 - mean) / std`` (C-contiguous)."""
    batch = np.asarray(batch)
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 pixels of shape (n, H, W, 3), got {batch.dtype} {batch.shape}"
        )
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return x


def images_to_array(
    images: Sequence[Image.Image], img_size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """RGB PIL images -> normalised NCHW float32 array of shape (n, 3, img_size, img_size)."""
    if len(images) == 0:
        return np.empty((0, 3, img_size, img_size), dtype=np.float32)
    pixels = np.stack([resize_uint8(im, img_size) for im in images])
    return normalize_uint8(pixels, mean, std)
