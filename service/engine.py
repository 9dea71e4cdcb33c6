"""The service's working parts in one object: encoders, micro-batcher and catalog.

Routers call these methods from worker threads (``def`` work via ``run_in_threadpool``);
nothing here runs on the event loop except awaiting the micro-batcher's future.

Asymmetric protocol (as in asymmetric distillation for hashing, e.g. BRCD, Cao et al. 2023):
stored items are encoded by the database model (typically the teacher) and queries by the
query model (the compact student); both must produce codes of the same length K.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import indexes
from hashkd.runtime import Encoder
from hashkd.runtime.config import read_artifact_config
from indexes import hamming_scan
from service.batching import BatchedThen, MicroBatcher
from service.catalog import Catalog
from service.cluster_catalog import ClusterCatalog
from service.errors import ApiError
from service.jsonlimits import MAX_JSON_DEPTH
from service.memory import release_free_memory
from service.metrics import Metrics
from service.schemas import DEFAULT_K, MAX_K, MAX_LIST_LIMIT, MAX_QUERY_CODES, MAX_RANK
from service.settings import Settings
from service.store import DuplicateItemError, Item, ItemStore
from service.terms import Filter
from service.uploads import labels_metadata

log = logging.getLogger("service.engine")

THUMBNAIL_QUALITY = 80


class ModelMismatchError(ValueError):
    """The query and database models cannot serve together."""


def check_models(settings: Settings) -> int:
    """Read both model configs (cheap, no weights) and return K; refuse mismatched lengths."""
    q_cfg, _ = read_artifact_config(settings.model)
    d_cfg, _ = read_artifact_config(settings.db_model)
    if q_cfg.bits != d_cfg.bits:
        raise ModelMismatchError(
            f"the query model {str(settings.model)!r} makes {q_cfg.bits}-bit codes but the database model "
            f"{str(settings.db_model)!r} makes {d_cfg.bits}-bit codes: expected models of the same code length"
        )
    return int(q_cfg.bits)


def make_thumbnail(img: Image.Image, size: int) -> bytes | None:
    """A JPEG of ``img`` whose longer side is at most ``size`` pixels (None when size is 0)."""
    if size <= 0:
        return None
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    return buf.getvalue()


def _model_info(encoder: Encoder, path: Path) -> dict[str, Any]:
    cfg = encoder.config
    return {
        "path": str(path),
        "backbone": cfg.backbone,
        "bits": int(encoder.bits),
        "img_size": int(cfg.img_size),
        "role": cfg.role,
        "backend": str(encoder.backend),
        "precision": str(encoder.precision),
    }


class _BatchedSearch(BatchedThen):
    """The search that follows a request's encoding in the micro-batcher. k-NN searches with
    the same k and options (the usual case: the page's default k) share one multi-query scan.
    Radius searches are finished alone (their ``truncated`` flag is per request)."""

    def __init__(
        self, engine: Engine, k: int | None, radius: int | None, options: dict[str, Any]
    ) -> None:
        self.engine, self.k, self.radius, self.options = engine, k, radius, options
        if radius is None:
            self.key = (k, json.dumps(options, sort_keys=True, default=str))

    def run_many(self, codes: list[np.ndarray]) -> list[Any]:
        results, truncated = self.engine.search(
            np.concatenate(codes), self.k, self.radius, **self.options
        )
        out, start = [], 0
        for part in codes:
            out.append((results[start : start + len(part)], truncated))
            start += len(part)
        return out


class Engine:
    """Encoders + micro-batcher + catalog, opened from :class:`Settings`."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.bits = check_models(settings)
        indexes.set_threads(settings.search_threads)
        self.query_encoder = Encoder.from_artifact(
            settings.model,
            backend=settings.backend,
            precision=settings.precision,
            threads=settings.threads,
            max_pixels=settings.max_image_pixels,
        )
        if settings.asymmetric:
            self.db_encoder = Encoder.from_artifact(
                settings.db_model,
                backend=settings.backend,
                precision=settings.precision,
                threads=settings.threads,
                max_pixels=settings.max_image_pixels,
            )
        else:
            self.db_encoder = self.query_encoder
        if (
            self.query_encoder.bits != self.db_encoder.bits
        ):  # config said equal; the runtime must agree
            raise ModelMismatchError(
                f"the query model makes {self.query_encoder.bits}-bit codes but the database model "
                f"{self.db_encoder.bits}-bit codes: expected the same code length"
            )
        self.protocol = "asymmetric" if settings.asymmetric else "symmetric"
        self.catalog: Catalog | ClusterCatalog
        if settings.cluster:  # every item in a Milvus collection shared by all replicas
            self.catalog = ClusterCatalog.from_settings(settings, self.bits)
        else:
            self.catalog = Catalog(
                settings.store,
                self.bits,
                spec=settings.index_spec,
                snapshot_every=settings.snapshot_every,
                synchronous=settings.sqlite_synchronous,
            )
            self.catalog.index.warm_up()  # e.g. compile the exact scan's kernel now
        metrics.track_index_size(lambda: float(len(self.catalog)))
        self._query_batches = metrics.encode_batch.labels("query")
        self._db_batches = metrics.encode_batch.labels("database")
        self.batcher: MicroBatcher | None = None
        if settings.batching:
            self.batcher = MicroBatcher(
                self._encode_queries_now,
                max_batch=settings.max_batch,
                max_wait=settings.max_wait_ms / 1000.0,
                on_batch=self._query_batches.observe,
            )
        log.info(
            "serving %s protocol, %d bits, %d items (index %s, %s)",
            self.protocol,
            self.bits,
            len(self.catalog),
            settings.index_spec,
            self.catalog.recovery,
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.catalog.close()

    # -- encoding ----------------------------------------------------------------------------------
    def _encode_queries_now(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.asarray(self.query_encoder.encode(list(images)), dtype=np.uint8)

    def encode_queries(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Blocking encode with the query model (through the micro-batcher when enabled)."""
        if self.batcher is not None:
            return self.batcher.encode(images)
        self._query_batches.observe(len(images))
        return self._encode_queries_now(images)

    async def asearch_images(
        self,
        images: Sequence[Image.Image],
        k: int | None,
        radius: int | None,
        **options: Any,
    ) -> tuple[list[list[dict]], bool]:
        """Encode with the query model and search, without blocking the event loop.

        One hop off the loop: with batching, the micro-batcher's worker encodes the batch and
        then runs each request's search; without, one thread-pool call does both.
        ``options`` are those of :meth:`search` (``flt``, ``offset``).
        """
        from starlette.concurrency import run_in_threadpool

        if self.batcher is not None and isinstance(self.catalog, ClusterCatalog):
            # A Milvus search waits for the server (a Strong read): run it in the thread pool
            # so that the batcher's one worker keeps encoding instead of waiting in line.
            codes = await asyncio.wrap_future(self.batcher.submit(images))
            return await run_in_threadpool(self.search, codes, k, radius, **options)
        if self.batcher is not None:
            fut = self.batcher.submit(images, then=_BatchedSearch(self, k, radius, options))
            return await asyncio.wrap_future(fut)

        return await run_in_threadpool(self.search_images, images, k, radius, **options)

    def search_images(
        self, images: Sequence[Image.Image], k: int | None, radius: int | None, **options: Any
    ) -> tuple[list[list[dict]], bool]:
        """Blocking encode + search (call from a worker thread)."""
        return self.search(self.encode_queries(images), k, radius, **options)

    def encode_items(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode stored items with the database model (blocking; call from a worker thread)."""
        self._db_batches.observe(len(images))
        return np.asarray(self.db_encoder.encode(list(images)), dtype=np.uint8)

    # -- search ------------------------------------------------------------------------------------
    def search(
        self,
        codes: np.ndarray,
        k: int | None,
        radius: int | None,
        *,
        flt: Filter | None = None,
        offset: int = 0,
        exclude: int | None = None,
    ) -> tuple[list[list[dict]], bool]:
        """Hits (id, distance, metadata) per query; and whether a radius search was truncated.

        k-NN results are ranks ``offset`` to ``offset + k`` of the (distance, id) order.
        ``flt`` restricts the search to the items matching a metadata filter (an exact scan of
        their codes, see :meth:`_filtered`); ``exclude`` drops one id (the query item itself).
        """
        k = int(k if k is not None else DEFAULT_K)
        self.check_work(codes.shape[0], k, radius, offset)
        if isinstance(self.catalog, ClusterCatalog):  # Milvus filters, ranks and looks up
            return self.catalog.search(
                codes,
                k,
                radius,
                flt=flt,
                offset=offset,
                exclude=exclude,
                max_range_results=self.settings.max_range_results,
            )
        if flt:
            per_query, truncated = self._filtered(codes, k, radius, flt, offset, exclude)
        else:
            per_query, truncated = self._indexed(codes, k, radius, offset, exclude)
        wanted = {int(i) for _, ids in per_query for i in ids}
        meta = self.catalog.store.metadata_of(wanted) if wanted else {}
        out = []
        for dist, ids in per_query:
            # An item deleted between the index search and this lookup is dropped.
            out.append(
                [
                    {"id": int(i), "distance": int(d), "metadata": meta[int(i)]}
                    for d, i in zip(dist, ids, strict=True)
                    if int(i) in meta
                ]
            )
        return out, truncated

    def check_work(self, queries: int, k: int, radius: int | None, offset: int) -> None:
        """Refuse (422) a request whose ranking work, codes x ranks kept per code, is over
        ``max_search_work``: the top-k lists a scan keeps cost O(depth) per accepted candidate.
        Ranks past the collection's size cost nothing and do not count."""
        depth = self.settings.max_range_results + 1 if radius is not None else offset + k
        # cluster mode: no round trip to Milvus for the size; every rank counts
        size = depth if isinstance(self.catalog, ClusterCatalog) else len(self.catalog)
        work = int(queries) * min(depth, max(size, 1))
        limit = self.settings.max_search_work
        if work > limit:
            what = (
                f"a radius search keeps up to max_range_results + 1 = {depth}"
                if radius is not None
                else f"offset + k = {depth}"
            )
            raise ApiError(
                422,
                f"this request asks for {queries} codes x {min(depth, size)} ranks = {work} "
                f"ranked results ({what} per code): expected at most max_search_work = {limit}; "
                "send fewer codes per request or ask for fewer results",
            )

    def _radius_hits(
        self, dist: np.ndarray, ids: np.ndarray, radius: int, exclude: int | None
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """The hits within ``radius`` of one query's nearest-first list, capped at
        ``max_range_results`` (the list holds one more, to tell whether the cap cut it)."""
        keep = (ids >= 0) & (dist <= radius)
        if exclude is not None:
            keep &= ids != exclude
        dist, ids = dist[keep], ids[keep]
        cap = self.settings.max_range_results
        return dist[:cap], ids[:cap], len(ids) > cap

    def _indexed(
        self, codes: np.ndarray, k: int, radius: int | None, offset: int, exclude: int | None
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """Search the index (its own exactness; the order is (distance, id)).

        A radius search is a nearest-neighbour search for ``max_range_results + 1`` codes cut
        at the radius: exact (the first hits by (distance, id)), bounded in memory and time
        however many codes are within the radius.
        """
        index = self.catalog.index
        per_query: list[tuple[np.ndarray, np.ndarray]] = []
        truncated = False
        extra = 1 if exclude is not None else 0
        if radius is not None:
            fetch = min(self.settings.max_range_results + 1 + extra, max(len(index), 1))
            dist, ids = index.search(codes, fetch)
            for d, i in zip(dist, ids, strict=True):
                d, i, cut = self._radius_hits(d, i, int(radius), exclude)
                truncated |= cut
                per_query.append((d, i))
            return per_query, truncated
        dist, ids = index.search(codes, k + offset + extra)
        for d, i in zip(dist, ids, strict=True):
            keep = (i >= 0) & (i != exclude) if exclude is not None else i >= 0
            per_query.append((d[keep][offset : offset + k], i[keep][offset : offset + k]))
        return per_query, truncated

    def _filtered(
        self,
        codes: np.ndarray,
        k: int,
        radius: int | None,
        flt: Filter,
        offset: int,
        exclude: int | None,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
        """Exact search among the items matching ``flt``.

        The catalog's in-memory posting lists give the m matching ids (ascending, array
        operations only: ``service/postings.py``); the flat index ranks exactly those of its
        codes (``FlatIndex.search_subset``: a small subset gathered, a large one scanned in
        place with a flag per code; ids not yet or no longer indexed are skipped, as in an
        unfiltered search) in one multi-query scan. Other indexes gather the codes
        (``get_known``) and scan them (``indexes.hamming_scan.knn_scan``); the gathered codes
        ascend by id, so its (distance, position) order is the (distance, id) order. Cost:
        O(min(m, n)) vectorised per request, never a Python object per matching item.
        """
        matching = self.catalog.postings.match(flt)
        if exclude is not None:
            matching = matching[matching != exclude]
        depth = self.settings.max_range_results + 1 if radius is not None else offset + k
        depth = max(1, min(depth, len(matching)))
        index = self.catalog.index
        if hasattr(index, "search_subset"):  # the flat index: gather or mask, exact
            dist, found = index.search_subset(codes, matching, depth)
        else:
            ids, db = index.get_known(matching)
            dist, pos = hamming_scan.knn_scan(db, codes, depth)
            found = np.where(pos >= 0, ids[np.maximum(pos, 0)] if len(ids) else -1, -1)
        per_query: list[tuple[np.ndarray, np.ndarray]] = []
        truncated = False
        for d, i in zip(dist, found, strict=True):
            if radius is not None:
                d, i, cut = self._radius_hits(d, i, int(radius), None)
                truncated |= cut
            else:
                keep = i >= 0
                d, i = d[keep][offset : offset + k], i[keep][offset : offset + k]
            per_query.append((d, i))
        return per_query, truncated

    def similar(
        self,
        item_id: int,
        k: int | None,
        radius: int | None,
        *,
        flt: Filter | None = None,
        offset: int = 0,
    ) -> tuple[list[dict], bool]:
        """Items nearest to a stored item's code, the item itself excluded; unknown ids raise."""
        code = np.frombuffer(self.get_item(item_id).code, dtype=np.uint8)
        results, truncated = self.search(
            code[None, :], k, radius, flt=flt, offset=offset, exclude=int(item_id)
        )
        return results[0], truncated

    # -- items -------------------------------------------------------------------------------------
    def add_images(
        self,
        images: Sequence[Image.Image],
        ids: Sequence[int] | None,
        metadata: Sequence[dict[str, Any]] | None,
    ) -> list[int]:
        codes = self.encode_items(images)
        thumbs = [make_thumbnail(img, self.settings.thumbnail_px) for img in images]
        return self.catalog.add(codes, ids=ids, metadata=metadata, thumbnails=thumbs)

    def add_codes(
        self,
        codes: np.ndarray,
        ids: Sequence[int] | None,
        metadata: Sequence[dict[str, Any]] | None,
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> list[int]:
        """Add precomputed codes (one transaction); ``thumbnails`` optional JPEGs."""
        return self.catalog.add(codes, ids=ids, metadata=metadata, thumbnails=thumbnails)

    #: Codes added per transaction by :meth:`import_codes`.
    IMPORT_CHUNK = 100_000
    #: An import of at least this many codes gives its freed memory back (service/memory.py).
    TRIM_AFTER = 10_000

    def import_codes(
        self,
        codes: np.ndarray,
        ids: np.ndarray | None,
        metadata: Sequence[dict[str, Any]] | None,
        labels: np.ndarray | None = None,
    ) -> list[int]:
        """Bulk-add codes in chunks of ``IMPORT_CHUNK``; ``labels`` (n class indices or n x C
        multi-hot) become metadata ``{"labels": [...]}`` chunk by chunk. Explicit ids already
        stored raise ``DuplicateItemError`` before anything is added."""
        if ids is not None and not isinstance(self.catalog, ClusterCatalog):
            taken, _ = self.catalog.index.get_known(ids)
            if len(taken):
                raise DuplicateItemError(sorted(int(i) for i in taken))
        out: list[int] = []
        for s in range(0, codes.shape[0], self.IMPORT_CHUNK):
            end = s + self.IMPORT_CHUNK
            meta = list(metadata[s:end]) if metadata is not None else None
            if labels is not None:
                lab = labels_metadata(labels[s:end], len(labels[s:end]))
                meta = [{**m, **lb} for m, lb in zip(meta, lab, strict=True)] if meta else lab
            chunk_ids = ids[s:end].tolist() if ids is not None else None
            out += self.catalog.add(codes[s:end], ids=chunk_ids, metadata=meta)
        if codes.shape[0] >= self.TRIM_AFTER:
            release_free_memory()  # the chunk's Python objects: back to the OS, not kept
        return out

    def upsert_item(
        self, item_id: int, image: Image.Image | None, metadata: dict[str, Any] | None
    ) -> bool:
        """Create or replace an item (the image re-encoded with the database model, and/or the
        metadata); durable when it returns; returns whether the item was created."""
        code = thumb = None
        if image is not None:
            code = self.encode_items([image])[0]
            thumb = make_thumbnail(image, self.settings.thumbnail_px)
        return self.catalog.upsert(item_id, code, metadata, thumb)

    def list_items(self, after: int, limit: int) -> list[Item]:
        """Up to ``limit`` stored items with ids above ``after``, ascending."""
        return self._items.list_items(after, limit)

    def get_item(self, item_id: int) -> Item:
        """The stored item (code, metadata); unknown ids raise ``UnknownItemError``."""
        return self._items.get(item_id)

    def thumbnail(self, item_id: int) -> bytes | None:
        """The item's JPEG thumbnail, None for an item added as a bare code; unknown ids raise."""
        return self._items.thumbnail(item_id)

    def delete_item(self, item_id: int) -> None:
        """Delete one item from the store and the index; unknown ids raise ``UnknownItemError``."""
        self.catalog.delete(item_id)

    @property
    def _items(self) -> ItemStore | ClusterCatalog:
        """Where items are read: the SQLite store, or the Milvus collection in cluster mode."""
        return self.catalog if isinstance(self.catalog, ClusterCatalog) else self.catalog.store

    def ready(self) -> tuple[bool, str]:
        """(whether requests can be answered now, why not): cluster mode asks Milvus."""
        if isinstance(self.catalog, ClusterCatalog):
            return self.catalog.ready()
        return True, ""

    def _index_info(self) -> dict[str, Any]:
        if isinstance(self.catalog, ClusterCatalog):
            return {
                "spec": self.settings.index_spec,
                "mode": "cluster",
                **self.catalog.index_info(),
            }
        index = self.catalog.index
        return {
            "spec": self.settings.index_spec,
            "kind": str(getattr(index, "kind", type(index).__name__)),
            "size": len(index),
            "supports": sorted(getattr(index, "supports", ())),
            "snapshot_seq": self.catalog.snapshot_seq,
            "recovery": self.catalog.recovery,
        }

    def info(self) -> dict[str, Any]:
        s = self.settings
        index = self._index_info()
        return {
            "protocol": self.protocol,
            "bits": self.bits,
            "query_model": _model_info(self.query_encoder, s.model),
            "database_model": _model_info(self.db_encoder, s.db_model),
            "index": index,
            "items": index["size"] if s.cluster else self.catalog.store.count(),
            "batching": {
                "enabled": s.batching,
                "max_batch": s.max_batch,
                "max_wait_ms": s.max_wait_ms,
            },
            "auth": s.api_key is not None,
            "limits": {
                "max_upload_bytes": s.max_upload_bytes,
                "max_image_pixels": s.max_image_pixels,
                "max_images": s.max_images,
                "max_k": MAX_K,
                "max_rank": MAX_RANK,
                "max_query_codes": MAX_QUERY_CODES,
                "max_list_limit": MAX_LIST_LIMIT,
                "max_metadata_bytes": s.max_metadata_bytes,
                "max_json_depth": MAX_JSON_DEPTH,
                "max_range_results": s.max_range_results,
                "max_search_work": s.max_search_work,
                "max_request_pixels": s.max_request_pixels,
            },
        }
