"""FAISS binary index backends: flat (exact), ivf, hnsw, hash / multihash.

Spec strings (a compact name like FAISS's own factory strings):

=================  ==============================================  ==========================
spec               FAISS index                                     notes
=================  ==============================================  ==========================
``flat``           ``IndexBinaryFlat``, codes in id order          exact; the default
``flat:gpu``       same, searched on a GPU clone                   needs faiss-gpu and a GPU
``ivf[:NLIST]``    ``IndexBinaryIVF`` + hashtable direct map       approximate (``nprobe``)
``hnsw[:M]``       ``IndexBinaryHNSW``                             approximate; no remove
``hash[:B]``       ``IndexBinaryMultiHash`` with 1 table of B bits  exact; no remove
``multihash[:NxB]`` ``IndexBinaryMultiHash`` with N tables          exact; no remove
=================  ==============================================  ==========================

Multi-index hashing (Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index
hashing", CVPR 2012): the code is cut into N substrings, each indexed by a hash table. If
``d(q, x) <= r`` then by the pigeonhole principle some substring is within ``floor(r / N)``
bits, so probing every table with all keys within ``nflip = floor(r / N)`` bit flips and
checking the full distance finds *every* code within ``r`` -- the range search is exact. Top-k
search on the hash backends scans the codes kept in the index's flat storage (exact), with the
same ``indexes.hamming_scan`` kernel as ``flat``.

HNSW and the hash indexes number codes by position; the caller's ids live in a side map
(``pos_to_id``) that is saved with the index.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import faiss
import numpy as np

from indexes import chunked_codes, hamming_scan, sorted_ids
from indexes.base import BinaryIndex, check_k, sort_rows
from indexes.chunked_codes import ChunkedCodes, Segment
from indexes.idset import check_codes, check_ids, sorted_unique
from indexes.registry import register_backend
from indexes.spec import IndexSpec
from indexes.storage import npy_bytes, npy_load, read_index_file, write_index_file

ALL_OPS = frozenset({"add", "remove", "replace", "search", "range_search", "get", "save"})


def set_threads(threads: int | None) -> None:
    """Set the number of OpenMP threads FAISS uses (process-wide). ``None`` leaves it alone."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
        raise ValueError(f"threads={threads!r} is not valid: expected a positive integer")
    faiss.omp_set_num_threads(threads)


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}={value!r} is not valid: expected a positive integer")
    return int(value)


def stored_codes(index: Any, code_size: int) -> np.ndarray:
    """A view (ntotal x code_size) of an ``IndexBinaryFlat``'s codes, no copy; valid until the
    index is next written to."""
    n = index.ntotal
    if n == 0:
        return np.empty((0, code_size), dtype=np.uint8)
    return faiss.rev_swig_ptr(index.xb.data(), n * code_size).reshape(n, code_size)


def _deserialize(data: bytes, path: str, bits: int) -> Any:
    """The FAISS binary index in a file's ``faiss`` section; ``IndexFileError`` if unreadable."""
    from indexes.errors import IndexFileError

    try:
        index = faiss.deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise IndexFileError(
            f"the FAISS section of index file {path!r} cannot be read: {exc}"
        ) from None
    if index.d != bits:
        raise IndexFileError(
            f"index file {path!r} says {bits} bits but its FAISS index has {index.d}"
        )
    return index


