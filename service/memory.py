"""Give freed heap memory back to the operating system after a bulk import.

A bulk add of 100,000 items builds and frees that many Python objects (the decoded metadata,
its terms, SQL parameters); glibc's allocator keeps the freed pages in the process, so a
server that loaded 10 M codes over HTTP stays a few hundred MB above one that opened the same
store from its snapshot. ``malloc_trim(0)`` (glibc) returns the free pages at the top of the
heap and in its arenas. Elsewhere (musl, macOS, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger("service.memory")

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    _malloc_trim = _libc.malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _malloc_trim = None


def release_free_memory() -> bool:
    """Collect garbage and return free heap pages to the OS; whether glibc could be asked."""
    gc.collect()
    if _malloc_trim is None:  # pragma: no cover - not glibc
        return False
    _malloc_trim(0)
    return True
