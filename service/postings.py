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
quarter when full: at most 25 % unused room); a delete is O(1), its ids leaving the lists in
batches (a purge per 65,536 deletes, or a quarter of the lists' ids if more, and before every
save); a metadata replacement or an out-of-order id is O(list size) for that item's lists.
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
from service.terms import Filter, metadata_term_lists, metadata_terms


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
        #: Deleted items still listed (id -> its terms): searches skip them (they are not in
        #: the index), and they leave the lists in batches (``purge``) or when re-added.
        self._stale: dict[int, list[tuple[str, str]]] = {}
        self._stale_ids = sorted_ids.EMPTY  # the same ids, ascending, for ``match``
        #: How many (item, term) entries the lists hold, about (a purge threshold only).
        self._entries = 0

    def __len__(self) -> int:
        return len(self._lists)

    # -- persistence (with the index snapshot) ----------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write every list to one ``.npz`` (atomic: temporary file, fsync, rename); deleted
        items are purged first (the file must not list them: a restart forgets which)."""
        self.purge()
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
        out._entries = len(ids)
        return out

    def forget(self, ids: np.ndarray) -> None:
        """Drop ``ids`` from every list (start-up replay: their current terms are re-added)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if len(ids):
            for found in self._lists.values():
                found.discard(ids)

    def add_items(self, ids: Sequence[int], metadata: Iterable[dict[str, Any]]) -> None:
        """Index new items' metadata (ids not yet in any list)."""
        self.add_terms(ids, metadata_term_lists(metadata))

    def add_terms(self, ids: Sequence[int], terms: Sequence[Iterable[tuple[str, str]]]) -> None:
        """Index new items by their (key, term) pairs (``service.terms.metadata_terms``)."""
        if self._stale:  # an id deleted and added again: its old terms go first
            for item_id in ids:
                old = self._stale.pop(int(item_id), None)
                if old is not None:
                    self._discard(int(item_id), old)
            self._stale_ids = np.array(sorted(self._stale), dtype=np.int64)
        grouped: dict[tuple[str, str], list[int]] = {}
        for item_id, pairs in zip(ids, terms, strict=True):
            for pair in pairs:
                grouped.setdefault(pair, []).append(int(item_id))
        for pair, found in grouped.items():
            self._entries += len(found)
            arr = np.array(found, dtype=np.int64)
            if len(arr) > 1 and not bool(np.all(arr[1:] > arr[:-1])):
                arr = np.unique(arr)
            found_list = self._lists.get(pair)
            if found_list is None:  # a new value: an exact-size array, no growth room
                self._lists[pair] = PostingList(arr)
            else:
                found_list.add(arr)

    def remove_item(self, item_id: int, metadata: dict[str, Any]) -> None:
        """Forget an item's terms now (its metadata is replaced): O(length) of its lists."""
        if self._stale.pop(int(item_id), None) is not None:
            self._stale_ids = np.array(sorted(self._stale), dtype=np.int64)
        self._discard(int(item_id), list(metadata_terms(metadata)))

    def _discard(self, item_id: int, pairs: Iterable[tuple[str, str]]) -> None:
        one = np.array([item_id], dtype=np.int64)
        for pair in pairs:
            found = self._lists.get(pair)
            if found is not None:
                found.discard(one)

    #: Deleted items kept listed before a purge (or a quarter of the lists' ids, if more).
    STALE_SLACK = 65_536

    def delete_item(self, item_id: int, metadata: dict[str, Any]) -> None:
        """A deleted item: O(1) now, removed from its lists with the next purge (amortised
        O(1) per delete); until then searches skip it because the index no longer has it."""
        self._stale[int(item_id)] = list(metadata_terms(metadata))
        at = np.searchsorted(self._stale_ids, item_id)
        self._stale_ids = np.insert(self._stale_ids, at, item_id)  # O(deleted, not purged)
        if len(self._stale) > max(self.STALE_SLACK, self._entries // 4):
            self.purge()

    def purge(self) -> None:
        """Remove the deleted items from their lists: one pass per list that holds any."""
        if not self._stale:
            return
        grouped: dict[tuple[str, str], list[int]] = {}
        for item_id, pairs in self._stale.items():
            for pair in pairs:
                grouped.setdefault(pair, []).append(item_id)
        for pair, gone in grouped.items():
            found = self._lists.get(pair)
            if found is not None:
                before = len(found)
                found.discard(np.unique(np.array(gone, dtype=np.int64)))
                self._entries -= before - len(found)
        self._stale.clear()
        self._stale_ids = sorted_ids.EMPTY

    def match(self, flt: Filter) -> np.ndarray:
        """Ids (ascending) of the items matching ``flt``: any of a key's terms, every key."""
        result: np.ndarray | None = None
        for key, terms in sorted(flt.items(), key=lambda kv: self._size(kv[0], kv[1])):
            lists = [self._lists[(key, t)].ids() for t in terms if (key, t) in self._lists]
            ids = sorted_ids.union_all(lists)
            result = ids if result is None else sorted_ids.intersect(result, ids)
            if not len(result):
                break
        if result is None:
            return sorted_ids.EMPTY
        return sorted_ids.difference(result, self._stale_ids)  # deleted, not purged yet

    def _size(self, key: str, terms: list[str]) -> int:
        return sum(len(self._lists[(key, t)]) for t in terms if (key, t) in self._lists)