class FaissIndex(BinaryIndex):
    """Common part of the FAISS backends: a FAISS binary index plus persistence."""

    backend: ClassVar[str] = "faiss"

    def __init__(self, bits: int, spec: str) -> None:
        super().__init__(bits, spec)
        self._index: Any = None

    # -- persistence ------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The resolved construction options (saved in the file header)."""
        return {}

    def _stored_ids(self) -> np.ndarray | None:
        """The ids as the FAISS index (or side map) stores them; None if it does not (IVF)."""
        return None

    def _sections(self) -> dict[str, bytes]:
        sections = {}
        if self._index is not None:
            sections["faiss"] = faiss.serialize_index_binary(self._index).tobytes()
        if self._stored_ids() is None:  # otherwise derived on load: no second copy in the file
            sections["ids"] = npy_bytes(self._ids.array)
        return sections

    def _raw_save(self, path: str | os.PathLike[str]) -> None:
        header = {
            "backend": self.backend,
            "kind": self.kind,
            "spec": self.spec,
            "bits": self.bits,
            "count": len(self),
            "options": self.options(),
            "metadata": self.metadata,
            "faiss_version": faiss.__version__,
        }
        write_index_file(path, header, self._sections())

    def _restore(self, sections: dict[str, bytes], path: str) -> None:
        from indexes.errors import IndexFileError

        if "faiss" in sections:
            self._index = _deserialize(sections["faiss"], path, self.bits)
        if "ids" in sections:
            ids = npy_load(sections["ids"], "ids", path)
        else:
            ids = self._stored_ids() if self._index is not None else None
            if ids is None:
                raise IndexFileError(f"index file {path!r} lacks its ids section")
        if ids.dtype != np.int64 or ids.ndim != 1 or len(sorted_unique(ids)) != len(ids):
            raise IndexFileError(f"the ids of index file {path!r} are not distinct int64 values")
        self._ids.__init__(ids)
        if self._index is not None:
            if self._index.ntotal != len(self._ids):
                raise IndexFileError(
                    f"index file {path!r} is inconsistent: {self._index.ntotal} codes but {len(self._ids)} ids"
                )
        elif len(self._ids):
            raise IndexFileError(f"index file {path!r} lists ids but has no FAISS section")

    @classmethod
    def load(cls, path: str, bits: int | None = None, **overrides: Any) -> FaissIndex:
        header, sections = read_index_file(path, bits)
        header["options"] = {**header.get("options", {}), **overrides}
        return cls.from_file(header, sections, path)

    @classmethod
    def from_file(cls, header: dict[str, Any], sections: dict[str, bytes], path: str) -> FaissIndex:
        try:
            obj = cls(int(header["bits"]), str(header["spec"]), **header.get("options", {}))
        except TypeError as exc:  # an override this kind does not take
            raise ValueError(f"option not valid for a {cls.kind} index: {exc}") from None
        obj.metadata = dict(header.get("metadata", {}))
        obj._restore(sections, path)
        obj._after_load()
        return obj

    def _after_load(self) -> None:
        pass


class _StoredIds:
    """``BinaryIndex``'s id set for ``FlatIndex``: the storage itself answers membership.

    ``FlatIndex`` updates its storage in ``_raw_add`` / ``_raw_remove``; the id set's own
    ``add`` / ``discard`` (called by ``BinaryIndex`` right after) have nothing left to do.
    """

    def __init__(self, owner: FlatIndex) -> None:
        self._owner = owner

    def __len__(self) -> int:
        return len(self._owner._store)

    @property
    def array(self) -> np.ndarray:
        return self._owner._store.all_ids()

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self._owner._store.contains(ids)

    def add(self, ids: np.ndarray) -> None:
        pass

    def discard(self, ids: np.ndarray) -> None:
        pass


