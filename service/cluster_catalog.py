"""Cluster mode's catalog: every item lives in Milvus collections shared by all replicas.

The same operations as the embedded :class:`service.catalog.Catalog` (add, delete, upsert,
get, list, count, search), with nothing kept in the replica but leased id blocks: any number of
``hashkd serve --cluster`` processes over one collection behave as one service
(docs/service.md, "Cluster mode").

**Consistency.** Reads run at the current request's level (``service/consistency.py``):
``Bounded`` by default, the guarantee timestamp of a consistency token when the request
passed one, ``Strong`` with ``--consistency strong``. The checks that must see every
acknowledged write run ``Strong`` whatever the level: an add with explicit ids (409 for an
id already stored or reserved), a ``PUT``'s read of the row it replaces, a delete's existence
check.

**Ids.** An add without ids takes the next ids of a block leased by this replica
(``service/milvus_ids.py``): no Milvus round trip per add. Rows are written with ``upsert``,
so an id never has two rows; two concurrent adds or ``PUT``\\ s of the same explicit id both
pass their checks and end with the last write.

**Search order.** Results are exact (``BIN_FLAT``, HAMMING) and ordered by (distance, id),
like the embedded mode. Milvus returns at most 16,384 hits per query and cuts a tie group at
the last returned distance arbitrarily, so each search over-fetches; when the fetched hits end
on the tie group of the last requested rank, that group is read by range searches at exactly
that distance, paged by id windows (:func:`smallest_ids`), and the ranking continues with range
searches beyond it when more is needed: tie groups and radius answers of any size.

**Thumbnails** live in a directory the replicas share (``service/thumbnail_store.py``,
``--thumbnail-store``); the row keeps only the thumbnail's version. Without a store, cluster
mode keeps no thumbnails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from service.consistency import current
from service.milvus_ids import IdAllocator, ReservedIdError, block_of
from service.milvus_items import (
    MAX_HITS,
    MAX_JSON_BYTES,
    ClusterDataError,
    ClusterLimitError,
    ClusterUnavailableError,
    MilvusItems,
)
from service.milvus_terms import filter_expression, terms_field
from service.store import DuplicateItemError, Item, UnknownItemError
from service.terms import Filter
from service.thumbnail_store import STALE_S, ThumbnailStore

log = logging.getLogger("service.cluster")

#: Rows per write request and ids per lookup.
WRITE_CHUNK = 1000
LOOKUP_CHUNK = 1000
#: Fields of a row that an item needs.
ITEM_FIELDS = ["code", "metadata", "thumb"]

Pairs = list[tuple[int, int]]


def _code_bytes(value: Any) -> bytes:
    return bytes(value[0] if isinstance(value, list) else value)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _and(*parts: str | None) -> str:
    kept = [p for p in parts if p]
    return " and ".join(f"({p})" for p in kept) if len(kept) > 1 else (kept[0] if kept else "")


def smallest_ids(fetch: Callable[[int | None, int | None], list[int]], want: int) -> list[int]:
    """The ``want`` smallest ids of a set that Milvus only samples.

    ``fetch(after, hi)`` returns the ids of *some* (up to ``MAX_HITS``) members in the id window
    ``(after, hi]`` (``None``: unbounded), all of them when fewer. A page narrows ``hi`` until
    one fetch returns the whole window (each round keeps the page's ``MAX_HITS - 1``-th smallest
    id at most, so at least one id leaves the window; when Milvus samples at random the window
    halves), then continues after its last id.
    """
    out: list[int] = []
    after: int | None = None
    while len(out) < want:
        page_size = min(want - len(out), MAX_HITS - 1)
        hi: int | None = None
        while True:
            ids = sorted(fetch(after, hi))
            if len(ids) < MAX_HITS:
                break
            hi = ids[page_size - 1]
        page = ids[:page_size]
        out += page
        if len(page) < page_size:
            break
        after = page[-1]
    return out


class ClusterCatalog:
    """Items in Milvus, the source of truth for every replica."""

    #: What ``/v1/info`` shows for how the index was brought up (nothing to recover locally).
    recovery = "cluster"
    snapshot_seq = 0

    def __init__(
        self,
        uri: str,
        bits: int,
        collection: str = "hashkd_items",
        timeout: float = 10.0,
        thumbnail_store: str | Path | None = None,
    ) -> None:
        self.bits = int(bits)
        self.code_size = self.bits // 8
        self.items = MilvusItems(uri, collection, self.bits, timeout=timeout)
        self.ids = IdAllocator(self.items)
        self.thumbs = ThumbnailStore(thumbnail_store) if thumbnail_store else None
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="hashkd-milvus-check")
        self._count = 0
        if self.thumbs is None:
            log.info("cluster mode without --thumbnail-store: no thumbnails are kept")
        try:
            self._count = self.items.count()  # opens (or creates) and checks the collections
        except ClusterUnavailableError as exc:
            log.warning("%s: serving anyway, /readyz says not ready until it answers", exc)

    @classmethod
    def from_settings(cls, settings: Any, bits: int) -> ClusterCatalog:
        """The catalog of ``hashkd serve --cluster`` (a :class:`service.settings.Settings`)."""
        return cls(
            settings.milvus_uri,
            bits,
            collection=settings.collection,
            timeout=settings.milvus_timeout_s,
            thumbnail_store=settings.thumbnail_store,
        )

    # -- rows ------------------------------------------------------------------------------------
    def _row(self, item_id: int, code: bytes, metadata: dict[str, Any], thumb: int) -> dict:
        text = _compact(metadata)
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise ClusterDataError(
                f'the metadata of item {item_id} holds a lone surrogate (e.g. "\\ud800"): '
                "Milvus stores JSON as UTF-8, which cannot encode it"
            ) from None
        if size > MAX_JSON_BYTES:
            raise ClusterLimitError(
                f"the metadata of item {item_id} is {size} bytes as JSON: cluster "
                f"mode stores at most {MAX_JSON_BYTES} per item (Milvus's JSON field limit)"
            )
        terms = terms_field(metadata)
        if len(_compact(terms)) > MAX_JSON_BYTES:
            raise ClusterLimitError(
                f"the metadata of item {item_id} has {len(terms['t'])} filterable values: "
                f"cluster mode indexes at most {MAX_JSON_BYTES // 35} per item"
            )
        return {
            "id": int(item_id),
            "code": code,
            "metadata": metadata,
            "terms": terms,
            "thumb": thumb,
        }

    def _existing(self, ids: Sequence[int]) -> set[int]:
        """Those ``ids`` that are stored (Strong: every acknowledged write counts)."""
        found: set[int] = set()
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[s : s + LOOKUP_CHUNK]
            found |= {int(r["id"]) for r in self.items.rows(chunk, ["id"], strong=True)}
        return found

    def _leased(self, ids: Sequence[int]) -> set[int]:
        """The leased blocks among those of ``ids`` (Strong)."""
        blocks = sorted({block_of(i) for i in ids})
        found: set[int] = set()
        for s in range(0, len(blocks), LOOKUP_CHUNK):
            found |= self.ids.leased(blocks[s : s + LOOKUP_CHUNK])
        return found

    def _check_codes(self, codes: np.ndarray) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.code_size or codes.dtype != np.uint8:
            raise ValueError(
                f"codes must be uint8 n x {self.code_size}, got {codes.dtype} {codes.shape}"
            )

    def _put_thumbnail(self, item_id: int, data: bytes | None) -> int:
        return self.thumbs.put(item_id, data) if self.thumbs is not None and data else 0

    # -- writes ----------------------------------------------------------------------------------
    def add(
        self,
        codes: np.ndarray,
        ids: Sequence[int] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> list[int]:
        """Store new items; returns their ids once Milvus has acknowledged every row."""
        self._check_codes(codes)
        n = int(codes.shape[0])
        metadata = list(metadata) if metadata is not None else [{}] * n
        thumbnails = list(thumbnails) if thumbnails is not None else [None] * n
        if ids is None:
            new_ids = self.ids.take(n)
        else:
            new_ids = [int(i) for i in ids]
            stored = self._pool.submit(self._existing, new_ids)
            leased = self._leased(new_ids)
            dup = stored.result()
            if dup:
                raise DuplicateItemError(sorted(dup))
            reserved = [i for i in new_ids if block_of(i) in leased]
            if reserved:
                raise ReservedIdError(reserved)
        rows = [
            self._row(i, codes[j].tobytes(), metadata[j], 0) for j, i in enumerate(new_ids)
        ]  # checked before any thumbnail is written
        for row, data in zip(rows, thumbnails, strict=True):
            row["thumb"] = self._put_thumbnail(row["id"], data)
        for s in range(0, len(rows), WRITE_CHUNK):
            self.items.upsert(rows[s : s + WRITE_CHUNK])
        return new_ids

    def delete(self, item_id: int) -> None:
        """Delete one item; unknown ids raise :class:`UnknownItemError`."""
        if not self._existing([item_id]):
            raise UnknownItemError(item_id)
        self.items.delete([int(item_id)])
        if self.thumbs is not None:
            self.thumbs.remove(item_id)

    def upsert(
        self,
        item_id: int,
        code: np.ndarray | None,
        metadata: dict[str, Any] | None,
        thumbnail: bytes | None = None,
    ) -> bool:
        """Create or replace one item (what is None is kept); returns whether it was created."""
        if code is not None and (code.dtype != np.uint8 or code.shape != (self.code_size,)):
            raise ValueError(
                f"code must be uint8 of {self.code_size} bytes, got {code.dtype} {code.shape}"
            )
        leased = self._pool.submit(self._leased, [item_id])
        found = self.items.rows([int(item_id)], ITEM_FIELDS, strong=True)
        created = not found
        if created and code is None:
            raise UnknownItemError(item_id)
        if created and block_of(item_id) in leased.result():
            raise ReservedIdError([item_id])
        old = found[0] if found else {}
        meta = metadata if metadata is not None else old.get("metadata") or {}
        if code is not None:
            row = self._row(item_id, code.tobytes(), meta, 0)
            row["thumb"] = self._put_thumbnail(item_id, thumbnail)
        else:
            row = self._row(item_id, _code_bytes(old["code"]), meta, int(old.get("thumb") or 0))
        self.items.upsert([row])
        if code is not None and self.thumbs is not None:
            self.thumbs.remove(item_id, keep=row["thumb"], older_than=STALE_S)
        return created

    # -- reads -----------------------------------------------------------------------------------
    def get(self, item_id: int) -> Item:
        rows = self.items.rows([int(item_id)], ITEM_FIELDS)
        if not rows:
            raise UnknownItemError(item_id)
        return self._item(rows[0])

    @staticmethod
    def _item(row: dict[str, Any]) -> Item:
        return Item(
            id=int(row["id"]),
            code=_code_bytes(row["code"]),
            metadata=row.get("metadata") or {},
            has_thumbnail=bool(row.get("thumb")),
        )

    def thumbnail(self, item_id: int) -> bytes | None:
        """The item's thumbnail; None when it has none (or this replica has no store)."""
        rows = self.items.rows([int(item_id)], ["thumb"])
        if not rows:
            raise UnknownItemError(item_id)
        version = int(rows[0].get("thumb") or 0)
        if not version or self.thumbs is None:
            return None
        return self.thumbs.get(item_id, version)

    def metadata_of(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for s in range(0, len(wanted), LOOKUP_CHUNK):
            for r in self.items.rows(wanted[s : s + LOOKUP_CHUNK], ["metadata"]):
                out[int(r["id"])] = r.get("metadata") or {}
        return out

    def list_items(self, after: int, limit: int) -> list[Item]:
        """The ``limit`` smallest ids above ``after``, ascending, with their rows."""

        def fetch(lo: int | None, hi: int | None) -> list[int]:
            upper = f"id <= {hi}" if hi is not None else None
            expr = _and(f"id > {int(after if lo is None else lo)}", upper)
            return [int(r["id"]) for r in self.items.select(expr, ["id"], MAX_HITS)]

        page = smallest_ids(fetch, limit)
        rows = {int(r["id"]): r for r in self.items.rows(page, ITEM_FIELDS)}
        return [self._item(rows[i]) for i in page if i in rows]  # deleted meanwhile: skipped

    def count(self) -> int:
        self._count = self.items.count()
        return self._count

    def __len__(self) -> int:
        """The last count read (for metrics; never waits for Milvus)."""
        return self._count

    def ready(self) -> tuple[bool, str]:
        return self.items.ready()

    # -- search ----------------------------------------------------------------------------------
    def search(
        self,
        codes: np.ndarray,
        k: int,
        radius: int | None,
        *,
        flt: Filter | None = None,
        offset: int = 0,
        exclude: int | None = None,
        max_range_results: int = 10_000,
    ) -> tuple[list[list[dict]], bool]:
        """Hits (id, distance, metadata) per query, exact, in (distance, id) order; and whether a
        radius search was cut at ``max_range_results``. Same contract as ``Engine.search``."""
        expr = filter_expression(flt)
        extra = 1 if exclude is not None else 0
        cap = int(max_range_results)
        need = (cap + 1 if radius is not None else offset + k) + extra
        ranked = self._first([c.tobytes() for c in codes], need, expr, radius)
        per_query, truncated = [], False
        for dist, ids, meta in ranked:
            keep = ids != exclude if exclude is not None else np.ones(len(ids), bool)
            dist, ids = dist[keep], ids[keep]
            if radius is not None:
                truncated |= len(ids) > cap
                dist, ids = dist[:cap], ids[:cap]
            else:
                dist, ids = dist[offset : offset + k], ids[offset : offset + k]
            per_query.append((dist, ids, meta))
        missing = {int(i) for _, ids, meta in per_query for i in ids if int(i) not in meta}
        looked_up = self.metadata_of(missing) if missing else {}
        out = []
        for dist, ids, meta in per_query:
            meta = {**meta, **looked_up}
            out.append(
                [
                    {"id": int(i), "distance": int(d), "metadata": meta[int(i)]}
                    for d, i in zip(dist, ids, strict=True)
                    if int(i) in meta  # deleted between the search and the lookup
                ]
            )
        return out, truncated

    def _first(
        self, codes: list[bytes], need: int, expr: str, radius: int | None
    ) -> list[tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]]:
        """Per query: the first ``need`` matches in (distance, id) order (all when fewer), and
        the metadata of the hits the first search returned.

        One search for every query over-fetches ``need + max(need, 64)`` hits (at most Milvus's
        16,384); only a query whose fetched list still ends on its ``need``-th distance (its tie
        group may be cut) costs more searches (:meth:`_complete`).
        """
        fetch = min(need + max(need, 64), MAX_HITS)
        top = self.bits if radius is None else min(int(radius), self.bits)
        # Milvus keeps range_filter <= distance < radius for HAMMING: radius + 1 is inclusive.
        params = {"radius": top + 1, "range_filter": 0} if radius is not None else {}
        out = []
        found = self.items.search(codes, fetch, expr, params, ["metadata"])
        for code, hits in zip(codes, found, strict=True):
            meta = {int(h["id"]): h.get("entity", {}).get("metadata") or {} for h in hits}
            pairs = sorted((int(round(h["distance"])), int(h["id"])) for h in hits)
            if len(pairs) >= fetch and pairs[min(need, len(pairs)) - 1][0] == pairs[-1][0]:
                pairs = self._complete(code, pairs, need, expr, top)
            pairs = pairs[:need]
            dist = np.array([d for d, _ in pairs], dtype=np.int32)
            ids = np.array([i for _, i in pairs], dtype=np.int64)
            out.append((dist, ids, meta))
        return out

    def _complete(self, code: bytes, pairs: Pairs, need: int, expr: str, top: int) -> Pairs:
        """The first ``need`` matches within distance ``top``, from ``pairs`` (the nearest
        matches, a full Milvus answer whose last distance group may be cut): every complete
        distance below the last, then each distance group in id order (:meth:`_ties`), then
        range searches further out while more are needed."""
        out: Pairs = []
        while True:
            last = pairs[-1][0]
            out += [p for p in pairs if p[0] < last]
            if len(out) >= need:
                return out
            out += [(last, i) for i in self._ties(code, last, expr, need - len(out))]
            if len(out) >= need or last >= top:
                return out
            hits = self.items.search(
                [code], MAX_HITS, expr, {"radius": top + 1, "range_filter": last + 1}, []
            )[0]
            pairs = sorted((int(round(h["distance"])), int(h["id"])) for h in hits)
            if len(pairs) < MAX_HITS:
                return out + pairs
            # a full answer again: its last group may be cut, go round

    def _ties(self, code: bytes, distance: int, expr: str, want: int) -> list[int]:
        """The ``want`` smallest ids among the matches at exactly ``distance``."""
        params = {"radius": distance + 1, "range_filter": distance}

        def fetch(after: int | None, hi: int | None) -> list[int]:
            window = _and(
                expr,
                f"id > {after}" if after is not None else None,
                f"id <= {hi}" if hi is not None else None,
            )
            hits = self.items.search([code], MAX_HITS, window, params, [])[0]
            return [int(h["id"]) for h in hits]

        return smallest_ids(fetch, want)

    # -- info ------------------------------------------------------------------------------------
    def index_info(self) -> dict[str, Any]:
        return {
            "kind": "milvus-cluster",
            "size": self.count(),
            "supports": ["add", "get", "range_search", "remove", "replace", "search"],
            "snapshot_seq": 0,
            "recovery": self.recovery,
            "collection": self.items.collection,
            "consistency": current().level.capitalize(),
            "thumbnails": "store" if self.thumbs is not None else "none",
        }

    def close(self, snapshot: bool = True) -> None:
        self._pool.shutdown(wait=False)
        self.items.close()
