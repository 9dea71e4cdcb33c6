"""The one interface every binary index backend implements (docs/CONTRACTS.md, ``indexes``).

``BinaryIndex`` does the parts common to all backends -- argument checks, the caller's ids
(duplicates, unknown ids), the readers-writer lock, deterministic ordering of results -- and
calls a handful of ``_raw_*`` methods that a backend implements.

Result order: nearest first, ties broken by ascending id. Backends return candidates in an
unspecified order, so every result is re-sorted by (distance, id). For the k-th place to be
exact when several codes share the k-th distance, the k-nearest search over-fetches
``k + max(k, 64)`` candidates; on an exact backend, a query whose over-fetched list still ends
on its k-th distance (so the tie group may be cut) is completed by an inclusive range search
at that distance, which returns the whole tie group. Approximate backends re-sort the
over-fetched candidates only.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import numpy as np

from indexes.errors import DuplicateIdError, UnknownIdError, UnsupportedOperation
from indexes.idset import IdSet, check_codes, check_ids
from indexes.rwlock import RWLock
from indexes.spec import IndexSpec

#: Every operation name a backend may list in ``supports``.
OPERATIONS = frozenset(
    {"add", "remove", "replace", "search", "range_search", "get", "train", "save"}
)

RangeResult = list[tuple[np.ndarray, np.ndarray]]


def check_bits(bits: Any) -> int:
    """Return ``bits`` if it is a positive multiple of 8, else raise ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise ValueError(
            f"bits={bits!r} is not valid: expected a positive multiple of 8 (16, 32, 64, 128 ...)"
        )
    return int(bits)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k={k!r} is not valid: expected a positive integer")
    return int(k)


def check_radius(radius: Any, bits: int) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(
            f"radius={radius!r} is not valid: expected an integer >= 0 (Hamming distance in bits)"
        )
    return int(min(radius, bits))


