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
from typing import Any, ClassVar

import faiss
import numpy as np

from indexes import hamming_scan
from indexes.base import BinaryIndex
from indexes.idset import sorted_unique
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


@register_backend("flat", syntax="flat[:gpu]")
class FlatIndex(FaissIndex):
    """Exact search: an ``IndexBinaryFlat`` whose codes are kept in ascending-id order.

    Memory is the codes plus one int64 per code: position ``p`` of the FAISS storage holds the
    code of the ``p``-th smallest id, so the sorted id array that ``BinaryIndex`` keeps for its
    duplicate/unknown-id checks is also the position -> id map, and id -> position is a binary
    search in it (``np.searchsorted``). No id hash map (FAISS's ``IndexBinaryIDMap2`` adds
    ~40 bytes per code for one) and no second id array. ``add`` into a non-empty index
    rebuilds the storage at its exact new size with the new codes merged in (O(n), like the
    sorted id array); ``remove`` compacts it in place (FAISS ``remove_ids`` keeps the order).

    This relies on ``BinaryIndex`` calling ``_raw_add`` / ``_raw_remove`` *before* it updates
    its id set, so that ``self._ids`` still describes the current storage.

    Top-k search runs ``indexes.hamming_scan.knn_scan`` over FAISS's code storage (read in
    place): a blocked, vectorised exact scan that returns the top-k in (distance, position) =
    (distance, id) order directly, several times faster than ``IndexBinaryFlat.search``
    (docs/bench-indexes.md). Without numba it falls back to FAISS's scan. Range search uses
    FAISS's.

    ``gpu=True`` searches a GPU clone of the flat codes (``faiss.index_binary_cpu_to_gpu``),
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
        self._index = faiss.IndexBinaryFlat(self.bits)
        self.ranks_ties = hamming_scan.AVAILABLE and not self.gpu
        self._gpu_index: Any = None
        self._gpu_ids: np.ndarray | None = None
        self._gpu_mutex = threading.Lock()

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> FlatIndex:
        arg = (spec.arg or "").lower()
        if arg not in ("", "gpu"):
            raise spec.invalid("flat or flat:gpu")
        return cls(bits, spec.text, gpu=options.pop("gpu", False) or arg == "gpu", **options)

    def options(self) -> dict[str, Any]:
        return {}  # gpu is a property of the machine: pass gpu=True to load_index to use one

    def warm_up(self) -> None:
        """Compile (or load from numba's disk cache) the scan kernel for this code length."""
        if self.ranks_ties:
            hamming_scan.warm_up(self.code_size)

    # -- storage in ascending-id order ----------------------------------------------------------
    def _codes(self) -> np.ndarray:
        """A view (ntotal x code_size) of FAISS's code storage; valid until the next write."""
        return stored_codes(self._index, self.code_size)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Storage positions of ``ids`` (all present: ``BinaryIndex`` checked them)."""
        return np.searchsorted(self._ids.array, ids)

    def _to_ids(self, pos: np.ndarray) -> np.ndarray:
        ids = self._ids.array
        return np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)

    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids, codes = ids[order], codes[order]
        old = self._ids.array  # none of ``ids`` is in it (checked or removed by BinaryIndex)
        if len(old) == 0:
            self._index.add(codes)
        else:
            # A fresh storage of the exact size: appending to FAISS's vector would let it
            # double its capacity (libstdc++ growth), up to 2x the codes' memory.
            if ids[0] > old[-1]:
                merged = np.concatenate([self._codes(), codes])
            else:
                merged = np.insert(self._codes(), np.searchsorted(old, ids), codes, axis=0)
            index = faiss.IndexBinaryFlat(self.bits)
            index.add(merged)
            del merged
            self._index = index
        self._gpu_index = None

    def _raw_remove(self, ids: np.ndarray) -> None:
        pos = self._positions(ids)
        removed = self._index.remove_ids(pos)  # an IDSelectorBatch of positions; order kept
        if removed != len(ids):  # pragma: no cover - guarded by BinaryIndex's id checks
            raise RuntimeError(f"FAISS removed {removed} codes, expected {len(ids)}")
        self._gpu_index = None

    def _gpu_search(
        self, codes: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        with self._gpu_mutex:
            if self._gpu_index is None:
                res = faiss.StandardGpuResources()
                self._gpu_index = (res, faiss.index_binary_cpu_to_gpu(res, 0, self._index))
                self._gpu_ids = self._ids.array.copy()
            gpu_index, ids = self._gpu_index[1], self._gpu_ids
        dist, pos = gpu_index.search(codes, k)
        return dist, np.where(pos >= 0, ids[np.maximum(pos, 0)], -1)

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.gpu and k <= self.GPU_MAX_K:  # pragma: no cover - needs a GPU
            return self._gpu_search(codes, k)
        if self.ranks_ties:
            dist, pos = hamming_scan.knn_scan(
                self._codes(), codes, k, threads=faiss.omp_get_max_threads()
            )
        else:
            dist, pos = self._index.search(codes, k)
        return dist, self._to_ids(pos)

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # FAISS is strict (d < radius + 1); its positions are mapped to ids
        lims, dist, pos = self._index.range_search(codes, radius + 1)
        return lims, dist, self._ids.array[pos]

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        return self._codes()[self._positions(ids)]  # fancy indexing: a copy

    # -- persistence ----------------------------------------------------------------------------
    def _restore(self, sections: dict[str, bytes], path: str) -> None:
        """Format 2: ``IndexBinaryFlat`` in ascending-id order + the sorted ``ids`` section.

        Format 1 (hashkd before the memory rework): an ``IndexBinaryIDMap2`` holding its ids;
        it is converted on load (codes re-ordered by id). Save writes format 2.
        """
        from indexes.errors import IndexFileError

        if "faiss" not in sections:
            raise IndexFileError(f"index file {path!r} lacks the FAISS section of a flat index")
        index = _deserialize(sections["faiss"], path, self.bits)
        if isinstance(index, faiss.IndexBinaryIDMap):  # format 1 (IDMap2 is a subclass)
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            inner = faiss.downcast_IndexBinary(index.index)
            if not isinstance(inner, faiss.IndexBinaryFlat) or inner.ntotal != len(ids):
                raise IndexFileError(f"index file {path!r} holds a flat index of an unknown layout")
            order = np.argsort(ids, kind="stable")
            # copy the codes out while ``index`` (their owner) is alive
            codes = faiss.vector_to_array(inner.xb).reshape(-1, self.code_size)[order]
            del inner
            ids = ids[order]
            index = faiss.IndexBinaryFlat(self.bits)
            index.add(codes)
            del codes
        elif isinstance(index, faiss.IndexBinaryFlat):
            if "ids" not in sections:
                raise IndexFileError(f"index file {path!r} lacks its ids section")
            ids = npy_load(sections["ids"], "ids", path)
        else:
            raise IndexFileError(
                f"index file {path!r} holds a {type(index).__name__}, not a flat index"
            )
        if ids.dtype != np.int64 or ids.ndim != 1 or not bool(np.all(ids[1:] > ids[:-1])):
            raise IndexFileError(
                f"the ids of index file {path!r} are not distinct ascending int64 values"
            )
        if index.ntotal != len(ids):
            raise IndexFileError(
                f"index file {path!r} is inconsistent: {index.ntotal} codes but {len(ids)} ids"
            )
        self._index = index
        self._ids.__init__(ids)


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
