"""``create_index(spec, bits, **options)`` and ``load_index(path)``: the one door in.

Both look the backend up in ``indexes.registry``: a new backend registers itself with
``@register_backend(name)`` and is reachable here without editing this module.
"""

from __future__ import annotations

import os
from typing import Any

from indexes.base import BinaryIndex, check_bits
from indexes.errors import IndexFileError
from indexes.registry import backend_for_kind, backend_for_spec
from indexes.spec import IndexSpec
from indexes.storage import read_header


def set_threads(threads: int | None) -> None:
    """Set FAISS's OpenMP thread count for the whole process (``None``: leave as is)."""
    if threads is None:
        return
    from indexes.faiss_index import set_threads as _set

    _set(threads)


def create_index(
    spec: str = "flat", bits: int = 64, *, threads: int | None = None, **options: Any
) -> BinaryIndex:
    """Create an empty index from a spec string ``NAME`` or ``NAME:ARG``.

    Built-in specs: ``flat`` (exact, default), ``flat:gpu``, ``ivf[:NLIST]``, ``hnsw[:M]``,
    ``hash[:B]``, ``multihash[:NxB]`` (FAISS) or ``milvus[:URI]`` (Milvus; options ``uri``,
    ``collection``, ``index_type``, ``nlist``, ``nprobe``); ``indexes.backend_names()`` lists
    every registered one. ``options`` are the backend's keyword arguments (e.g. ``nprobe=32``,
    ``ef_search=128``, ``gpu=True``). ``threads`` sets FAISS's OpenMP threads for the process.
    """
    bits = check_bits(bits)
    set_threads(threads)
    parsed = IndexSpec.parse(spec)
    cls = backend_for_spec(parsed)
    try:
        return cls.from_spec(parsed, bits, **options)
    except TypeError as exc:  # an option that this backend does not take
        raise ValueError(f"index spec {parsed.text!r}: {exc}") from None


def load_index(
    path: str | os.PathLike[str],
    bits: int | None = None,
    *,
    threads: int | None = None,
    **overrides: Any,
) -> BinaryIndex:
    """Load an index saved by ``BinaryIndex.save``; ``bits`` (if given) must match the file.

    ``overrides`` replace saved options (e.g. ``nprobe=64``, ``ef_search=128``, ``gpu=True``).
    Raises ``IndexFileError`` for a missing, truncated, corrupted or foreign file.
    """
    set_threads(threads)
    path = os.fspath(path)
    header, _ = read_header(path)
    cls = backend_for_kind(str(header["kind"]), header.get("backend"))
    if cls is None:
        raise IndexFileError(f"index file {path!r} holds an unknown index kind {header['kind']!r}")
    return cls.load(path, bits, **overrides)