def sort_rows(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, id), keep ``k`` columns and pad missing slots with -1.

    A slot is missing where its id is negative (FAISS's -1).
    """
    nq = dist.shape[0]
    valid = ids >= 0
    d = np.where(valid, dist, np.iinfo(np.int32).max).astype(np.int64)
    i = np.where(valid, ids, np.iinfo(np.int64).max)
    order = np.lexsort((i, d), axis=-1)[:, :k]
    out_d = np.full((nq, k), -1, dtype=np.int32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    width = order.shape[1]
    take_valid = np.take_along_axis(valid, order, axis=1)
    out_d[:, :width] = np.where(take_valid, np.take_along_axis(dist, order, axis=1), -1)
    out_i[:, :width] = np.where(take_valid, np.take_along_axis(ids, order, axis=1), -1)
    return out_d, out_i


def split_range(lims: np.ndarray, dist: np.ndarray, ids: np.ndarray) -> RangeResult:
    """Turn FAISS's (lims, D, I) into one (distances, ids) pair per query, sorted by (d, id)."""
    out: RangeResult = []
    for q in range(len(lims) - 1):
        d = np.asarray(dist[lims[q] : lims[q + 1]], dtype=np.int32)
        i = np.asarray(ids[lims[q] : lims[q + 1]], dtype=np.int64)
        order = np.lexsort((i, d))
        out.append((d[order], i[order]))
    return out


class BinaryIndex:
    """A set of K-bit packed binary codes keyed by the caller's int64 ids (Hamming metric).

    Thread safety: searches, ``get`` and ``save`` take a shared lock and may run in parallel;
    ``add``, ``remove`` and ``train`` take the exclusive lock.

    Subclasses set ``kind``, ``backend``, ``supports``, ``exact`` (top-k results equal brute
    force) and ``exact_range`` (range results equal brute force), implement the ``_raw_*``
    methods and, to be reachable from ``create_index`` / ``load_index``, register themselves
    with ``@indexes.registry.register_backend(name)`` and override ``from_spec`` (when the
    spec takes an argument) and ``load`` (when they can be saved).
    """

    #: Written in saved files; ``load_index`` finds the class registered under this name.
    kind: ClassVar[str] = "abstract"
    #: Written in saved files next to ``kind`` (``faiss``, ``milvus`` ...): a file whose
    #: backend differs from the registered class's is refused as foreign.
    backend: ClassVar[str] = "abstract"
    supports: frozenset[str] = frozenset()
    exact: bool = True
    exact_range: bool = True
    #: ``_raw_search(codes, k)`` itself returns the exact top-k ordered by (distance, id), tie
    #: groups cut by ascending id: ``search`` then needs no over-fetch and no tie completion.
    ranks_ties: bool = False

    def __init__(self, bits: int, spec: str) -> None:
        self.bits = check_bits(bits)
        self.code_size = self.bits // 8
        self.spec = spec
        #: JSON-serialisable user metadata, saved with the index.
        self.metadata: dict[str, Any] = {}
        self._ids = IdSet()
        self._lock = RWLock()
        #: Serialises writers. The exclusive lock is taken inside it only while the backend
        #: changes what readers see; ``_maintain`` runs after it with readers still running.
        self._write_mutex = threading.Lock()

    # -- construction (called by create_index / load_index) -----------------------------------
    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> BinaryIndex:
        """Build an empty index from a parsed spec; the default accepts no ``:ARG``."""
        if spec.arg:
            raise spec.invalid(f"{spec.name} without ':'")
        return cls(bits, spec.text, **options)

    @classmethod
    def load(cls, path: str, bits: int | None = None, **overrides: Any) -> BinaryIndex:
        """Open an index file this backend wrote (``overrides`` replace saved options)."""
        raise UnsupportedOperation(f"the {cls.kind!r} index backend cannot load index files")

    def warm_up(self) -> None:
        """Do the one-off work of the first search now (e.g. compile a kernel); default no-op.

        A server calls it once at start-up so that its first query is not the slow one.
        """

    # -- the backend's part -------------------------------------------------------------------
    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _raw_remove(self, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (distances, ids) of up to ``k`` candidates per query, any order, -1 missing."""
        raise NotImplementedError

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return FAISS-style (lims, distances, ids) with distance <= ``radius`` (inclusive)."""
        raise NotImplementedError

    def _raw_tie_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact inclusive range search used to complete tie groups (default: the range search)."""
        return self._raw_range_search(codes, radius)

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _maintain(self) -> None:
        """Housekeeping after a write, under the writer mutex but *not* the exclusive lock
        (searches keep running): e.g. build a compacted storage and swap it in under a short
        exclusive section. Default: nothing."""

    def _raw_train(self, codes: np.ndarray) -> None:
        raise NotImplementedError

    def _raw_save(self, path: str | os.PathLike[str]) -> None:
        raise NotImplementedError

    # -- public interface -----------------------------------------------------------------------
    def _require(self, operation: str, why: str = "") -> None:
        if operation not in self.supports:
            raise UnsupportedOperation(
                f"the {self.kind!r} index (spec {self.spec!r}) does not support {operation}"
                + (f": {why}" if why else "")
                + f"; it supports {', '.join(sorted(self.supports))}"
            )

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        try:
            value = int(item)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
        with self._lock.read():
            return bool(self._ids.contains(np.array([value], dtype=np.int64))[0])

    def __repr__(self) -> str:
        return f"<{type(self).__name__} spec={self.spec!r} bits={self.bits} count={len(self)}>"

    def ids(self) -> np.ndarray:
        """All ids in the index, ascending (a copy)."""
        with self._lock.read():
            return self._ids.array.copy()

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, codes: Any) -> None:
        """Train the index (IVF: k-means on ``codes``); backends that need no training refuse."""
        self._require("train", "it needs no training")
        codes = check_codes(codes, self.code_size)
        with self._write_mutex, self._lock.write():
            self._raw_train(codes)

    def add(self, ids: Any, codes: Any, *, replace: bool = False) -> None:
        """Add ``codes`` (uint8 n x bits/8) under the caller's ``ids`` (int64, distinct, >= 0).

        An id already in the index raises ``DuplicateIdError`` (nothing is added) unless
        ``replace=True``, which overwrites its code (needs ``remove`` support).
        """
        self._require("add")
        codes = check_codes(codes, self.code_size)
        ids = check_ids(ids, codes.shape[0])
        if not len(ids):
            return
        with self._write_mutex:
            with self._lock.write():
                present = self._ids.contains(ids)
                if present.any():
                    if not replace:
                        raise DuplicateIdError(ids[present])
                    self._require("replace", "overwriting an id needs remove")
                if not self.is_trained:
                    self._raw_train(codes)
                if present.any():
                    self._raw_remove(ids[present])
                    self._ids.discard(ids[present])
                self._raw_add(ids, codes)
                self._ids.add(ids)
            self._maintain()

    def upsert(self, ids: Any, codes: Any) -> None:
        """``add(ids, codes, replace=True)``: insert new ids, overwrite existing ones."""
        self.add(ids, codes, replace=True)

    def remove(self, ids: Any, *, missing_ok: bool = False) -> int:
        """Remove ``ids``; return how many were removed.

        Unknown ids raise ``UnknownIdError`` and nothing is removed, unless ``missing_ok``.
        """
        self._require("remove")
        ids = check_ids(ids)
        with self._write_mutex:
            with self._lock.write():
                present = self._ids.contains(ids)
                if not present.all() and not missing_ok:
                    raise UnknownIdError(ids[~present])
                ids = ids[present]
                if len(ids):
                    self._raw_remove(ids)
                    self._ids.discard(ids)
            self._maintain()
            return int(len(ids))

    def get(self, ids: Any) -> np.ndarray:
        """Codes (uint8 n x bits/8) of ``ids``, in the given order; unknown ids raise."""
        self._require("get")
        ids = check_ids(ids)
        with self._lock.read():
            present = self._ids.contains(ids)
            if not present.all():
                raise UnknownIdError(ids[~present])
            if not len(ids):
                return np.empty((0, self.code_size), dtype=np.uint8)
            return self._raw_get(ids)

    def get_known(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) of those of ``ids`` that are in the index, in the given order; the
        others are skipped (one consistent read, e.g. for an exact scan restricted to ids)."""
        self._require("get")
        ids = check_ids(ids)
        with self._lock.read():
            ids = ids[self._ids.contains(ids)]
            if not len(ids):
                return ids, np.empty((0, self.code_size), dtype=np.uint8)
            return ids, self._raw_get(ids)

    def search(self, codes: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query: (distances int32 nq x k, ids int64 nq x k).

        Rows are nearest first, ties by ascending id; missing slots (fewer than k codes)
        hold id -1 and distance -1.
        """
        self._require("search")
        codes = check_codes(codes, self.code_size)
        k = check_k(k)
        with self._lock.read():
            n = len(self._ids)
            if n == 0 or codes.shape[0] == 0:
                return sort_rows(
                    np.empty((codes.shape[0], 0), np.int32),
                    np.empty((codes.shape[0], 0), np.int64),
                    k,
                )
            if self.ranks_ties:
                dist, ids = self._raw_search(codes, min(n, k))
                return sort_rows(dist, ids, k)  # already in order: pads when the index holds < k
            fetch = min(n, k + max(k, 64))
            dist, ids = self._raw_search(codes, fetch)
            dist, ids = sort_rows(dist, ids, fetch)
            if self.exact and "range_search" in self.supports and fetch < n and fetch > k:
                # A tie group at the k-th distance may go past the fetched list: complete it.
                cut = np.nonzero((ids[:, -1] >= 0) & (dist[:, -1] == dist[:, k - 1]))[0]
                if len(cut):
                    out_d, out_i = dist[:, :k].copy(), ids[:, :k].copy()
                    for q in cut:
                        _, rd, ri = self._raw_tie_range_search(
                            codes[q : q + 1], int(dist[q, k - 1])
                        )
                        d1, i1 = sort_rows(
                            rd[None, :].astype(np.int32), ri[None, :].astype(np.int64), k
                        )
                        out_d[q], out_i[q] = d1[0], i1[0]
                    return out_d, out_i
            return sort_rows(dist[:, :k], ids[:, :k], k)  # pads when the index holds < k

    def range_search(self, codes: Any, radius: int) -> RangeResult:
        """All codes within ``radius`` bits of each query, INCLUSIVE (distance <= radius).

        (FAISS's own range search is strict; the backends pass radius + 1.) Returns one
        (distances int32, ids int64) pair per query, nearest first, ties by ascending id.
        """
        self._require("range_search")
        codes = check_codes(codes, self.code_size)
        radius = check_radius(radius, self.bits)
        with self._lock.read():
            if len(self._ids) == 0:
                empty = (np.empty(0, np.int32), np.empty(0, np.int64))
                return [empty for _ in range(codes.shape[0])]
            lims, dist, ids = self._raw_range_search(codes, radius)
        return split_range(lims, dist, ids)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole index to one file, atomically (temporary file, fsync, rename)."""
        self._require("save")
        with self._lock.read():
            self._raw_save(path)