@register_backend("flat", syntax="flat[:gpu]")
class FlatIndex(FaissIndex):
    """Exact search over codes kept in ascending-id order, with O(batch) writes.

    The codes live in ``indexes.chunked_codes.ChunkedCodes``: fixed-size chunks filled in id
    order, a tombstone flag per code, and a small delta segment for ids that arrive out of
    order. An add of ids above every stored id (the service's own ids, a bulk load in id
    order) is written in place; a delete clears a flag; neither copies the collection. When
    the delta or the tombstones outgrow a quarter of the codes, a compacted storage is built
    *while searches go on* (``_maintain``, under the writer mutex only) and swapped in under
    the exclusive lock -- O(n) once per O(n) writes, O(1) amortised.

    Memory: the codes, plus one int64 id per code only in chunks whose ids have gaps and one
    flag byte per code only in chunks that had a delete; the last chunk's unfilled part is
    never touched, so the OS does not commit it.

    Top-k search runs ``indexes.hamming_scan.knn_scan`` over each segment in place (blocked,
    vectorised, exact; tombstones skipped) and merges the segments' lists by (distance, id):
    the exact top-k in (distance, id) order with no tie-completion step (docs/bench-indexes.md).
    The chunks are scanned in parallel by the index's threads (FAISS's OpenMP setting,
    ``indexes.set_threads``). Without numba it falls back to FAISS's scan of a flat copy.

    ``gpu=True`` searches a GPU clone of the codes (``faiss.index_binary_cpu_to_gpu``),
    rebuilt after writes; it needs faiss-gpu and ``faiss.get_num_gpus() > 0`` -- without a GPU
    it raises at construction and never builds a GPU index (that would abort the process).
    """

    kind = "flat"
    supports = ALL_OPS
    GPU_MAX_K = 2048

    def __init__(self, bits: int, spec: str = "flat", gpu: bool = False) -> None:
        super().__init__(bits, spec)
        self.gpu = bool(gpu)
        if self.gpu:
            ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            if ngpu <= 0 or not hasattr(faiss, "index_binary_cpu_to_gpu"):
                raise ValueError(
                    "gpu=True needs faiss-gpu and a visible CUDA GPU, but faiss sees none "
                    "(install the 'gpu' extra on a GPU machine, or use spec 'flat')"
                )
        self.ranks_ties = hamming_scan.AVAILABLE and not self.gpu
        self._store = ChunkedCodes(self.code_size, chunk_size=chunked_codes.CHUNK_SIZE)
        self._ids = _StoredIds(self)  # type: ignore[assignment]
        self._flat_copy: Any = None  # an IndexBinaryFlat of the live codes (GPU, no numba)
        self._flat_ids: np.ndarray | None = None
        self._gpu_index: Any = None
        self._flat_mutex = threading.Lock()

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> FlatIndex:
        arg = (spec.arg or "").lower()
        if arg not in ("", "gpu"):
            raise spec.invalid("flat or flat:gpu")
        return cls(bits, spec.text, gpu=options.pop("gpu", False) or arg == "gpu", **options)

    def options(self) -> dict[str, Any]:
        return {}  # gpu is a property of the machine: pass gpu=True to load_index to use one

    def warm_up(self) -> None:
        """Compile (or load from numba's disk cache) the scan kernels for this code length."""
        if hamming_scan.AVAILABLE:
            hamming_scan.warm_up(self.code_size)
            sorted_ids.warm_up()

    # -- writes: O(batch) under the exclusive lock ------------------------------------------------
    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        self._store.add(ids, codes)
        self._invalidate_copies()

    def _raw_remove(self, ids: np.ndarray) -> None:
        self._store.remove(ids)
        self._invalidate_copies()

    def _invalidate_copies(self) -> None:
        self._flat_copy = self._flat_ids = self._gpu_index = None

    def _maintain(self) -> None:
        """Compact when the delta or the tombstones have grown (see ``ChunkedCodes``): built
        under the writer mutex only (searches go on), swapped in under the exclusive lock."""
        if not self._store.needs_compaction():
            return
        fresh = self._store.compacted()
        with self._lock.write():
            self._store = fresh
            self._invalidate_copies()

    # -- reads -------------------------------------------------------------------------------------
    def _flat(self) -> tuple[Any, np.ndarray]:
        """An ``IndexBinaryFlat`` of the live codes in id order, and its ids (cached until the
        next write; used for the GPU and where numba is missing)."""
        with self._flat_mutex:
            if self._flat_copy is None:
                ids, codes = self._store.live_arrays()
                index = faiss.IndexBinaryFlat(self.bits)
                if len(ids):
                    index.add(codes)
                self._flat_copy, self._flat_ids = index, ids
            return self._flat_copy, self._flat_ids

    def _gpu_search(
        self, codes: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        flat, ids = self._flat()
        with self._flat_mutex:
            if self._gpu_index is None:
                res = faiss.StandardGpuResources()
                self._gpu_index = (res, faiss.index_binary_cpu_to_gpu(res, 0, flat))
            gpu_index = self._gpu_index[1]
        dist, pos = gpu_index.search(codes, k)
        return dist, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.gpu and k <= self.GPU_MAX_K:  # pragma: no cover - needs a GPU
            return self._gpu_search(codes, k)
        if not hamming_scan.AVAILABLE:  # pragma: no cover - numba is a core dependency
            flat, ids = self._flat()
            dist, pos = flat.search(codes, k)
            return dist, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)
        return scan_segments(self._store.segments(), codes, k, faiss.omp_get_max_threads())

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(codes))]
        for seg in self._store.segments():
            dist = hamming_scan.distances(seg.codes, codes)
            for q in range(len(codes)):
                hit = dist[q] <= radius
                if seg.alive is not None:
                    hit &= seg.alive == 1
                sel = np.flatnonzero(hit)
                parts[q].append((dist[q, sel].astype(np.int32), seg.ids_at(sel)))
        lims = np.zeros(len(codes) + 1, dtype=np.int64)
        dists, ids = [], []
        for q, found in enumerate(parts):
            d = np.concatenate([f[0] for f in found]) if found else np.empty(0, np.int32)
            i = np.concatenate([f[1] for f in found]) if found else np.empty(0, np.int64)
            dists.append(d)
            ids.append(i)
            lims[q + 1] = lims[q] + len(i)
        return lims, np.concatenate(dists), np.concatenate(ids)

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        _, codes = self._store.get(ids)  # BinaryIndex checked that every id is stored
        return codes

    def get_known(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) of those of ``ids`` that are stored, in the given order (one read)."""
        self._require("get")
        ids = check_ids(ids)
        with self._lock.read():
            return self._store.get(ids)

    #: A subset larger than this fraction of the codes is scanned in place with a mask;
    #: a smaller one is gathered first.
    SUBSET_MASK_FRACTION = 1 / 16

    def search_subset(self, codes: Any, ids: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest among the stored codes whose ids are in ``ids`` (ascending, distinct;
        absent ones ignored), as ``search`` orders them: (distance, id), -1 padding.

        A small subset's codes are gathered and scanned; a large one (e.g. a filter matching a
        tenth of the collection) is scanned in place with a flag per code, so the cost is
        O(min(m, n)) either way and never a Python object per id.
        """
        codes = check_codes(codes, self.code_size)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        k = check_k(k)
        threads = faiss.omp_get_max_threads()
        with self._lock.read():
            if not hamming_scan.AVAILABLE:  # pragma: no cover - numba is a core dependency
                found, db = self._store.get(ids)
                segments = [Segment(db, found, 0, None)]
            elif len(ids) > self.SUBSET_MASK_FRACTION * max(len(self._store), 1):
                segments = self._store.masked_segments(ids)
            else:
                found, db = self._store.get(ids)
                segments = [Segment(db, found, 0, None)] if len(found) else []
            return scan_segments(segments, codes, k, threads)

    # -- persistence ----------------------------------------------------------------------------
    def _sections(self) -> dict[str, bytes]:
        ids, codes = self._store.live_arrays()
        return {"ids": npy_bytes(ids), "codes": npy_bytes(codes)}

    def _restore(self, sections: dict[str, bytes], path: str) -> None:
        """Format 3: the live ``codes`` and their ascending ``ids`` as two npy sections.

        Older files are converted on load: format 2 (an ``IndexBinaryFlat`` in ascending-id
        order + ``ids``) and format 1 (an ``IndexBinaryIDMap2`` holding its ids).
        """
        from indexes.errors import IndexFileError

        if "codes" in sections:
            if "ids" not in sections:
                raise IndexFileError(f"index file {path!r} lacks its ids section")
            ids = npy_load(sections["ids"], "ids", path)
            codes = npy_load(sections["codes"], "codes", path)
            if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.code_size:
                raise IndexFileError(
                    f"the codes of index file {path!r} are not uint8 n x {self.code_size}"
                )
        elif "faiss" in sections:
            ids, codes = self._restore_faiss(sections, path)
        else:
            raise IndexFileError(f"index file {path!r} lacks the codes of a flat index")
        if ids.dtype != np.int64 or ids.ndim != 1 or not bool(np.all(ids[1:] > ids[:-1])):
            raise IndexFileError(
                f"the ids of index file {path!r} are not distinct ascending int64 values"
            )
        if len(codes) != len(ids):
            raise IndexFileError(
                f"index file {path!r} is inconsistent: {len(codes)} codes but {len(ids)} ids"
            )
        if len(ids) and ids[0] < 0:
            raise IndexFileError(f"index file {path!r} holds negative ids")
        self._store = ChunkedCodes.from_sorted(
            ids, codes, self.code_size, chunk_size=chunked_codes.CHUNK_SIZE
        )
        self._invalidate_copies()

    def _restore_faiss(
        self, sections: dict[str, bytes], path: str
    ) -> tuple[np.ndarray, np.ndarray]:
        from indexes.errors import IndexFileError

        index = _deserialize(sections["faiss"], path, self.bits)
        if isinstance(index, faiss.IndexBinaryIDMap):  # format 1 (IDMap2 is a subclass)
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            inner = faiss.downcast_IndexBinary(index.index)
            if not isinstance(inner, faiss.IndexBinaryFlat) or inner.ntotal != len(ids):
                raise IndexFileError(f"index file {path!r} holds a flat index of an unknown layout")
            order = np.argsort(ids, kind="stable")
            codes = faiss.vector_to_array(inner.xb).reshape(-1, self.code_size)[order]
            return ids[order], codes
        if isinstance(index, faiss.IndexBinaryFlat):
            if "ids" not in sections:
                raise IndexFileError(f"index file {path!r} lacks its ids section")
            codes = stored_codes(index, self.code_size).copy()
            return npy_load(sections["ids"], "ids", path), codes
        raise IndexFileError(
            f"index file {path!r} holds a {type(index).__name__}, not a flat index"
        )


