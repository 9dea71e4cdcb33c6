"""Crash-safe file writes: the one way hashkd (and the service) replace a file.

Every function here writes a new file beside the target under a unique hidden name, flushes
and fsyncs it, renames it over the target (``os.replace``, atomic on POSIX and Windows) and
fsyncs the directory so that the rename itself survives a power cut. A reader therefore sees
the old file or the new one, never a torn one; concurrent writers to one target leave one
complete version. On any failure (an exception in the writer, a full disk, Ctrl-C) the
temporary file is removed and the target is left untouched.

The new file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less
the umask), not the ``0o600`` of :func:`tempfile.mkstemp`: artifacts are read by other users
(a service). The temporary name keeps the target's suffix, so writers that append one when it
is missing (``np.save``) write where they are told.

``indexes/storage.py`` holds the one other copy of these semantics (``indexes`` must stay
importable without hashkd); ``tests/test_atomic_write.py`` runs the same cases over both.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_move",
    "atomic_open",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_directory",
]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create_temp(target: Path) -> tuple[Path, int]:
    """A new, empty file beside ``target`` (unique name, mode ``0o666`` less the umask) and its fd."""
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


def _publish(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    fsync_directory(target.parent)


@contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a file object that replaces ``path`` atomically when the ``with`` block ends.

    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding``). If the block raises, ``path`` keeps its
    old content and the temporary file is removed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode={mode!r} is not valid: expected 'wb' or 'w'")
    target = Path(path)
    tmp, fd = _create_temp(target)
    try:
        try:
            f = os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], writer: Callable[[str], object]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``safetensors.torch.save_file``), then replace ``path`` with it.

    For writers that take a file name. A writer that creates its own file there (safetensors
    makes it ``0o600``) still leaves a file with the umask's permissions. Writers that take a
    file object use :func:`atomic_open`:
    ``with atomic_open(path) as f: torch.save(state, f)``.
    """
    target = Path(path)
    tmp, fd = _create_temp(target)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    try:
        writer(str(tmp))
        with open(tmp, "rb+") as f:  # the writer may have closed without fsync
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) != mode:
                os.chmod(tmp, mode)  # the writer made its own file (safetensors: 0o600)
            os.fsync(f.fileno())
        _publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def atomic_move(src: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Move the finished file ``src`` over ``path`` (same file system) durably.

    For files a tool has written into a staging folder beside ``path`` (an ONNX export with
    its external data files): ``src`` is fsynced, renamed over ``path``, and the directory
    fsynced. ``src`` keeps the permissions its writer gave it.
    """
    target = Path(path)
    with open(src, "rb+") as f:
        os.fsync(f.fileno())
    _publish(Path(src), target)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text``."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = True
) -> Path:
    """Atomically replace ``path`` with ``obj`` as JSON (indented, sorted keys by default)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))
