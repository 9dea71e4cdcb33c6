"""One index = one file, written atomically, read back with every check.

Layout (all integers little-endian)::

    8 bytes   magic  b"HKDBIDX\\0"
    4 bytes   format version (uint32, currently 2; version 1 files are still read)
    4 bytes   header length H (uint32)
    H bytes   header: UTF-8 JSON {"kind", "spec", "bits", "count", "options", "metadata",
              "sections": [{"name", "nbytes", "crc32"}, ...]}
    ...       the sections, in header order: "faiss" (faiss.serialize_index_binary bytes),
              "pos_to_id" (.npy int64, side id map of the backends without native ids),
              "ids" (.npy int64, sorted ids; for IVF, whose ids are not otherwise
              readable, and for flat, whose codes are stored in ascending-id order --
              hnsw/hash derive them from ``pos_to_id``)

Version 2 changed only the flat backend's sections: version 1 stored an
``IndexBinaryIDMap2`` (ids inside FAISS, no "ids" section); version 2 stores an
``IndexBinaryFlat`` whose position p holds the code of the p-th smallest id, plus "ids".
Version 1 files of every kind are read (a version 1 flat file is converted on load); the
version was raised so that older hashkd refuses a version 2 file instead of misreading it.

No pickle anywhere: the .npy sections are read with ``allow_pickle=False``. A file whose magic,
version, sizes or CRC-32 checksums do not match raises ``IndexFileError``.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from indexes.errors import IndexFileError

MAGIC = b"HKDBIDX\0"
FORMAT_VERSION = 2
#: Versions ``read_header`` accepts (1: flat stored as ``IndexBinaryIDMap2``, converted on load).
READABLE_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<8sII")
_MAX_HEADER = 1 << 20


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes, name: str, path: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise IndexFileError(
            f"section {name!r} of index file {path!r} is not a valid .npy array: {exc}"
        ) from None


def write_index_file(
    path: str | os.PathLike[str], header: dict[str, Any], sections: dict[str, bytes]
) -> Path:
    """Write ``header`` and ``sections`` to ``path`` atomically: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    header = dict(header)
    header["sections"] = [
        {"name": name, "nbytes": len(data), "crc32": zlib.crc32(data)}
        for name, data in sections.items()
    ]
    head = json.dumps(header, sort_keys=True).encode("utf-8")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(2, "directory does not exist", str(directory))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)))
            fh.write(head)
            for data in sections.values():
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return path
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """Read and check the prefix and JSON header; return (header, offset of the first section)."""
    p = str(path)
    if not Path(p).is_file():
        raise IndexFileError(f"index file {p!r} does not exist")
    with open(p, "rb") as fh:
        prefix = fh.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
            raise IndexFileError(f"{p!r} is not a hashkd index file (bad magic number)")
        _, version, hlen = _PREFIX.unpack(prefix)
        if version not in READABLE_VERSIONS:
            raise IndexFileError(
                f"index file {p!r} has format version {version}; this version of hashkd reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))} (a newer hashkd wrote it?)"
            )
        if hlen > _MAX_HEADER:
            raise IndexFileError(f"index file {p!r} has an implausible header length {hlen}")
        raw = fh.read(hlen)
    if len(raw) != hlen:
        raise IndexFileError(f"index file {p!r} is truncated (header cut short)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IndexFileError(f"index file {p!r} has a corrupted header") from None
    for key in ("kind", "spec", "bits", "sections"):
        if key not in header:
            raise IndexFileError(f"index file {p!r} header lacks {key!r}")
    return header, _PREFIX.size + hlen


def read_index_file(
    path: str | os.PathLike[str], bits: int | None = None
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read ``path``; return (header, sections). ``bits`` (if given) must match the file."""
    p = str(path)
    header, offset = read_header(p)
    if bits is not None and int(header["bits"]) != int(bits):
        raise IndexFileError(
            f"index file {p!r} holds {header['bits']}-bit codes, expected {bits}-bit codes"
        )
    expected = offset + sum(int(s["nbytes"]) for s in header["sections"])
    actual = os.path.getsize(p)
    if actual < expected:
        raise IndexFileError(f"index file {p!r} is truncated ({actual} bytes, expected {expected})")
    if actual > expected:
        raise IndexFileError(f"index file {p!r} has {actual - expected} unexpected trailing bytes")
    sections: dict[str, bytes] = {}
    with open(p, "rb") as fh:
        fh.seek(offset)
        for s in header["sections"]:
            data = fh.read(int(s["nbytes"]))
            if zlib.crc32(data) != int(s["crc32"]):
                raise IndexFileError(
                    f"section {s['name']!r} of index file {p!r} is corrupted (CRC-32 mismatch)"
                )
            sections[str(s["name"])] = data
    return header, sections