def scan_segments(
    segments: list[Segment], codes: np.ndarray, k: int, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over several segments (ids ascending within each): each segment is scanned
    by ``hamming_scan.knn_scan`` (in parallel over ``threads``), the lists merged by (distance,
    id). Returns (distances, ids) of shape nq x k, -1 where fewer than k codes are live."""
    nq = codes.shape[0]
    if not segments:
        return np.full((nq, k), -1, np.int32), np.full((nq, k), -1, np.int64)

    def one(seg: Segment) -> tuple[np.ndarray, np.ndarray]:
        # one segment per task: a single query still uses every thread when there are chunks
        inner = 1 if len(segments) > 1 else threads
        dist, pos = hamming_scan.knn_scan(seg.codes, codes, k, threads=inner, alive=seg.alive)
        return dist, seg.ids_at(pos)

    if len(segments) == 1:
        return one(segments[0])
    workers = max(1, min(threads, len(segments)))
    if workers == 1:
        found = [one(s) for s in segments]
    else:
        with ThreadPoolExecutor(workers) as pool:
            found = list(pool.map(one, segments))
    return sort_rows(
        np.concatenate([f[0] for f in found], axis=1),
        np.concatenate([f[1] for f in found], axis=1),
        k,
    )


@register_backend("ivf", syntax="ivf[:NLIST]")
class IVFIndex(FaissIndex):
    """Inverted file over k-means centroids (``IndexBinaryIVF``), approximate.

    Trained on the first codes added (or by an explicit ``train``); ``nlist`` defaults to
    ``min(4 sqrt(n), n / 39)`` of the training set. ``nprobe`` lists are visited per query
    (default 16; ``nprobe >= nlist`` makes search exact). A hashtable direct map gives ``get``
    and ``remove`` by id.
    """

    kind = "ivf"
    supports = ALL_OPS | {"train"}
    exact = False
    exact_range = False

    def __init__(
        self, bits: int, spec: str = "ivf", nlist: int | None = None, nprobe: int = 16
    ) -> None:
        super().__init__(bits, spec)
        self.nlist = None if nlist is None else _positive("nlist", nlist)
        self.nprobe = _positive("nprobe", nprobe)

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> IVFIndex:
        nlist = spec.int_arg("ivf or ivf:NLIST (NLIST a positive integer)")
        if nlist is not None:
            options.setdefault("nlist", nlist)
        return cls(bits, spec.text, **options)

    def options(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}

    @property
    def is_trained(self) -> bool:
        return self._index is not None and self._index.is_trained

    def _raw_train(self, codes: np.ndarray) -> None:
        from indexes.errors import UnsupportedOperation

        if self._index is not None and self._index.ntotal > 0:
            raise UnsupportedOperation(
                "the ivf index already holds codes: it cannot be trained again"
            )
        n = codes.shape[0]
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        if n < nlist:
            raise ValueError(f"training the ivf index needs at least nlist={nlist} codes, got {n}")
        index = faiss.index_binary_factory(self.bits, f"BIVF{nlist}")
        index.train(codes)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = self.nprobe
        self._index, self.nlist = index, nlist

    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        self._index.add_with_ids(codes, ids)

    def _raw_remove(self, ids: np.ndarray) -> None:
        # The hashtable direct map only accepts an IDSelectorArray.
        sel = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
        self._index.remove_ids(sel)

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(codes, k)

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._index.range_search(codes, radius + 1)

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self._index.reconstruct(int(i)) for i in ids]).astype(np.uint8)

    def _after_load(self) -> None:
        if self._index is not None:
            self._index.nprobe = self.nprobe


class _PositionalIndex(FaissIndex):
    """A FAISS index that numbers codes 0..n-1; the caller's ids live in ``pos_to_id``."""

    def __init__(self, bits: int, spec: str) -> None:
        super().__init__(bits, spec)
        self._pos_to_id = np.empty(0, dtype=np.int64)
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, positions)
        self._lookup_mutex = threading.Lock()

    def _map_positions(self, pos: np.ndarray) -> np.ndarray:
        return np.where(pos >= 0, self._pos_to_id[np.maximum(pos, 0)], -1)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        with self._lookup_mutex:  # built lazily by the first reader after a write
            if self._lookup is None:
                order = np.argsort(self._pos_to_id, kind="stable")
                self._lookup = (self._pos_to_id[order], order)
            sorted_ids, order = self._lookup
        return order[np.searchsorted(sorted_ids, ids)]

    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        self._index.add(codes)
        self._pos_to_id = np.concatenate([self._pos_to_id, ids])
        self._lookup = None

    def _storage(self) -> Any:
        raise NotImplementedError

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        storage = self._storage()
        return np.stack([storage.reconstruct(int(p)) for p in self._positions(ids)]).astype(
            np.uint8
        )

    def _sections(self) -> dict[str, bytes]:
        sections = super()._sections()
        sections["pos_to_id"] = npy_bytes(self._pos_to_id)
        return sections

    def _stored_ids(self) -> np.ndarray | None:
        return self._pos_to_id

    def _restore(self, sections: dict[str, bytes], path: str) -> None:
        from indexes.errors import IndexFileError

        if "pos_to_id" not in sections:
            raise IndexFileError(
                f"index file {path!r} lacks the side id map of a {self.kind} index"
            )
        pos_to_id = npy_load(sections["pos_to_id"], "pos_to_id", path)
        if pos_to_id.dtype != np.int64 or pos_to_id.ndim != 1:
            raise IndexFileError(f"the side id map of index file {path!r} is not a 1-d int64 array")
        self._pos_to_id = pos_to_id
        super()._restore(sections, path)  # checks len(pos_to_id) == ntotal and distinct ids


