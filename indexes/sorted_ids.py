"""Set operations on ascending int64 id arrays in linear time (compiled with numba).

Filters, tombstones and id lookups work on sorted id arrays with millions of entries. NumPy's
``union1d`` / ``intersect1d`` sort their input again (0.65 s to unite two 500 k arrays), and
``searchsorted`` of 1 M sorted needles in 10 M ids takes ~40 ms of cache misses. Both inputs
are already sorted here, so a two-pointer merge (union, intersection) and a galloping search
from the previous hit (positions) do the same work in O(a + b) and O(m log(n / m)).

Every function takes and returns 1-d int64 arrays that are strictly ascending (distinct).
Without numba they fall back to NumPy's (slower) equivalents with the same results.
"""

from __future__ import annotations

import numpy as np

from indexes.hamming_scan import AVAILABLE, _jit

EMPTY = np.empty(0, dtype=np.int64)

if AVAILABLE:

    @_jit
    def _union(a, b):  # noqa: ANN001, ANN202 - numba kernel
        out = np.empty(a.shape[0] + b.shape[0], np.int64)
        i = j = n = 0
        while i < a.shape[0] and j < b.shape[0]:
            x, y = a[i], b[j]
            if x < y:
                out[n] = x
                i += 1
            elif y < x:
                out[n] = y
                j += 1
            else:
                out[n] = x
                i += 1
                j += 1
            n += 1
        while i < a.shape[0]:
            out[n] = a[i]
            i += 1
            n += 1
        while j < b.shape[0]:
            out[n] = b[j]
            j += 1
            n += 1
        return out[:n]

    @_jit
    def _intersect(a, b):  # noqa: ANN001, ANN202 - numba kernel
        out = np.empty(min(a.shape[0], b.shape[0]), np.int64)
        i = j = n = 0
        while i < a.shape[0] and j < b.shape[0]:
            x, y = a[i], b[j]
            if x < y:
                i += 1
            elif y < x:
                j += 1
            else:
                out[n] = x
                n += 1
                i += 1
                j += 1
        return out[:n]

    @_jit
    def _difference(a, b):  # noqa: ANN001, ANN202 - numba kernel
        out = np.empty(a.shape[0], np.int64)
        i = j = n = 0
        while i < a.shape[0]:
            x = a[i]
            while j < b.shape[0] and b[j] < x:
                j += 1
            if j >= b.shape[0] or b[j] != x:
                out[n] = x
                n += 1
            i += 1
        return out[:n]

    @_jit
    def _positions(hay, needles, out):  # noqa: ANN001, ANN202 - numba kernel
        """out[i] = position of needles[i] in hay, or -1; needles ascending."""
        n = hay.shape[0]
        lo = 0
        for i in range(needles.shape[0]):
            x = needles[i]
            # gallop from the previous hit, then binary search in the bracket
            step = 1
            hi = lo
            while hi < n and hay[hi] < x:
                lo = hi + 1
                hi = lo + step
                step *= 2
            if hi > n:
                hi = n
            while lo < hi:
                mid = (lo + hi) // 2
                if hay[mid] < x:
                    lo = mid + 1
                else:
                    hi = mid
            out[i] = lo if lo < n and hay[lo] == x else -1


def as_sorted_ids(ids: np.ndarray) -> np.ndarray:
    """``ids`` as a contiguous int64 array (no check that it ascends)."""
    return np.ascontiguousarray(ids, dtype=np.int64)


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ids in ``a`` or ``b`` (both ascending), ascending."""
    a, b = as_sorted_ids(a), as_sorted_ids(b)
    if not len(a):
        return b
    if not len(b):
        return a
    return _union(a, b) if AVAILABLE else np.union1d(a, b)


def union_all(arrays: list[np.ndarray]) -> np.ndarray:
    """The union of several ascending id arrays (pairwise, smallest first)."""
    pending = sorted((as_sorted_ids(x) for x in arrays), key=len)
    if not pending:
        return EMPTY
    while len(pending) > 1:
        merged = union(pending.pop(0), pending.pop(0))
        pending.append(merged)
        pending.sort(key=len)
    return pending[0]


def intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ids in both ``a`` and ``b`` (both ascending), ascending."""
    a, b = as_sorted_ids(a), as_sorted_ids(b)
    if not len(a) or not len(b):
        return EMPTY
    return _intersect(a, b) if AVAILABLE else np.intersect1d(a, b, assume_unique=True)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The ids of ``a`` not in ``b`` (both ascending), ascending."""
    a, b = as_sorted_ids(a), as_sorted_ids(b)
    if not len(a) or not len(b):
        return a
    return _difference(a, b) if AVAILABLE else np.setdiff1d(a, b, assume_unique=True)


def positions(hay: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """Position of each of ``needles`` (ascending) in ``hay`` (ascending); -1 where absent."""
    hay, needles = as_sorted_ids(hay), as_sorted_ids(needles)
    out = np.empty(len(needles), dtype=np.int64)
    if not len(needles):
        return out
    if AVAILABLE:
        _positions(hay, needles, out)
        return out
    pos = np.searchsorted(hay, needles)
    found = pos < len(hay)
    found[found] = hay[pos[found]] == needles[found]
    return np.where(found, pos, -1)


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the kernels now."""
    a = np.arange(3, dtype=np.int64)
    union(a, a[1:])
    intersect(a, a[1:])
    difference(a, a[1:])
    positions(a, a[1:])
