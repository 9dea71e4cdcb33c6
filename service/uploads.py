"""Reading and checking uploads: size caps, image decoding, ids, metadata and .npy files.

Starlette puts no limit on upload size, so two limits apply:
- each route's ``max_body_size`` (FastAPI's request-body limit) refuses a body larger than the
  most that endpoint can accept with 413, before it is spooled to disk;
- :func:`read_capped` reads at most ``limit + 1`` bytes of one uploaded file, so one file over
  its cap is refused with 413 without reading it further.

Images are decoded with ``hashkd.runtime.images.load_image`` under a pixel cap, which
refuses decompression bombs (a 30,000 x 30,000 PNG is a few hundred kB on the wire).
Nothing user-supplied is unpickled: ``.npy`` files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
from fastapi import UploadFile
from PIL import Image

from hashkd.runtime.images import ImageDecodeError, load_image
from service.errors import ApiError
from service.jsonlimits import loads_bounded

MAX_ID = 2**63 - 1


async def read_capped(upload: UploadFile, limit: int, what: str) -> bytes:
    """The bytes of one uploaded file; 413 when over ``limit``, 422 when empty."""
    data = await upload.read(limit + 1)
    name = upload.filename or what
    if len(data) > limit:
        raise ApiError(413, f"{what} {name!r} is larger than the {limit}-byte limit")
    if not data:
        raise ApiError(422, f"{what} {name!r} is empty: expected the bytes of a file")
    return data


def decode_image(data: bytes, max_pixels: int, name: str) -> Image.Image:
    """Decode one uploaded image (RGB); 413 for decompression bombs, 415 for non-images."""
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        if getattr(exc, "too_large", False):
            raise ApiError(413, f"image {name!r} is too large to decode: {exc}") from None
        raise ApiError(415, f"{name!r} is not a readable image: {exc}") from None


def parse_ids(text: str | None, count: int) -> list[int] | None:
    """Comma-separated int64 ids, one per uploaded item (None when not given)."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    ids: list[int] = []
    for p in parts:
        try:
            value = int(p)
        except ValueError:
            raise ApiError(
                422, f"ids: {p!r} is not an integer: expected comma-separated int64 ids"
            ) from None
        if value < 0 or value > MAX_ID:
            raise ApiError(422, f"ids: {value} is out of range: expected 0 <= id <= {MAX_ID}")
        ids.append(value)
    if len(ids) != count:
        raise ApiError(422, f"ids: got {len(ids)} ids for {count} items: expected one id per item")
    if len(set(ids)) != len(ids):
        raise ApiError(422, "ids: an id is repeated within the request: expected distinct ids")
    return ids


def parse_metadata(text: str | bytes | None, count: int, limit: int) -> list[dict[str, Any]] | None:
    """A JSON list with one object per item (None when not given); size and depth bounded."""
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        return None
    if len(text) > limit:
        raise ApiError(413, f"metadata is larger than the {limit}-byte limit")
    value = loads_bounded(text, "metadata", limit)
    if isinstance(value, dict) and count == 1:
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ApiError(422, "metadata must be a JSON list of objects, one per item")
    if len(value) != count:
        raise ApiError(
            422, f"metadata has {len(value)} objects for {count} items: expected one per item"
        )
    return value


def paths_metadata(text: str | bytes, count: int, limit: int) -> list[dict[str, Any]]:
    """Per-item metadata ``{"path": ...}`` from a code set's paths.json (a JSON list of
    ``count`` strings); size and depth bounded."""
    if len(text) > limit:
        raise ApiError(413, f"paths is larger than the {limit}-byte limit")
    value = loads_bounded(text, "paths", limit)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(422, "paths must be a JSON list of strings, one per code (paths.json)")
    if len(value) != count:
        raise ApiError(
            422, f"paths has {len(value)} entries for {count} codes: expected one per code"
        )
    return [{"path": p} for p in value]


def parse_metadata_object(text: str | None, limit: int) -> dict[str, Any] | None:
    """One item's metadata: a JSON object (None when not given); size and depth bounded."""
    if text is None or not text.strip():
        return None
    if len(text) > limit:
        raise ApiError(413, f"metadata is larger than the {limit}-byte limit")
    value = loads_bounded(text, "metadata", limit)
    if not isinstance(value, dict):
        raise ApiError(422, f"metadata must be a JSON object, got {type(value).__name__}")
    return value


