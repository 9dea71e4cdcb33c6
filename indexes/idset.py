"""Sorted sets of int64 ids, and validation of the caller's ids and codes."""

from __future__ import annotations

from typing import Any

import numpy as np

from indexes.errors import DuplicateIdError


def check_ids(ids: Any, count: int | None = None) -> np.ndarray:
    """Return ``ids`` as a 1-d int64 array of non-negative, distinct ids (``-1`` marks padding)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(
            f"ids must be a 1-d array of integers, got dtype {arr.dtype} shape {arr.shape}"
        )
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("ids must fit in int64")
    arr = arr.astype(np.int64, copy=False)
    if count is not None and arr.shape[0] != count:
        raise ValueError(f"got {arr.shape[0]} ids for {count} codes: expected one id per code")
    if arr.size and arr.min() < 0:
        raise ValueError(
            f"id {int(arr.min())} is negative: ids must be >= 0 (-1 marks missing results)"
        )
    if arr.size > 1 and not bool(np.all(arr[1:] > arr[:-1])):  # ascending: distinct already
        s = np.sort(arr)
        same = s[1:] == s[:-1]
        if same.any():
            repeated = sorted_unique(s[1:][same])
            raise DuplicateIdError(
                repeated, f"ids repeated within one call: {repeated[:5].tolist()}"
            )
    return np.ascontiguousarray(arr)


def check_codes(codes: Any, code_size: int) -> np.ndarray:
    """Return ``codes`` as a C-contiguous uint8 (n, code_size) array (a 1-d code is one row)."""
    arr = np.asarray(codes)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ValueError(
            f"codes must be a uint8 array of shape (n, {code_size}), got dtype {arr.dtype} shape {arr.shape}"
        )
    if arr.shape[1] != code_size:
        raise ValueError(
            f"codes are {arr.shape[1] * 8} bits long but the index holds {code_size * 8}-bit codes"
        )
    return np.ascontiguousarray(arr)


def sorted_unique(ids: Any) -> np.ndarray:
    """Distinct int64 values of ``ids``, ascending (a new array).

    A sort and a neighbour comparison: numpy 2's ``np.unique`` without ``return_*`` goes
    through a hash set, several times slower and larger in memory for millions of ids.
    """
    out = np.sort(np.asarray(ids, dtype=np.int64).ravel())
    if len(out) > 1 and not bool(np.all(out[1:] != out[:-1])):
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


class IdSet:
    """A sorted array of distinct int64 ids: O(log n) membership, O(n) insert/delete."""

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self._ids = sorted_unique(ids) if ids is not None else np.empty(0, np.int64)

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def array(self) -> np.ndarray:
        """The ids in ascending order (read-only view)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the set."""
        if not len(self._ids):
            return np.zeros(len(ids), dtype=bool)
        pos = np.searchsorted(self._ids, ids)
        pos[pos == len(self._ids)] = 0
        return self._ids[pos] == ids

    def add(self, ids: np.ndarray) -> None:
        """Insert ``ids`` (those already present are ignored): O(n + m log m), one new array."""
        new = sorted_unique(ids)
        new = new[~self.contains(new)]
        if not len(new):
            return
        if not len(self._ids) or new[0] > self._ids[-1]:  # appending: the common case
            self._ids = np.concatenate([self._ids, new])
        else:
            self._ids = np.insert(self._ids, np.searchsorted(self._ids, new), new)

    def discard(self, ids: np.ndarray) -> None:
        """Remove ``ids`` (those absent are ignored): O(n + m log n)."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = sorted_unique(ids[self.contains(ids)])
        if len(ids):
            self._ids = np.delete(self._ids, np.searchsorted(self._ids, ids))
