"""Growable code storage in ascending-id order: fixed-size chunks, tombstones, a small delta.

``FlatIndex`` keeps its codes here so that a write costs O(batch), amortised, instead of a copy
of the whole collection:

* **main**: chunks of ``chunk_size`` codes (and their ids, unless they run without a gap, and a
  live flag per code once the chunk has a delete), filled in order; ids ascend across the whole
  main part. An add whose ids are all above the largest id
  (every id the service assigns itself, every bulk load in id order) is appended in place: a
  full chunk is never copied, a new one is allocated. A reader only sees the filled prefix.
* **tombstones**: a delete clears the code's live flag (O(1) per id); the scan skips dead codes.
* **delta**: ids that arrive out of order (an explicit id below the largest, or a replaced code)
  go to a small segment kept sorted by id (rebuilt per write, O(delta)).

When the delta or the tombstones outgrow their share (``needs_compaction``), ``compacted``
builds a new main part with the live codes of both, in id order -- O(n), but once per O(n)
writes, so O(1) amortised per write -- and the caller swaps it in under its exclusive lock
(``FlatIndex`` builds it while searches keep running, see ``indexes.base``).

Exact search order: every segment's positions ascend with its ids, so the scan's (distance,
position) order within a segment is the (distance, id) order; merging the segments' top-k
lists by (distance, id) gives the exact top-k of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from indexes import sorted_ids

#: Codes per chunk (8 MB of 64-bit codes): an append never copies more than this.
CHUNK_SIZE = 1 << 20
#: The delta and the tombstones may each hold this many codes, or a quarter of the live
#: codes if more, before a compaction.
MIN_SLACK = 1 << 16


@dataclass
class Chunk:
    """One chunk of the main part: ``capacity`` preallocated codes, ``fill`` of them in use.

    Memory is committed only where written: the ids are not stored while they run without a
    gap from ``first`` (``id_array`` None: the service's own ids, a bulk load), and the live
    flags not before the chunk's first delete (``alive`` None: every code is live).
    """

    codes: np.ndarray  # (capacity, code_size) uint8
    first: int = -1
    fill: int = 0
    id_array: np.ndarray | None = None  # (capacity,) int64 once the ids have a gap
    alive: np.ndarray | None = None  # (capacity,) uint8, 1 live / 0 tombstone, once needed
    dead: int = 0

    @classmethod
    def empty(cls, capacity: int, code_size: int) -> Chunk:
        return cls(codes=np.empty((capacity, code_size), dtype=np.uint8))

    @property
    def capacity(self) -> int:
        return int(self.codes.shape[0])

    @property
    def dense(self) -> bool:
        return self.id_array is None

    @property
    def last_id(self) -> int:
        if not self.fill:
            return -1
        return self.first + self.fill - 1 if self.dense else int(self.id_array[self.fill - 1])

    def ids(self) -> np.ndarray:
        """The filled ids, ascending (a new array for a dense chunk, else a view)."""
        if self.dense:
            return np.arange(self.first, self.first + self.fill, dtype=np.int64)
        return self.id_array[: self.fill]

    def live(self) -> np.ndarray | None:
        """Live flags of the filled codes (None when all are live)."""
        return None if self.alive is None or not self.dead else self.alive[: self.fill]

    def segment(self, mask: np.ndarray | None = None) -> Segment:
        live = self.live() if mask is None else mask
        return Segment(
            self.codes[: self.fill], None if self.dense else self.id_array, self.first, live
        )

    def write(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Append ``ids`` (ascending, above every id here) and their codes; the caller checked
        the room."""
        lo, hi = self.fill, self.fill + len(ids)
        if not self.fill:
            self.first = int(ids[0])
        if self.dense and (
            int(ids[0]) != self.first + lo or int(ids[-1]) - int(ids[0]) != len(ids) - 1
        ):
            self.id_array = np.empty(self.capacity, dtype=np.int64)  # a gap: ids stored from now
            self.id_array[:lo] = np.arange(self.first, self.first + lo)
        if not self.dense:
            self.id_array[lo:hi] = ids
        self.codes[lo:hi] = codes
        if self.alive is not None:
            self.alive[lo:hi] = 1
        self.fill = hi  # readers see the new codes only once they are written

    def kill(self, offsets: np.ndarray) -> None:
        """Tombstone the codes at ``offsets`` (live ones)."""
        if self.alive is None:
            self.alive = np.ones(self.capacity, dtype=np.uint8)
        self.alive[offsets] = 0
        self.dead += len(offsets)


@dataclass
class Segment:
    """A searchable run of codes whose ids ascend with their positions: ``ids`` when stored,
    else ``first + position``."""

    codes: np.ndarray
    ids: np.ndarray | None
    first: int
    alive: np.ndarray | None  # None: every code is live

    def ids_at(self, pos: np.ndarray) -> np.ndarray:
        """The ids at positions ``pos`` (-1 stays -1)."""
        if self.ids is None:
            return np.where(pos >= 0, pos + self.first, -1)
        return np.where(pos >= 0, self.ids[np.maximum(pos, 0)], -1)


@dataclass
class ChunkedCodes:
    """The storage (see the module docstring). Not thread-safe: the index locks around it."""

    code_size: int
    chunk_size: int = CHUNK_SIZE
    chunks: list[Chunk] = field(default_factory=list)
    firsts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    delta_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    delta_codes: np.ndarray | None = None
    dead: int = 0
    live_main: int = 0

    def __post_init__(self) -> None:
        if self.delta_codes is None:
            self.delta_codes = np.empty((0, self.code_size), dtype=np.uint8)

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.live_main + len(self.delta_ids)

    @property
    def last_id(self) -> int:
        """The largest id ever placed in the main part (-1 when empty)."""
        for chunk in reversed(self.chunks):
            if chunk.fill:
                return chunk.last_id
        return -1

    def needs_compaction(self) -> bool:
        slack = max(MIN_SLACK, len(self) // 4)  # read at call time: tests lower it
        return len(self.delta_ids) > slack or self.dead > slack

    # -- lookups -------------------------------------------------------------------------------
    def _locate(self, ids: np.ndarray) -> list[tuple[int, int, int, np.ndarray]]:
        """For ``ids`` (ascending): ``(chunk, lo, hi, offsets)`` for each chunk that may hold
        ``ids[lo:hi]``, with each id's offset there (-1 where absent or dead). A chunk whose
        ids are dense (no gap: the service's own ids, a bulk load) needs no search at all."""
        if not self.chunks or not len(ids):
            return []
        bounds = np.append(np.searchsorted(ids, self.firsts, side="left"), len(ids))
        out = []
        for ci, chunk in enumerate(self.chunks):
            lo, hi = int(bounds[ci]), int(bounds[ci + 1])
            if lo == hi or not chunk.fill:
                continue
            if chunk.dense:  # offset = id - first
                pos = ids[lo:hi] - chunk.first
                pos[pos >= chunk.fill] = -1  # ids >= first: the chunk was chosen so
            else:
                pos = sorted_ids.positions(chunk.id_array[: chunk.fill], ids[lo:hi])
            if chunk.dead:  # a dead code is absent
                found = pos >= 0
                found[found] = chunk.alive[pos[found]] == 1
                pos = np.where(found, pos, -1)
            out.append((ci, lo, hi, pos))
        return out

    def _delta_positions(self, ids: np.ndarray) -> np.ndarray:
        return sorted_ids.positions(self.delta_ids, ids)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (any order) are stored and live."""
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ = ids[order]
        found = self._delta_positions(sorted_) >= 0
        for _, lo, hi, pos in self._locate(sorted_):
            found[lo:hi] |= pos >= 0
        out = np.empty(len(ids), dtype=bool)
        out[order] = found
        return out

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids, their codes) for ``ids`` in the given order, absent ones skipped."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return ids, np.empty((0, self.code_size), dtype=np.uint8)
        ascending = bool(np.all(ids[1:] > ids[:-1]))
        if ascending and not len(self.delta_ids):  # the common case: one gather per chunk
            return self._get_main(ids)
        order = np.arange(len(ids)) if ascending else np.argsort(ids, kind="stable")
        sorted_ = ids[order]
        dpos = self._delta_positions(sorted_)
        codes = np.empty((len(ids), self.code_size), dtype=np.uint8)
        found = np.zeros(len(ids), dtype=bool)
        for ci, lo, hi, pos in self._locate(sorted_):
            sel = pos >= 0
            found[lo:hi] = sel
            codes[lo:hi][sel] = np.take(self.chunks[ci].codes, pos[sel], axis=0)
        in_delta = dpos >= 0
        if in_delta.any():
            codes[in_delta] = self.delta_codes[dpos[in_delta]]
            found |= in_delta
        if not ascending:
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            found, codes = found[inverse], codes[inverse]
            return ids[found], codes[found]
        return sorted_[found], codes[found]

    def _get_main(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``get`` for ascending ids when the delta is empty: chunk by chunk, in order."""
        found_ids, found_codes = [], []
        for ci, lo, hi, off in self._locate(ids):
            part = ids[lo:hi]
            keep = off >= 0
            if not keep.all():
                off, part = off[keep], part[keep]
            found_codes.append(np.take(self.chunks[ci].codes, off, axis=0))
            found_ids.append(part)
        if not found_ids:
            return sorted_ids.EMPTY, np.empty((0, self.code_size), dtype=np.uint8)
        return np.concatenate(found_ids), np.concatenate(found_codes)

    def all_ids(self) -> np.ndarray:
        """Every live id, ascending (a new array)."""
        main = [c.ids() if c.live() is None else c.ids()[c.live() == 1] for c in self.chunks]
        return sorted_ids.union(np.concatenate(main) if main else sorted_ids.EMPTY, self.delta_ids)

    def segments(self) -> list[Segment]:
        """The searchable runs: each main chunk's filled prefix, then the delta."""
        out = [c.segment() for c in self.chunks if c.fill]
        if len(self.delta_ids):
            out.append(Segment(self.delta_codes, self.delta_ids, 0, None))
        return out

    def masked_segments(self, ids: np.ndarray) -> list[Segment]:
        """The segments with only ``ids`` (ascending) live: for a scan restricted to a large
        subset, cheaper than gathering its codes (one flag byte per stored code)."""
        out = []
        for ci, _, _, off in self._locate(ids):
            chunk = self.chunks[ci]
            mask = np.zeros(chunk.fill, dtype=np.uint8)
            mask[off[off >= 0]] = 1
            out.append(chunk.segment(mask))
        if len(self.delta_ids):
            pos = self._delta_positions(ids)
            mask = np.zeros(len(self.delta_ids), dtype=np.uint8)
            mask[pos[pos >= 0]] = 1
            if mask.any():
                out.append(Segment(self.delta_codes, self.delta_ids, 0, mask))
        return out

    # -- writes (the caller holds its exclusive lock) ---------------------------------------------
    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Store new ``ids`` (not stored yet) with their ``codes``."""
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            order = np.argsort(ids, kind="stable")
            ids, codes = ids[order], codes[order]
        last = self.last_id
        tail = int(np.searchsorted(ids, last, side="right"))  # ids[tail:] > last
        if tail < len(ids):
            self._append(ids[tail:], codes[tail:])
        if tail:
            self._add_delta(ids[:tail], codes[:tail])

    def _append(self, ids: np.ndarray, codes: np.ndarray) -> None:
        done = 0
        while done < len(ids):
            if not self.chunks or self.chunks[-1].fill == self.chunks[-1].capacity:
                self.chunks.append(Chunk.empty(self.chunk_size, self.code_size))
                self.firsts = np.append(self.firsts, ids[done])
            chunk = self.chunks[-1]
            take = min(len(ids) - done, chunk.capacity - chunk.fill)
            chunk.write(ids[done : done + take], codes[done : done + take])
            done += take
        self.live_main += len(ids)

    def _add_delta(self, ids: np.ndarray, codes: np.ndarray) -> None:
        at = np.searchsorted(self.delta_ids, ids)
        self.delta_ids = np.insert(self.delta_ids, at, ids)
        self.delta_codes = np.insert(self.delta_codes, at, codes, axis=0)

    def remove(self, ids: np.ndarray) -> int:
        """Remove stored ``ids`` (absent ones are ignored); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.sort(ids)
        removed = 0
        for ci, _, _, off in self._locate(ids):
            off = off[off >= 0]
            if len(off):
                self.chunks[ci].kill(off)
            removed += len(off)
        self.dead += removed
        self.live_main -= removed
        dpos = self._delta_positions(ids)
        dpos = dpos[dpos >= 0]
        if len(dpos):
            self.delta_ids = np.delete(self.delta_ids, dpos)
            self.delta_codes = np.delete(self.delta_codes, dpos, axis=0)
            removed += len(dpos)
        return removed

    # -- compaction ----------------------------------------------------------------------------
    def live_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) of every live code in id order (new arrays: O(n))."""
        ids, codes = [], []
        for c in self.chunks:
            live = c.live()
            ids.append(c.ids() if live is None else c.ids()[live == 1])
            codes.append(c.codes[: c.fill] if live is None else c.codes[: c.fill][live == 1])
        main_ids = np.concatenate(ids) if ids else sorted_ids.EMPTY
        main_codes = (
            np.concatenate(codes) if codes else np.empty((0, self.code_size), dtype=np.uint8)
        )
        if not len(self.delta_ids):
            return main_ids, main_codes
        at = np.searchsorted(main_ids, self.delta_ids)
        return (
            np.insert(main_ids, at, self.delta_ids),
            np.insert(main_codes, at, self.delta_codes, axis=0),
        )

    @classmethod
    def from_sorted(
        cls, ids: np.ndarray, codes: np.ndarray, code_size: int, chunk_size: int = CHUNK_SIZE
    ) -> ChunkedCodes:
        """A storage holding ``ids`` (strictly ascending) and their codes in its main part."""
        store = cls(code_size=code_size, chunk_size=chunk_size)
        if len(ids):
            store._append(np.asarray(ids, dtype=np.int64), codes)
        return store

    def compacted(self) -> ChunkedCodes:
        """A new storage with the same live codes, no tombstones and no delta."""
        ids, codes = self.live_arrays()
        return ChunkedCodes.from_sorted(ids, codes, self.code_size, self.chunk_size)
