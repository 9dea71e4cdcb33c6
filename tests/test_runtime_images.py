"""hashkd.runtime.images: conversion of every common mode to RGB and refusal of bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hashkd.runtime.images import ImageDecodeError, load_image


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(rng: np.random.Generator, size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90
    )
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but that carries almost no data (a bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_rgb_image_from_every_input_kind(tmp_path, rng):
    arr = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(arr))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for x in (Image.fromarray(arr), data, bytearray(data), memoryview(data), str(path), path):
        img = load_image(x)
        assert img.mode == "RGB" and img.size == (9, 7)
        assert np.array_equal(np.asarray(img), arr)


def test_grayscale_and_one_bit_become_gray_rgb():
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), mode="L")
    out = np.asarray(load_image(_png_bytes(gray)))
    assert out.shape == (2, 2, 3)
    assert np.array_equal(out[..., 0], [[0, 100], [200, 255]])
    assert np.array_equal(out[..., 0], out[..., 2])
    one = Image.new("1", (3, 1))
    one.putpixel((1, 0), 1)
    out1 = np.asarray(load_image(_png_bytes(one)))
    assert out1[0, :, 0].tolist() == [0, 255, 0]


def test_rgba_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white: ~127
    out = np.asarray(load_image(_png_bytes(Image.fromarray(rgba, mode="RGBA"))))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    expected = round(255 * (1 - 128 / 255))
    assert np.all(np.abs(out[0, 2].astype(int) - expected) <= 1)


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = np.asarray(load_image(_png_bytes(pal)))
    assert out[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    out_t = np.asarray(load_image(_png_bytes(pal, transparency=1)))  # colour 1 transparent
    assert out_t[0].tolist() == [[255, 0, 0], [255, 255, 255]]


def test_sixteen_bit_gray_is_rescaled_not_clipped():
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    img16 = Image.fromarray(values)
    assert img16.mode.startswith("I;16")
    out = np.asarray(load_image(_png_bytes(img16)))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_is_converted(tmp_path):
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))  # no ink: white
    path = tmp_path / "c.jpg"
    cmyk.save(path, format="JPEG", quality=100)
    out = np.asarray(load_image(path))
    assert out.shape == (2, 2, 3) and out.min() >= 250


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (3, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_png_bytes(img, exif=exif.tobytes()))
    assert out.size == (2, 3)
    # top-left goes to top-right under a clockwise quarter turn
    assert out.getpixel((1, 0)) == (255, 0, 0)
    assert out.getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize(
    "bad",
    [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"", 12345, None],
    ids=["text", "png-signature-garbage", "empty", "int", "none"],
)
def test_non_images_raise_image_decode_error(bad):
    with pytest.raises(ImageDecodeError) as info:
        load_image(bad)
    assert not info.value.too_large
    assert isinstance(info.value, ValueError)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError):
        load_image(tmp_path)


def test_truncated_jpeg_and_png_are_detected(rng):
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = _jpeg_bytes(rng)
    assert load_image(data).size == (64, 64)  # the complete file is fine
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(data[: len(data) // 2])
    png = _png_bytes(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageDecodeError):
        load_image(png[: len(png) // 2])


def test_decompression_bomb_header_is_refused_before_decoding():
    bomb = _png_header_only(10_000, 9_000)  # 90 megapixels, over the 64-megapixel default
    assert len(bomb) < 100
    with pytest.raises(ImageDecodeError) as info:
        load_image(bomb)
    assert info.value.too_large
    assert "10000x9000" in str(info.value)
    # above Pillow's own hard limit, even when ours is higher: refused at open, still too_large
    huge = _png_header_only(100_000, 100_000)
    with pytest.raises(ImageDecodeError) as info2:
        load_image(huge, max_pixels=10**12)
    assert info2.value.too_large


def test_real_large_one_bit_image_respects_max_pixels():
    big = Image.new("1", (3000, 2000))
    data = _png_bytes(big)
    assert len(data) < 20_000  # a tiny file for a 6-megapixel canvas
    with pytest.raises(ImageDecodeError) as info:
        load_image(data, max_pixels=5_000_000)
    assert info.value.too_large
    assert load_image(data, max_pixels=6_000_000).size == (3000, 2000)
    with pytest.raises(ImageDecodeError) as info_pil:  # a PIL image is checked too
        load_image(big, max_pixels=1_000)
    assert info_pil.value.too_large