_HEX = re.compile(r"[0-9a-fA-F]*")


def parse_hex_codes(codes: str | list[str], bits: int, limit: int) -> np.ndarray:
    """Codes given as hex strings (one or a list) -> uint8 n x bits/8; 422 naming the first
    bad one and the expected length."""
    items = [codes] if isinstance(codes, str) else list(codes)
    if not items:
        raise ApiError(422, "codes is an empty list: expected at least one hex code")
    if len(items) > limit:
        raise ApiError(422, f"codes has {len(items)} codes: expected at most {limit} per request")
    want = bits // 4
    out = np.empty((len(items), bits // 8), dtype=np.uint8)
    for n, text in enumerate(items):
        text = text.strip()
        if len(text) != want or not _HEX.fullmatch(text):
            shown = text[:24] + ("..." if len(text) > 24 else "")
            raise ApiError(
                422,
                f"codes[{n}]={shown!r} is not a {bits}-bit code: expected {want} hex digits "
                f"({bits // 8} bytes), got {len(text)} characters",
            )
        out[n] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
    return out


def load_npy(data: bytes, what: str) -> np.ndarray:
    """An array from the bytes of a .npy file, never unpickling (422 when unreadable).

    Only the .npy format is accepted (``np.load`` would also open .npz zip archives).
    """
    if not data.startswith(b"\x93NUMPY"):
        raise ApiError(422, f"{what} is not a .npy file: expected the bytes written by numpy.save")
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure of untrusted bytes is the client's
        raise ApiError(
            422, f"{what} is not a readable .npy file (object arrays are refused): {exc}"
        ) from None


def check_code_upload(
    codes: np.ndarray, ids: np.ndarray | None, bits: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate uploaded codes (uint8 n x bits/8) and ids (integers >= 0, distinct, one per code)."""
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ApiError(
            422,
            f"codes must be a uint8 array of shape (n, {bits // 8}), got {codes.dtype} {codes.shape}",
        )
    if codes.shape[1] * 8 != bits:
        raise ApiError(
            422,
            f"codes are {codes.shape[1] * 8} bits long but this service stores {bits}-bit codes",
        )
    if codes.shape[0] == 0:
        raise ApiError(422, "codes holds no rows: expected at least one code")
    if ids is None:
        return np.ascontiguousarray(codes), None
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ApiError(422, f"ids must be a 1-d integer array, got {ids.dtype} {ids.shape}")
    if ids.shape[0] != codes.shape[0]:
        raise ApiError(
            422, f"got {ids.shape[0]} ids for {codes.shape[0]} codes: expected one id per code"
        )
    if ids.size and (ids.min() < 0 or (ids.dtype.kind == "u" and ids.max() > MAX_ID)):
        raise ApiError(422, f"ids must be between 0 and {MAX_ID}")
    if len(np.unique(ids)) != len(ids):
        raise ApiError(422, "ids are repeated within the upload: expected distinct ids")
    return np.ascontiguousarray(codes), ids.astype(np.int64)


def check_labels(labels: np.ndarray, count: int) -> np.ndarray:
    """Validate an uploaded labels.npy (n class indices, or n x C multi-hot) for ``count`` codes."""
    if not ((labels.ndim == 1 and labels.dtype.kind in "iu") or labels.ndim == 2):
        raise ApiError(
            422, f"labels must be n x C multi-hot (or n class indices), got shape {labels.shape}"
        )
    if labels.shape[0] != count:
        raise ApiError(
            422, f"labels has {labels.shape[0]} rows for {count} codes: expected one per code"
        )
    return labels


def labels_metadata(labels: np.ndarray, count: int) -> list[dict[str, Any]]:
    """Per-item metadata ``{"labels": [class indices]}`` from a multi-hot labels.npy."""
    if labels.ndim == 1 and labels.dtype.kind in "iu":
        labels_list = [[int(v)] for v in labels]
    elif labels.ndim == 2:
        labels_list = [np.nonzero(row)[0].tolist() for row in labels]
    else:
        raise ApiError(
            422, f"labels must be n x C multi-hot (or n class indices), got shape {labels.shape}"
        )
    if len(labels_list) != count:
        raise ApiError(
            422, f"labels has {len(labels_list)} rows for {count} codes: expected one per code"
        )
    return [{"labels": lab} for lab in labels_list]
