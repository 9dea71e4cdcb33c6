"""The items collection of cluster mode: one Milvus collection, the service's source of truth.

Schema (``auto_id=False``; every field of an item, nothing kept in the replica)::

    id         INT64 primary key        the item's id
    code       BINARY_VECTOR(dim=K)     its code, index BIN_FLAT, metric HAMMING (exact)
    metadata   JSON                     its metadata object (at most 65,536 bytes, Milvus's limit)
    terms      JSON {"t": [digest]}     its filter terms (``service/milvus_terms.py``)
    thumbnail  VARCHAR(65535)           base64 of its JPEG thumbnail ("" = none)

Every read (search, query, count) runs at consistency level ``Strong``: Milvus answers only
after its query nodes have applied every write acknowledged before the read started, whichever
replica (client) made it. Writes are acknowledged when Milvus's ``upsert``/``delete`` returns:
the rows are then in Milvus's write-ahead log (its message queue), from which the server
replays them after its own crash.

Connection handling (:meth:`MilvusItems.call`): the client connects lazily and gRPC reconnects
by itself, so a server that went away and came back is used again without a restart. A call
that cannot reach the server, times out, or finds the collection not (yet) loaded raises
:class:`ClusterUnavailableError` (the API's 503); a collection found unloaded or missing is
loaded or created again on the next call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("service.cluster")

T = TypeVar("T")

#: Milvus's limits: hits per search / rows per limited query, bytes per JSON field, VARCHAR size.
MAX_HITS = 16384
MAX_JSON_BYTES = 65536
MAX_VARCHAR = 65535
#: Every field of an item row.
ROW_FIELDS = ("id", "code", "metadata", "terms", "thumbnail")
#: Seconds a readiness answer is reused (``/readyz`` probes are frequent).
READY_CACHE_S = 1.0
#: Milvus error codes that name a bad request rather than an unavailable server.
_PARAM_ERROR_CODES = frozenset({1100})
#: Substrings of Milvus errors after which the collection must be opened (loaded) again.
_REOPEN_HINTS = ("not loaded", "collection not found", "can't find collection", "not exist")


class ClusterUnavailableError(Exception):
    """The Milvus server did not answer (down, unreachable, still loading): the API's 503."""


class ClusterLimitError(ValueError):
    """An item exceeds a limit of Milvus (JSON size, hits per query): the API's 422."""


