"""Exact Hamming k-NN by a blocked, vectorised scan compiled with numba.

FAISS's ``IndexBinaryFlat`` scans one code at a time with a scalar ``popcnt`` and a heap test
per code. This kernel does the same exact search in two vectorisable passes over a block of the
database that stays in the L1/L2 cache while every query of the batch visits it:

1. distances: ``popcount(code XOR query)`` summed over the code's machine words, written to a
   small ``uint16`` buffer (LLVM turns the loop into AVX-512 ``vpopcntq`` / AVX2 code);
2. selection: the minimum of each run of 256 distances is compared with the query's current
   k-th best distance; only a run that beats it (rare once the list is full) is walked and its
   winners inserted into the query's sorted top-k list.

Codes are visited in storage order and a candidate must be *strictly* nearer than the current
k-th best to enter, so the result is the exact top-k ordered by (distance, position): equal
distances keep the earlier position. ``indexes.faiss_index.FlatIndex`` keeps its codes in
ascending-id order, so this is the (distance, id) order its ``search`` promises, with no
tie-group completion step.

The kernels release the GIL: ``knn_scan(..., threads=T)`` splits the queries over T Python
threads, and concurrent searches from several threads run in parallel. numba compiles one
kernel per machine-word layout on first use (about a second) and caches it on disk.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

try:  # numba is a core dependency; without it FlatIndex falls back to FAISS's own scan
    from numba import njit, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba cannot be installed
    AVAILABLE = False
else:
    AVAILABLE = True

BLOCK = 1024  # codes per database block (8 KB of 64-bit codes: L1-resident)
CHUNK = 256  # distances per selection run (measured: 256 beats 16-128)
QUERY_CHUNK = 256  # queries per thread task

_kernels: dict[tuple[int, str], Callable[..., Any]] = {}
_kernels_lock = threading.Lock()


def _jit(func: Callable[..., Any]) -> Callable[..., Any]:
    """``njit`` without the GIL, cached on disk when numba finds a writable cache location."""
    try:
        return njit(nogil=True, cache=True, boundscheck=False)(func)
    except RuntimeError:  # read-only install and no writable user cache: compile per process
        return njit(nogil=True, boundscheck=False)(func)


if AVAILABLE:

    @intrinsic
    def _popcount(typingctx: Any, x: Any) -> Any:
        """``llvm.ctpop`` on an integer of any width, widened to int64."""
        if not isinstance(x, types.Integer):
            return None
        sig = types.int64(x)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            count = builder.ctpop(args[0])
            ll_int64 = context.get_value_type(types.int64)
            if x.bitwidth < 64:
                return builder.zext(count, ll_int64)
            return count

        return sig, codegen

    @_jit
    def _insert(row_d: Any, row_p: Any, count: int, k: int, d: int, p: int) -> int:
        """Insert (d, p) into the sorted (distance, position) list; return the new count."""
        i = count if count < k else k - 1
        while i > 0 and row_d[i - 1] > d:
            row_d[i] = row_d[i - 1]
            row_p[i] = row_p[i - 1]
            i -= 1
        row_d[i] = d
        row_p[i] = p
        return count + 1 if count < k else k

    @_jit
    def _run_min(x: Any) -> int:
        m = x[0]
        for j in range(x.shape[0]):
            v = x[j]
            m = v if v < m else m
        return m


def _make_kernel(words: int) -> Callable[..., Any]:
    """The scan for codes of ``words`` machine words (a compile-time constant per kernel)."""

    @_jit
    def scan(db: Any, queries: Any, k: int, out_d: Any, out_p: Any, alive: Any) -> None:
        n = db.shape[0] // words
        masked = alive.shape[0] > 0
        nq = queries.shape[0] // words
        dist = np.empty(BLOCK, np.uint16)
        columns = np.empty((words, BLOCK), db.dtype)
        count = np.zeros(nq, np.int64)
        worst = np.full(nq, 65535, np.int64)  # accept anything until the list is full
        for b0 in range(0, n, BLOCK):
            m = min(BLOCK, n - b0)
            block = db[b0 * words : (b0 + m) * words]
            if words > 1:  # word-major copy, shared by every query: contiguous loads below
                rows = block.reshape((m, words))
                for w in range(words):
                    col = columns[w]
                    for j in range(m):
                        col[j] = rows[j, w]
            for qi in range(nq):
                q = queries[qi * words : (qi + 1) * words]
                if words == 1:
                    q0 = q[0]
                    for j in range(m):
                        dist[j] = _popcount(block[j] ^ q0)
                else:
                    col = columns[0]
                    q0 = q[0]
                    for j in range(m):
                        dist[j] = _popcount(col[j] ^ q0)
                    for w in range(1, words):
                        col = columns[w]
                        qw = q[w]
                        for j in range(m):
                            dist[j] += _popcount(col[j] ^ qw)
                t = worst[qi]
                for c0 in range(0, m, CHUNK):
                    run = dist[c0 : min(c0 + CHUNK, m)]
                    if _run_min(run) < t:
                        for j in range(run.shape[0]):
                            if run[j] < t and (not masked or alive[b0 + c0 + j]):
                                c = _insert(out_d[qi], out_p[qi], count[qi], k, run[j], b0 + c0 + j)
                                count[qi] = c
                                if c == k:
                                    t = out_d[qi, k - 1]
                worst[qi] = t

    return scan


def _word_dtype(code_size: int) -> np.dtype:
    for size, dtype in ((8, np.uint64), (4, np.uint32), (2, np.uint16)):
        if code_size % size == 0:
            return np.dtype(dtype)
    return np.dtype(np.uint8)


def _kernel(words: int, dtype: np.dtype) -> Callable[..., Any]:
    key = (words, dtype.str)
    with _kernels_lock:
        if key not in _kernels:
            _kernels[key] = _make_kernel(words)
        return _kernels[key]


def knn_scan(
    db: np.ndarray,
    queries: np.ndarray,
    k: int,
    threads: int = 1,
    alive: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest database codes of each query by Hamming distance.

    ``db`` (n x code_size) and ``queries`` (nq x code_size) are packed uint8 codes; ``db`` is
    read in place (no copy). ``alive`` (optional, uint8 or bool of length n) marks the codes
    that may be returned: a 0 is a tombstone, skipped at no cost unless it would have entered
    a top-k list. Returns (distances int32 nq x k, positions int64 nq x k), each row ordered
    by (distance, position); missing slots (fewer than k live codes) hold -1. Needs numba
    (``AVAILABLE``).
    """
    if not AVAILABLE:  # pragma: no cover
        raise RuntimeError("knn_scan needs numba, which is not installed")
    if db.dtype != np.uint8 or queries.dtype != np.uint8 or db.ndim != 2 or queries.ndim != 2:
        raise ValueError("knn_scan takes 2-D uint8 arrays of packed codes")
    if db.shape[1] != queries.shape[1]:
        raise ValueError(
            f"database codes have {db.shape[1]} bytes but queries have {queries.shape[1]}"
        )
    code_size = db.shape[1]
    if code_size * 8 > 65535:
        raise ValueError(f"codes of {code_size * 8} bits are longer than the 65535-bit limit")
    n, nq = db.shape[0], queries.shape[0]
    if alive is not None:
        alive = np.ascontiguousarray(alive).view(np.uint8)
        if alive.shape != (n,):
            raise ValueError(f"alive has shape {alive.shape}: expected ({n},)")
    kk = min(k, n)
    if kk == 0 or nq == 0:
        return np.full((nq, k), -1, dtype=np.int32), np.full((nq, k), -1, dtype=np.int64)
    dtype = _word_dtype(code_size)
    words = code_size // dtype.itemsize
    flat_db = np.ascontiguousarray(db).reshape(-1).view(dtype)
    flat_q = np.ascontiguousarray(queries).reshape(-1).view(dtype)
    kernel = _kernel(words, dtype)
    res_d = np.full((nq, kk), -1, dtype=np.int32)
    res_p = np.full((nq, kk), -1, dtype=np.int64)
    mask = alive if alive is not None else np.empty(0, np.uint8)

    def part(lo: int, hi: int) -> None:
        kernel(flat_db, flat_q[lo * words : hi * words], kk, res_d[lo:hi], res_p[lo:hi], mask)

    threads = max(1, min(int(threads), -(-nq // QUERY_CHUNK)))
    if threads == 1:
        part(0, nq)
    else:
        bounds = np.linspace(0, nq, threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(part, bounds[:-1], bounds[1:]))
    if alive is not None:  # fewer than kk live codes: unfilled slots keep -1
        short = res_p < 0
        res_d[short] = -1
    if kk == k:
        return res_d, res_p
    pad = ((0, 0), (0, k - kk))  # fewer codes than k: missing slots are -1
    return np.pad(res_d, pad, constant_values=-1), np.pad(res_p, pad, constant_values=-1)


def warm_up(code_size: int) -> None:
    """Compile (or load from the on-disk cache) the kernel for ``code_size``-byte codes now,
    so that a server's first search does not pay for it. A no-op without numba."""
    if AVAILABLE and code_size > 0:
        codes = np.zeros((2, code_size), dtype=np.uint8)
        knn_scan(codes, codes[:1], 1)


def distances(db: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Every Hamming distance (nq x n, int32) between ``queries`` and ``db`` (packed uint8).

    Plain NumPy (xor, popcount by machine word): for range searches, which must look at every
    code anyway. Memory nq x n x 4 bytes.
    """
    dtype = _word_dtype(db.shape[1])
    dw = np.ascontiguousarray(db).view(dtype)
    qw = np.ascontiguousarray(queries).view(dtype)
    out = np.zeros((qw.shape[0], dw.shape[0]), dtype=np.int32)
    for q in range(qw.shape[0]):
        for w in range(dw.shape[1]):
            out[q] += _popcount_words(dw[:, w] ^ qw[q, w])
    return out


def _popcount_words(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # NumPy >= 2
        return np.bitwise_count(x)
    as_bytes = x.view(np.uint8).reshape(len(x), -1)  # pragma: no cover - NumPy 1.x
    return np.unpackbits(as_bytes, axis=1).sum(axis=1)  # pragma: no cover
