"""Safe image loading for encoding: any common image in, an RGB ``PIL.Image`` out.

``load_image`` accepts a ``PIL.Image``, raw bytes or a file path and

* refuses decompression bombs before decoding: the header's ``width * height`` is checked
  against ``max_pixels`` (Pillow's own ``DecompressionBombError``/``Warning`` are turned into
  the same error), so a tiny file claiming a huge canvas never allocates it;
* decodes the whole image (``img.load()``) so that corrupt and truncated files fail here,
  with one clear sentence, instead of silently giving grey pixels. Pillow's
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set by this module (a process that sets it to
  ``True`` disables Pillow's truncation check);
* applies the EXIF orientation tag, takes the first frame of animations, and converts every
  mode to 8-bit RGB: grayscale/1-bit/CMYK/YCbCr/palette by Pillow's conversion, images with
  transparency (RGBA, LA, palette with a transparent colour) composited on white, and 16-bit
  or float grayscale rescaled to 0..255 (Pillow's own ``convert`` would clip them).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default decompression-bomb limit: 64 megapixels (e.g. 8000 x 8000), ~192 MB as RGB.
DEFAULT_MAX_PIXELS = 64_000_000
#: File name endings (any letter case) read as images by the datasets and ``hashkd add``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    """True for a file name with an image extension that is not hidden (``.name``)."""
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """An input could not be turned into an image: not an image, corrupt, truncated or too large.

    ``too_large`` is True when the input was refused as a decompression bomb.
    """

    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large


def describe_input(x: Any) -> str:
    """A short human name for an image input, for error messages."""
    if isinstance(x, (str, os.PathLike)):
        return f"file {str(x)!r}"
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"{len(x)}-byte input"
    if isinstance(x, Image.Image):
        return f"PIL image ({x.mode}, {x.width}x{x.height})"
    return f"input of type {type(x).__name__}"


def _check_size(img: Image.Image, what: str, max_pixels: int) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{what} has an empty size {w}x{h}: expected a non-empty image")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"{what} is {w}x{h} = {w * h} pixels: expected at most {max_pixels} pixels "
            "(refused as a possible decompression bomb)",
            too_large=True,
        )


def _rescale_to_uint8(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float grayscale -> 8-bit 'L' by scaling, not clipping."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    elif img.mode == "I":
        # 16-bit PNGs often decode as 'I' holding 0..65535; 8-bit-range data stays as is.
        hi = float(arr.max()) if arr.size else 0.0
        scaled = arr.astype(np.float32) / (257.0 if hi > 255 else 1.0)
    else:  # 'F': floats in 0..1 are scaled, anything else is taken as 0..255
        hi = float(np.nanmax(arr)) if arr.size else 0.0
        scaled = np.nan_to_num(arr.astype(np.float32)) * (255.0 if hi <= 1.0 else 1.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any Pillow mode to 8-bit RGB (transparency over white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    elif mode in ("I", "F") or mode.startswith("I;16"):
        img, mode = _rescale_to_uint8(img), "L"
    elif mode == "L" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode(fp: Any, what: str, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Our max_pixels check is the limit; Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)
        # still raises DecompressionBombError at open, which is reported the same way.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
            _check_size(img, what, max_pixels)
            img.load()
        except ImageDecodeError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(
                f"{what} is too large to decode ({exc}): expected at most {max_pixels} pixels",
                too_large=True,
            ) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(
                f"{what} is not a recognised image: expected JPEG, PNG, WebP, GIF, BMP, TIFF or another format Pillow reads"
            ) from None
        except FileNotFoundError:
            raise ImageDecodeError(f"{what} does not exist: expected an image file") from None
        except IsADirectoryError:
            raise ImageDecodeError(f"{what} is a directory: expected an image file") from None
        except PermissionError:
            raise ImageDecodeError(f"{what} cannot be read (permission denied)") from None
        except (
            OSError,
            SyntaxError,
            ValueError,
            EOFError,
            struct.error,
            zlib.error,
            IndexError,
            TypeError,
        ) as exc:
            detail = str(exc).strip() or type(exc).__name__
            kind = "truncated" if "truncated" in detail.lower() else "corrupt"
            raise ImageDecodeError(
                f"{what} is a {kind} image ({detail}): expected a complete, valid image file"
            ) from None
    return img


def load_image(x: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``x`` (``PIL.Image``, bytes or a path) into an 8-bit RGB image.

    Raises :class:`ImageDecodeError` (a ``ValueError``) for non-image, corrupt or truncated
    input, and with ``too_large=True`` when ``width * height > max_pixels``.
    """
    what = describe_input(x)
    if isinstance(x, Image.Image):
        _check_size(x, what, max_pixels)
        try:
            x.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageDecodeError(
                f"{what} could not be loaded ({exc}): expected a complete image"
            ) from None
        img = x
    elif isinstance(x, (bytes, bytearray, memoryview)):
        if len(x) == 0:
            raise ImageDecodeError("empty input (0 bytes): expected the bytes of an image file")
        img = _decode(io.BytesIO(bytes(x)), what, max_pixels)
    elif isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise ImageDecodeError(
                f"{what} does not exist or is not a file: expected an image file"
            )
        with path.open("rb") as fh:
            img = _decode(fh, what, max_pixels)
            img = _finish(img, what)
            if img.mode == "RGB" and getattr(img, "fp", None) is not None:
                img = img.copy()  # detach from the file that is about to close
            return img
    else:
        raise ImageDecodeError(
            f"{what} is not an image: expected a PIL image, bytes or a file path"
        )
    return _finish(img, what)


def _finish(img: Image.Image, what: str) -> Image.Image:
    # a malformed EXIF block only loses the orientation, the pixels are fine
    with contextlib.suppress(OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        img = ImageOps.exif_transpose(img) or img
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(
            f"{what} has an unsupported pixel format {img.mode!r} ({exc}): expected an RGB-convertible image"
        ) from None