@register_backend("hnsw", syntax="hnsw[:M]")
class HNSWIndex(_PositionalIndex):
    """Hierarchical navigable small-world graph (Malkov & Yashunin, TPAMI 2018), approximate.

    ``M`` neighbours per node (spec ``hnsw:M``, default 32), ``ef_search`` candidates per query
    (default 64; at least the number fetched), ``ef_construction`` at build (default 40).
    FAISS's binary HNSW has neither remove nor range search: both are refused.
    """

    kind = "hnsw"
    supports = frozenset({"add", "search", "get", "save"})
    exact = False

    def __init__(
        self,
        bits: int,
        spec: str = "hnsw",
        m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 40,
    ) -> None:
        super().__init__(bits, spec)
        self.m = _positive("M", m)
        self.ef_search = _positive("ef_search", ef_search)
        self.ef_construction = _positive("ef_construction", ef_construction)
        self._index = faiss.IndexBinaryHNSW(self.bits, self.m)
        self._index.hnsw.efConstruction = self.ef_construction
        self._index.hnsw.efSearch = self.ef_search

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> HNSWIndex:
        m = spec.int_arg("hnsw or hnsw:M (M a positive integer)")
        if m is not None:
            options.setdefault("m", m)
        return cls(bits, spec.text, **options)

    def options(self) -> dict[str, Any]:
        return {"m": self.m, "ef_search": self.ef_search, "ef_construction": self.ef_construction}

    def _storage(self) -> Any:
        return self._index

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, pos = self._index.search(codes, k)
        return dist, self._map_positions(pos)

    def _after_load(self) -> None:
        self._index.hnsw.efSearch = self.ef_search


