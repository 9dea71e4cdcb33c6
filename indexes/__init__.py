"""Binary (Hamming) indexes behind one interface: FAISS backends and Milvus.

>>> index = create_index("flat", 64)            # or "ivf:1024", "hnsw:32", "multihash:4x16"
>>> index.add(ids, codes)                         # caller's int64 ids, uint8 codes n x 8
>>> distances, ids = index.search(queries, k=10)  # nearest first, ties by ascending id
>>> index.save("db.hkdidx"); index = load_index("db.hkdidx")

``indexes`` imports nothing from ``hashkd`` (DESIGN.md): it works with codes from any source.
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

__all__ = [
    "OPERATIONS",
    "BinaryIndex",
    "BinaryIndexError",
    "DuplicateIdError",
    "IndexFileError",
    "UnknownIdError",
    "UnsupportedOperation",
    "create_index",
    "load_index",
    "set_threads",
]
