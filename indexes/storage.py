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

import errno
import io
import json
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

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


# ------------------------------------------------------------------ atomic replacement of a file
# The same semantics as ``hashkd.io.atomic_open`` (indexes must stay importable without hashkd):
# a unique hidden temporary file beside the target with the permissions of a plain open() under
# the umask, flush + fsync, os.replace over the target, fsync of the directory; on any failure
# the temporary file is removed and the target untouched. tests/test_atomic_write.py runs the
# same cases over both copies.

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create_temp(target: Path) -> tuple[Path, int]:
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp{target.suffix}")
        try:
            return tmp, os.open(tmp, _OPEN_FLAGS, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(target))


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the entries of ``directory`` (a rename into it) durable; a no-op where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors (Windows)
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems refuse fsync on a directory
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[BinaryIO]:
    """A binary file object that replaces ``path`` atomically when the ``with`` block ends."""
    if mode != "wb":
        raise ValueError(f"mode={mode!r} is not valid: expected 'wb'")
    target = Path(path)
    tmp, fd = _create_temp(target)
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_index_file(
    path: str | os.PathLike[str], header: dict[str, Any], sections: dict[str, bytes]
) -> Path:
    """Write ``header`` and ``sections`` to ``path`` atomically (:func:`atomic_open`)."""
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
    with atomic_open(path) as fh:
        fh.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)))
        fh.write(head)
        for data in sections.values():
            fh.write(data)
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