@register_backend("multihash", syntax="multihash[:NxB]")
@register_backend("hash", syntax="hash[:B]")
class HashIndex(_PositionalIndex):
    """Multi-index hashing (``IndexBinaryMultiHash``): exact small-radius lookup.

    ``nhash`` tables, each keyed by ``b`` consecutive bits of the code. Range search with
    radius r probes keys within ``floor(r / nhash)`` flips of each query substring (exact by
    the pigeonhole principle, see the module docstring); top-k search scans the flat storage
    (exact). When a radius needs more than ``MAX_PROBES`` lookups per query the range search
    scans the flat storage instead (same exact result). No remove (FAISS's hash indexes
    cannot delete). Range searches of one index are
    serialised (they set FAISS's ``nflip``), other searches run in parallel.
    """

    kind = "multihash"
    supports = frozenset({"add", "search", "range_search", "get", "save"})

    def __init__(
        self, bits: int, spec: str = "multihash", nhash: int | None = None, b: int | None = None
    ) -> None:
        super().__init__(bits, spec)
        if nhash is None:
            nhash = 1 if spec.split(":")[0] == "hash" else min(4, self.bits // 8)
        self.nhash = _positive("nhash", nhash)
        self.b = _positive(
            "b", b if b is not None else min(self.bits // self.nhash, 32 if self.nhash > 1 else 16)
        )
        if self.nhash * self.b > self.bits or self.b > 64:
            raise ValueError(
                f"hash tables {self.nhash}x{self.b} do not fit {self.bits}-bit codes: "
                f"expected nhash * b <= {self.bits} and b <= 64"
            )
        self._index = faiss.IndexBinaryMultiHash(self.bits, self.nhash, self.b)
        self._nflip_mutex = threading.Lock()

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> HashIndex:
        """``hash[:B]``: one table of B bits; ``multihash[:NxB]``: N tables of B bits."""
        if spec.name == "hash":
            b = spec.int_arg("hash or hash:B (B a positive integer)")
            if b is not None:
                options.setdefault("b", b)
            return cls(bits, spec.text, nhash=options.pop("nhash", 1), **options)
        if spec.arg:
            n, _, b = spec.arg.lower().partition("x")
            try:
                options.setdefault("nhash", int(n))
                options.setdefault("b", int(b))
            except ValueError:
                raise spec.invalid("multihash or multihash:NxB (N, B positive integers)") from None
        return cls(bits, spec.text, **options)

    def warm_up(self) -> None:
        """Compile (or load from numba's disk cache) the top-k scan kernel."""
        hamming_scan.warm_up(self.code_size)

    def options(self) -> dict[str, Any]:
        return {"nhash": self.nhash, "b": self.b}

    def _storage(self) -> Any:
        return self._index.storage

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not hamming_scan.AVAILABLE:  # pragma: no cover - numba is a core dependency
            dist, pos = self._index.storage.search(codes, k)
            return dist, self._map_positions(pos)
        stored = stored_codes(faiss.downcast_IndexBinary(self._storage()), self.code_size)
        # exact top-k by (distance, position); ``search`` re-sorts by id and completes ties
        dist, pos = hamming_scan.knn_scan(stored, codes, k, threads=faiss.omp_get_max_threads())
        return dist, self._map_positions(pos)

    #: Above this many hash-table probes per query, a flat scan of the storage is cheaper.
    MAX_PROBES = 4096

    def probes(self, radius: int) -> int:
        """Hash-table lookups per query for an exact range search with ``radius``."""
        nflip = radius // self.nhash
        return self.nhash * sum(math.comb(self.b, h) for h in range(min(nflip, self.b) + 1))

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if radius // self.nhash >= self.b or self.probes(radius) > self.MAX_PROBES:
            return self._raw_tie_range_search(codes, radius)
        with self._nflip_mutex:
            self._index.nflip = radius // self.nhash
            lims, dist, pos = self._index.range_search(codes, radius + 1)
        return lims, dist, self._map_positions(pos)

    def _raw_tie_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lims, dist, pos = self._index.storage.range_search(codes, radius + 1)
        return lims, dist, self._map_positions(pos)