def _describe(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    if callable(details):  # a grpc.RpcError
        return str(details() or exc)
    return str(getattr(exc, "message", "") or exc).strip()


class MilvusItems:
    """Thread-safe access to one items collection of a Milvus server (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        collection: str,
        bits: int,
        timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        self.uri, self.collection, self.bits = uri, collection, int(bits)
        self.timeout = float(timeout)
        self._token = token
        self._client: Any = None
        self._opened = False
        self._open_lock = threading.Lock()
        self._ready_at = 0.0
        self._ready: tuple[bool, str] = (False, "not checked yet")

    # -- connection --------------------------------------------------------------------------
    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        kwargs: dict[str, Any] = {"timeout": self.timeout}
        if self._token:
            kwargs["token"] = self._token
        return MilvusClient(self.uri, **kwargs)

    def _open(self) -> Any:
        """The client, with the collection created (first replica) or checked and loaded."""
        if self._opened:
            return self._client
        with self._open_lock:
            if self._opened:
                return self._client
            if self._client is None:
                self._client = self._connect()
            client = self._client
            if client.has_collection(self.collection, timeout=self.timeout):
                self._check_schema(client)
            else:
                self._create(client)
            client.load_collection(self.collection, timeout=max(self.timeout, 30.0))
            self._opened = True
            return client

    def _create(self, client: Any) -> None:
        from pymilvus import DataType
        from pymilvus.exceptions import MilvusException

        schema = client.create_schema(
            auto_id=False, enable_dynamic_field=False, description="hashkd items"
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("terms", DataType.JSON)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=MAX_VARCHAR)
        params = client.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        try:
            client.create_collection(
                self.collection,
                schema=schema,
                index_params=params,
                consistency_level="Strong",
                timeout=self.timeout,
            )
        except MilvusException:
            # Another replica may have created it at the same moment: use theirs if it fits.
            if not client.has_collection(self.collection, timeout=self.timeout):
                raise
            self._check_schema(client)
        log.info("created Milvus collection %r at %s", self.collection, self.uri)

    def _check_schema(self, client: Any) -> None:
        desc = client.describe_collection(self.collection, timeout=self.timeout)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        dim = fields.get("code", {}).get("params", {}).get("dim")
        if set(ROW_FIELDS) - set(fields) or dim is None or int(dim) != self.bits:
            raise ValueError(
                f"Milvus collection {self.collection!r} at {self.uri!r} is not a {self.bits}-bit "
                f"hashkd items collection (fields {sorted(fields)}, code dim {dim!r}): use another "
                "--collection"
            )

    def call(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation(client)``; Milvus failures become :class:`ClusterUnavailableError`
        (or :class:`ClusterLimitError` for a request Milvus refuses as invalid)."""
        import grpc
        from pymilvus.exceptions import MilvusException

        for attempt in (1, 2):
            try:
                return operation(self._open())
            except MilvusException as exc:
                reason = _describe(exc)
                if getattr(exc, "code", None) in _PARAM_ERROR_CODES:
                    raise ClusterLimitError(f"Milvus refused the {what}: {reason}") from None
                if attempt == 1 and any(h in reason.lower() for h in _REOPEN_HINTS):
                    self._opened = False  # e.g. the server restarted: load (or create) again
                    continue
                self._opened = False
                raise self._unavailable(what, reason) from None
            except grpc.RpcError as exc:
                self._opened = False
                raise self._unavailable(what, _describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _unavailable(self, what: str, reason: str) -> ClusterUnavailableError:
        return ClusterUnavailableError(
            f"the Milvus server at {self.uri} did not complete the {what}: {reason}"
        )

    def ready(self) -> tuple[bool, str]:
        """(whether a Strong query answers within 3 s now, why not); cached for a second.

        Strong, like every read: after a server restart, Eventually queries answer seconds
        before the query nodes have caught up and Strong reads stop timing out."""
        now = time.monotonic()
        if now - self._ready_at < READY_CACHE_S:
            return self._ready
        try:
            self.call(
                "readiness query",
                lambda c: c.query(
                    self.collection,
                    filter="id < 0",
                    output_fields=["id"],
                    limit=1,
                    consistency_level="Strong",  # ready = reads see every write again
                    timeout=min(self.timeout, 3.0),
                ),
            )
            self._ready = (True, "")
        except (ClusterUnavailableError, ValueError) as exc:
            self._ready = (False, str(exc))
        self._ready_at = time.monotonic()
        return self._ready

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- operations (Strong reads) -----------------------------------------------------------
    def upsert(self, rows: list[dict[str, Any]]) -> None:
        self.call("write", lambda c: c.upsert(self.collection, rows, timeout=self.timeout))

    def delete(self, ids: list[int]) -> None:
        self.call("delete", lambda c: c.delete(self.collection, ids=ids, timeout=self.timeout))

    def rows(self, ids: list[int], fields: list[str]) -> list[dict[str, Any]]:
        """The rows of those ``ids`` that exist (any order)."""
        if not ids:
            return []
        return self.call(
            "lookup",
            lambda c: list(
                c.query(
                    self.collection,
                    ids=ids,
                    output_fields=fields,
                    consistency_level="Strong",
                    timeout=self.timeout,
                )
            ),
        )

    def select(self, expr: str, fields: list[str], limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rows matching ``expr`` (Milvus picks which when more match)."""
        return self.call(
            "query",
            lambda c: list(
                c.query(
                    self.collection,
                    filter=expr,
                    output_fields=fields,
                    limit=limit,
                    consistency_level="Strong",
                    timeout=self.timeout,
                )
            ),
        )

    def count(self) -> int:
        rows = self.call(
            "count",
            lambda c: c.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                consistency_level="Strong",
                timeout=self.timeout,
            ),
        )
        return int(rows[0]["count(*)"])

    def search(
        self,
        codes: list[bytes],
        limit: int,
        expr: str,
        params: dict[str, Any],
        fields: list[str],
    ) -> list[list[dict[str, Any]]]:
        """Hits per query code (HAMMING on ``code``; ``params`` e.g. radius/range_filter)."""
        return self.call(
            "search",
            lambda c: [
                list(row)
                for row in c.search(
                    self.collection,
                    data=codes,
                    anns_field="code",
                    limit=limit,
                    filter=expr,
                    search_params={"metric_type": "HAMMING", "params": params},
                    output_fields=fields,
                    consistency_level="Strong",
                    timeout=self.timeout,
                )
            ],
        )
