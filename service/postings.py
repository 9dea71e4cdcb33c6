"""In-memory posting lists for metadata filters: (key, term) -> ascending item ids.

The items' metadata in SQLite (``service/store.py``) stays the durable truth; the lists are
derived from it like the search index: saved with every index snapshot (``save``/``load``, one
``.npz`` of plain arrays, never pickled), brought up to date at start-up by replaying the
changes after the snapshot, and rebuilt from the metadata when no usable snapshot exists.
A filter is then answered with array operations only -- the union of a key's terms and the
intersection over keys are linear merges of sorted int64 arrays (``indexes.sorted_ids``) --
so a filter matching a million items costs milliseconds, not a million Python objects.

Concurrency: readers take no lock. Each list publishes ``(buffer, size)`` as one tuple; an
append writes past ``size`` (invisible to a reader holding the old tuple) or into a new,
larger buffer; a removal or an out-of-order insert builds a new array. Writers are
serialised by the catalog.

Costs: an append of ids above a list's largest is amortised O(batch) (the buffer grows by a
quarter when full: at most 25 % unused room); a
removal (delete, metadata replaced) or an out-of-order id is O(list size) for that list.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hashkd.io import atomic_write_bytes
from indexes import sorted_ids
from service.terms import Filter, metadata_terms


class PostingList:
    """One term's ids, ascending, in a growable buffer."""

    __slots__ = ("_state",)

    def __init__(self, ids: np.ndarray | None = None) -> None:
        ids = np.empty(0, np.int64) if ids is None else np.ascontiguousarray(ids, np.int64)
        self._state: tuple[np.ndarray, int] = (ids, len(ids))

    def ids(self) -> np.ndarray:
        """The ids, ascending (a read-only view of one consistent state)."""
        buffer, size = self._state
        view = buffer[:size]
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return self._state[1]

    def add(self, ids: np.ndarray) -> None:
        """Insert ``ids`` (ascending, distinct, none of them present)."""
        buffer, size = self._state
        if not len(ids):
            return
        if size and ids[0] <= buffer[size - 1]:  # out of order: a new merged array
            merged = sorted_ids.union(buffer[:size], ids)
            self._state = (merged, len(merged))
            return
        need = size + len(ids)
        if need > len(buffer):
            # grow by a quarter: amortised O(1) per id, at most 25 % of unused room
            grown = np.empty(max(need, len(buffer) + len(buffer) // 4, 16), dtype=np.int64)
            grown[:size] = buffer[:size]
            buffer = grown
        buffer[size:need] = ids
        self._state = (buffer, need)

    def discard(self, ids: np.ndarray) -> None:
        """Remove ``ids`` (ascending; absent ones are ignored)."""
        current = self.ids()
        pos = sorted_ids.positions(current, ids)
        pos = pos[pos >= 0]
        if len(pos):
            kept = np.delete(current, pos)
            self._state = (kept, len(kept))


class Postings:
    """Every (key, term) posting list of a store."""

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str], PostingList] = {}

    def __len__(self) -> int:
        return len(self._lists)

    # -- persistence (with the index snapshot) ----------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write every list to one ``.npz`` (atomic: temporary file, fsync, rename)."""
        pairs = sorted(self._lists)
        lists = [self._lists[p].ids() for p in pairs]
        buf = io.BytesIO()
        np.savez(
            buf,
            names=np.frombuffer(json.dumps(pairs).encode("utf-8"), dtype=np.uint8),
            counts=np.array([len(x) for x in lists], dtype=np.int64),
            ids=np.concatenate(lists) if lists else np.empty(0, np.int64),
        )
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Postings:
        """Read a file written by ``save``; ``ValueError`` when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as data:
                pairs = json.loads(data["names"].tobytes().decode("utf-8"))
                counts, ids = data["counts"], data["ids"]
        except (OSError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"posting lists {str(path)!r} cannot be read: {exc}") from None
        if len(pairs) != len(counts) or int(counts.sum()) != len(ids) or ids.dtype != np.int64:
            raise ValueError(f"posting lists {str(path)!r} are inconsistent")
        out = cls()
        bounds = np.concatenate(([0], np.cumsum(counts)))
        for (key, term), lo, hi in zip(pairs, bounds[:-1], bounds[1:], strict=True):
            out._lists[(str(key), str(term))] = PostingList(ids[lo:hi].copy())
        return out

    def forget(self, ids: np.ndarray) -> None:
        """Drop ``ids`` from every list (start-up replay: their current terms are re-added)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids):
            for found in self._lists.values():
                found.discard(ids)

    def add_items(self, ids: Sequence[int], metadata: Iterable[dict[str, Any]]) -> None:
        """Index new items' metadata (ids not yet in any list)."""
        self.add_terms(ids, [metadata_terms(m) for m in metadata])

    def add_terms(self, ids: Sequence[int], terms: Sequence[Iterable[tuple[str, str]]]) -> None:
        """Index new items by their (key, term) pairs (``service.terms.metadata_terms``)."""
        grouped: dict[tuple[str, str], list[int]] = {}
        for item_id, pairs in zip(ids, terms, strict=True):
            for pair in pairs:
                grouped.setdefault(pair, []).append(int(item_id))
        for pair, found in grouped.items():
            arr = np.array(found, dtype=np.int64)
            if len(arr) > 1 and not bool(np.all(arr[1:] > arr[:-1])):
                arr = np.unique(arr)
            self._lists.setdefault(pair, PostingList()).add(arr)

    def remove_item(self, item_id: int, metadata: dict[str, Any]) -> None:
        """Forget an item's terms (it was deleted or its metadata replaced)."""
        one = np.array([int(item_id)], dtype=np.int64)
        for pair in metadata_terms(metadata):
            found = self._lists.get(pair)
            if found is not None:
                found.discard(one)

    def match(self, flt: Filter) -> np.ndarray:
        """Ids (ascending) of the items matching ``flt``: any of a key's terms, every key."""
        result: np.ndarray | None = None
        for key, terms in sorted(flt.items(), key=lambda kv: self._size(kv[0], kv[1])):
            lists = [self._lists[(key, t)].ids() for t in terms if (key, t) in self._lists]
            ids = sorted_ids.union_all(lists)
            result = ids if result is None else sorted_ids.intersect(result, ids)
            if not len(result):
                break
        return result if result is not None else sorted_ids.EMPTY

    def _size(self, key: str, terms: list[str]) -> int:
        return sum(len(self._lists[(key, t)]) for t in terms if (key, t) in self._lists)
