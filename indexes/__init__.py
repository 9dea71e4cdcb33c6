"""Binary (Hamming) indexes behind one interface: FAISS backends and Milvus.

>>> index = create_index("flat", 64)            # or "ivf:1024", "hnsw:32", "multihash:4x16"
>>> index.add(ids, codes)                         # caller's int64 ids, uint8 codes n x 8
>>> distances, ids = index.search(queries, k=10)  # nearest first, ties by ascending id
>>> index.save("db.hkdidx"); index = load_index("db.hkdidx")

Backends register themselves by name (``indexes.registry.register_backend``); see
docs/indexes.md ("Adding a backend"). ``indexes`` imports nothing from ``hashkd`` or
``service`` (docs/ARCHITECTURE.md): it works with codes from any source.
"""

from __future__ import annotations

from indexes.base import OPERATIONS, BinaryIndex
from indexes.errors import (
    BinaryIndexError,
    DuplicateIdError,
    IndexFileError,
    UnknownIdError,
    UnsupportedOperation,
)
from indexes.factory import create_index, load_index, set_threads
from indexes.registry import backend_names, register_backend
from indexes.spec import IndexSpec

__all__ = [
    "OPERATIONS",
    "BinaryIndex",
    "BinaryIndexError",
    "DuplicateIdError",
    "IndexFileError",
    "UnknownIdError",
    "IndexSpec",
    "UnsupportedOperation",
    "backend_names",
    "create_index",
    "load_index",
    "register_backend",
    "set_threads",
]
