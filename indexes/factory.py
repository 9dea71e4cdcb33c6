"""``create_index(spec, bits, **options)`` and ``load_index(path)``: the one door in."""

from __future__ import annotations

import os
from typing import Any

from indexes.base import BinaryIndex, check_bits
from indexes.errors import IndexFileError
from indexes.storage import read_header, read_index_file


def set_threads(threads: int | None) -> None:
    """Set FAISS's OpenMP thread count for the whole process (``None``: leave as is)."""
    from indexes.faiss_index import set_threads as _set

    _set(threads)


def create_index(
    spec: str = "flat", bits: int = 64, *, threads: int | None = None, **options: Any
) -> BinaryIndex:
    """Create an empty index from a spec string.

    ``spec``: ``flat`` (exact, default), ``flat:gpu``, ``ivf[:NLIST]``, ``hnsw[:M]``,
    ``hash[:B]``, ``multihash[:NxB]`` (FAISS) or ``milvus[:URI]`` (Milvus; options ``uri``,
    ``collection``, ``index_type``, ``nlist``, ``nprobe``). ``options`` are the backend's
    keyword arguments (e.g. ``nprobe=32``, ``ef_search=128``, ``gpu=True``). ``threads`` sets
    FAISS's OpenMP threads for the process.
    """
    bits = check_bits(bits)
    set_threads(threads)
    if isinstance(spec, str) and spec.strip().lower().split(":", 1)[0] == "milvus":
        from indexes.milvus_index import MilvusIndex

        _, _, uri = spec.strip().partition(":")
        if uri:
            options.setdefault("uri", uri)
        return MilvusIndex(bits, spec=spec.strip(), **options)
    from indexes.faiss_index import parse_spec

    return parse_spec(spec, bits, **options)


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
    if header.get("backend") == "milvus":
        from indexes.milvus_index import MilvusIndex

        return MilvusIndex.from_header(header, path, bits=bits, **overrides)
    from indexes.faiss_index import KINDS

    cls = KINDS.get(str(header["kind"]))
    if cls is None or header.get("backend") != "faiss":
        raise IndexFileError(f"index file {path!r} holds an unknown index kind {header['kind']!r}")
    header, sections = read_index_file(path, bits)
    header["options"] = {**header.get("options", {}), **overrides}
    return cls.from_file(header, sections, path)
