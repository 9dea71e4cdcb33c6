"""Cluster mode's catalog: every item lives in one Milvus collection shared by all replicas.

The same operations as the embedded :class:`service.catalog.Catalog` (add, delete, upsert,
get, list, count, search), with nothing kept in the replica: any number of ``hashkd serve
--cluster`` processes over one collection behave as one service (docs/service.md).

**Ids.** An add without ids draws each new id uniformly from [0, 2^53) (integers JavaScript
reads exactly, so the web page and JSON clients keep them) with the operating system's
random source, then asks Milvus (Strong) whether any is already stored and draws again for
those. An id stored before the add began is therefore never reused. Two adds running at the
same moment (on any replicas) collide only if they draw the same id between their check and
their write: with F new ids in flight anywhere, a new id collides with probability at most
F / 2^53 (1,000 in flight: 1.1e-13 per id). Rows are written with ``upsert`` so an id never
has two rows (an explicit-id race ends with the last write).

**Search order.** Results are exact (``BIN_FLAT``, HAMMING) and ordered by (distance, id),
like the embedded mode: Milvus breaks ties at the last returned distance arbitrarily, so each
search over-fetches, and when the fetched hits still end on the tie group of the last
requested rank, that whole group is fetched with a range search at that one distance and
sorted by id (a tie group of more than 16,384 items, Milvus's hit limit, is
refused with a 422 rather than answered in another order). A radius search returns at most
16,382 hits (``max_range_results`` is capped there; more is ``truncated``).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from service.milvus_items import (
    MAX_HITS,
    MAX_JSON_BYTES,
    MAX_VARCHAR,
    ClusterLimitError,
    ClusterUnavailableError,
    MilvusItems,
)
from service.milvus_terms import filter_expression, terms_field
from service.store import DuplicateItemError, Item, UnknownItemError
from service.terms import Filter

log = logging.getLogger("service.cluster")

#: New ids are drawn from [0, ID_SPACE): exact in JavaScript numbers.
ID_SPACE = 2**53
#: Rows per write request and ids per lookup.
WRITE_CHUNK = 1000
LOOKUP_CHUNK = 1000
#: Largest thumbnail JPEG that fits the base64 VARCHAR field.
MAX_THUMBNAIL_BYTES = MAX_VARCHAR // 4 * 3

Hits = tuple[np.ndarray, np.ndarray]


def _code_bytes(value: Any) -> bytes:
    return bytes(value[0] if isinstance(value, list) else value)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fit_thumbnail(data: bytes | None) -> bytes | None:
    """The thumbnail, re-encoded at lower JPEG quality if needed to fit the VARCHAR field."""
    if data is None or len(data) <= MAX_THUMBNAIL_BYTES:
        return data
    img = Image.open(io.BytesIO(data))
    for quality in (60, 40, 20):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        if buf.tell() <= MAX_THUMBNAIL_BYTES:
            return buf.getvalue()
    log.warning("a %d-byte thumbnail does not fit Milvus's VARCHAR field: stored none", len(data))
    return None


class ClusterCatalog:
    """Items in a Milvus collection, the source of truth for every replica."""

    #: What ``/v1/info`` shows for how the index was brought up (nothing to recover locally).
    recovery = "cluster"
    snapshot_seq = 0

    def __init__(
        self, uri: str, bits: int, collection: str = "hashkd_items", timeout: float = 10.0
    ) -> None:
        self.bits = int(bits)
        self.code_size = self.bits // 8
        self.items = MilvusItems(uri, collection, self.bits, timeout=timeout)
        self._count = 0
        try:
            self._count = self.items.count()  # opens (or creates) and checks the collection
        except ClusterUnavailableError as exc:
            log.warning("%s: serving anyway, /readyz says not ready until it answers", exc)

    # -- rows ------------------------------------------------------------------------------------
    def _row(
        self, item_id: int, code: bytes, metadata: dict[str, Any], thumbnail: bytes | None
    ) -> dict[str, Any]:
        text = _compact(metadata)
        if len(text.encode()) > MAX_JSON_BYTES:
            raise ClusterLimitError(
                f"the metadata of item {item_id} is {len(text.encode())} bytes as JSON: cluster "
                f"mode stores at most {MAX_JSON_BYTES} per item (Milvus's JSON field limit)"
            )
        terms = terms_field(metadata)
        if len(_compact(terms)) > MAX_JSON_BYTES:
            raise ClusterLimitError(
                f"the metadata of item {item_id} has {len(terms['t'])} filterable values: "
                f"cluster mode indexes at most {MAX_JSON_BYTES // 35} per item"
            )
        thumb = fit_thumbnail(thumbnail)
        return {
            "id": int(item_id),
            "code": code,
            "metadata": metadata,
            "terms": terms,
            "thumbnail": base64.b64encode(thumb).decode() if thumb else "",
        }

    def _existing(self, ids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), LOOKUP_CHUNK):
            found |= {int(r["id"]) for r in self.items.rows(ids[s : s + LOOKUP_CHUNK], ["id"])}
        return found

    def _new_ids(self, n: int) -> list[int]:
        """``n`` distinct ids that are not stored (see the module docstring)."""
        chosen: set[int] = set()
        while len(chosen) < n:
            draw = {secrets.randbelow(ID_SPACE) for _ in range(n - len(chosen))} - chosen
            chosen |= draw - self._existing(sorted(draw))
        return sorted(chosen)

    def _check_codes(self, codes: np.ndarray) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.code_size or codes.dtype != np.uint8:
            raise ValueError(
                f"codes must be uint8 n x {self.code_size}, got {codes.dtype} {codes.shape}"
            )

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
            new_ids = self._new_ids(n)
        else:
            new_ids = [int(i) for i in ids]
            dup = self._existing(new_ids)
            if dup:
                raise DuplicateItemError(sorted(dup))
        rows = [
            self._row(i, codes[j].tobytes(), metadata[j], thumbnails[j])
            for j, i in enumerate(new_ids)
        ]
        for s in range(0, len(rows), WRITE_CHUNK):
            self.items.upsert(rows[s : s + WRITE_CHUNK])
        return new_ids

    def delete(self, item_id: int) -> None:
        """Delete one item; unknown ids raise :class:`UnknownItemError`."""
        if not self._existing([item_id]):
            raise UnknownItemError(item_id)
        self.items.delete([int(item_id)])

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
        found = self.items.rows([int(item_id)], ["code", "metadata", "thumbnail"])
        created = not found
        if created and code is None:
            raise UnknownItemError(item_id)
        old = found[0] if found else {}
        if code is not None:
            new_code, thumb = code.tobytes(), thumbnail
        else:
            new_code = _code_bytes(old["code"])
            thumb = base64.b64decode(old["thumbnail"]) if old.get("thumbnail") else None
        meta = metadata if metadata is not None else old.get("metadata") or {}
        self.items.upsert([self._row(item_id, new_code, meta, thumb)])
        return created

    # -- reads -----------------------------------------------------------------------------------
    def get(self, item_id: int) -> Item:
        rows = self.items.rows([int(item_id)], ["code", "metadata", "thumbnail"])
        if not rows:
            raise UnknownItemError(item_id)
        return self._item(rows[0])

    @staticmethod
    def _item(row: dict[str, Any]) -> Item:
        return Item(
            id=int(row["id"]),
            code=_code_bytes(row["code"]),
            metadata=row.get("metadata") or {},
            has_thumbnail=bool(row.get("thumbnail")),
        )

    def thumbnail(self, item_id: int) -> bytes | None:
        rows = self.items.rows([int(item_id)], ["thumbnail"])
        if not rows:
            raise UnknownItemError(item_id)
        text = rows[0].get("thumbnail")
        return base64.b64decode(text) if text else None

    def metadata_of(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for s in range(0, len(wanted), LOOKUP_CHUNK):
            for r in self.items.rows(wanted[s : s + LOOKUP_CHUNK], ["metadata"]):
                out[int(r["id"])] = r.get("metadata") or {}
        return out

    def list_items(self, after: int, limit: int) -> list[Item]:
        """The ``limit`` smallest ids above ``after``, ascending, with their rows.

        Milvus returns *some* ``limit`` matching rows, not the smallest: the window
        ``(after, hi]`` is narrowed until one query returns all of it (each round drops at
        least one id, since ``limit`` < 16,384), then its smallest ids are kept.
        """
        if limit >= MAX_HITS:
            raise ValueError(f"limit={limit} is too large: expected at most {MAX_HITS - 1}")
        hi: int | None = None
        while True:
            expr = f"id > {int(after)}" + (f" and id <= {hi}" if hi is not None else "")
            ids = sorted(int(r["id"]) for r in self.items.select(expr, ["id"], MAX_HITS))
            if len(ids) < MAX_HITS:
                break
            hi = ids[limit - 1]
        page = ids[:limit]
        rows = {int(r["id"]): r for r in self.items.rows(page, ["code", "metadata", "thumbnail"])}
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
        cap = min(max_range_results, MAX_HITS - 2)  # one hit to see a cut, one for `exclude`
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
        the metadata of the hits the search returned it for.

        One search for every query over-fetches ``need + max(need, 64)`` hits (capped at
        Milvus's 16,384); only a query whose fetched list still ends on its ``need``-th distance
        (the tie group may be cut) costs a second search, a range search at that one distance.
        """
        fetch = min(need + max(need, 64), MAX_HITS)
        # Milvus keeps range_filter <= distance < radius for HAMMING: radius + 1 is inclusive.
        params = {"radius": radius + 1, "range_filter": 0} if radius is not None else {}
        out = []
        found = self.items.search(codes, fetch, expr, params, ["metadata"])
        for code, hits in zip(codes, found, strict=True):
            meta = {int(h["id"]): h.get("entity", {}).get("metadata") or {} for h in hits}
            pairs = sorted((int(round(h["distance"])), int(h["id"])) for h in hits)
            if len(pairs) >= fetch and pairs[min(need, len(pairs)) - 1][0] == pairs[-1][0]:
                pairs = self._complete_ties(code, pairs, pairs[-1][0], expr)
            pairs = pairs[:need]
            dist = np.array([d for d, _ in pairs], dtype=np.int32)
            ids = np.array([i for _, i in pairs], dtype=np.int64)
            out.append((dist, ids, meta))
        return out

    def _complete_ties(
        self, code: bytes, pairs: list[tuple[int, int]], last: int, expr: str
    ) -> list[tuple[int, int]]:
        """``pairs`` below distance ``last`` followed by every match at exactly ``last``."""
        ties = self.items.search(
            [code], MAX_HITS, expr, {"radius": last + 1, "range_filter": last}, []
        )
        if len(ties[0]) >= MAX_HITS:
            raise ClusterLimitError(
                f"{MAX_HITS} or more items are at distance {last} from the query, Milvus's "
                "limit per query: ask for fewer results or a smaller radius"
            )
        tie_pairs = sorted((int(round(h["distance"])), int(h["id"])) for h in ties[0])
        return [p for p in pairs if p[0] < last] + [p for p in tie_pairs if p[0] == last]

    # -- info ------------------------------------------------------------------------------------
    def index_info(self) -> dict[str, Any]:
        return {
            "kind": "milvus-cluster",
            "size": self.count(),
            "supports": ["add", "get", "range_search", "remove", "replace", "search"],
            "snapshot_seq": 0,
            "recovery": self.recovery,
            "collection": self.items.collection,
            "consistency": "Strong",
        }

    def close(self, snapshot: bool = True) -> None:
        self.items.close()
