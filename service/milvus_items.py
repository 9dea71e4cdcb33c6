"""The collections of cluster mode: the service's source of truth, shared by every replica.

Items (``auto_id=False``; every field of an item but its thumbnail, nothing kept in a replica)::

    id         INT64 primary key        the item's id
    code       BINARY_VECTOR(dim=K)     its code, index BIN_FLAT, metric HAMMING (exact)
    metadata   JSON                     its metadata object (at most 65,536 bytes, Milvus's limit)
    terms      JSON {"t": [digest]}     its filter terms (``service/milvus_terms.py``)
    thumb      INT64                    version of its thumbnail in the thumbnail store (0: none)

Id blocks (``<collection>_idblocks``, ``service/milvus_ids.py``): one row per block of 2^20
ids leased by a replica for new ids (``block`` INT64 primary key, ``owner``, ``leased_ms``, and
an 8-bit ``v`` vector because Milvus needs a vector field in every collection).

**Consistency.** Reads run at the level of the current request
(``service/consistency.py``): ``Bounded`` by default (Milvus serves from what its query nodes
have applied, waiting only when they lag more than its ``gracefulTime``, 5 s by default), a
``Customized`` guarantee timestamp when the request passed a consistency token, or ``Strong``
(``--consistency strong``, and the few reads that must see every acknowledged write: the
duplicate-id and reserved-id checks of explicit-id adds, a ``PUT``'s read of the row it
replaces, a delete's existence check, id-block leases and ``/readyz``). Writes are acknowledged
when Milvus's upsert/delete returns (the rows are then in its write-ahead log); their
``MutationResult.timestamp`` is recorded as the request's consistency token.

**Errors by kind** (:meth:`MilvusItems.call`): data Milvus refuses (pymilvus's client-side
checks, server code 1100 "invalid parameter", the legacy IllegalArgument codes) raise
:class:`ClusterDataError` (the API's 422); a server that cannot be reached, times out, is not
ready, rate-limits or fails raises :class:`ClusterUnavailableError` (503). The client connects
lazily and gRPC reconnects by itself; a collection found unloaded or missing is loaded or
created again on the next call, so replicas recover without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from service.consistency import current

log = logging.getLogger("service.cluster")

T = TypeVar("T")

#: Milvus's limits: hits per search / rows per limited query, bytes per JSON field.
MAX_HITS = 16384
MAX_JSON_BYTES = 65536
#: Every field of an item row, and of an id-block row.
ROW_FIELDS = ("id", "code", "metadata", "terms", "thumb")
BLOCK_FIELDS = ("block", "owner", "leased_ms", "v")
BLOCKS_SUFFIX = "_idblocks"
#: Seconds a readiness answer is reused (``/readyz`` probes are frequent).
READY_CACHE_S = 1.0
#: Milvus status codes naming a request Milvus refuses as invalid (merr.ErrParameterInvalid
#: and its kin; the legacy ErrorCode IllegalArgument 5, IllegalDimension 7, IllegalRowRecord 11,
#: IllegalVectorID 12 in ``compatible_code``).
_DATA_CODES = frozenset({1100, 1101})
_DATA_LEGACY_CODES = frozenset({5, 7, 11, 12})
#: Substrings of Milvus errors after which the collection must be opened (loaded) again.
_REOPEN_HINTS = ("not loaded", "collection not found", "can't find collection", "not exist")


class ClusterUnavailableError(Exception):
    """The Milvus server did not answer (down, unreachable, still loading): the API's 503."""


class ClusterLimitError(ValueError):
    """An item exceeds a limit of Milvus (JSON size, hits per query): the API's 422."""


class ClusterDataError(ClusterLimitError):
    """Milvus (or pymilvus's checks before sending) refused the request's data: the API's 422."""


def _describe(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    if callable(details):  # a grpc.RpcError
        return str(details() or exc)
    return str(getattr(exc, "message", "") or exc).strip()


def error_kind(exc: BaseException) -> str:
    """``data`` (a refused request: 422), ``reopen`` (the collection must be loaded or created
    again) or ``unavailable`` (503) for an exception raised by a pymilvus call."""
    from pymilvus import exceptions as mx

    client_side = (
        mx.ParamError,
        mx.DataTypeNotMatchException,
        mx.DataNotMatchException,
        mx.DataTypeNotSupportException,
        mx.PrimaryKeyException,
        mx.FieldTypeException,
    )
    if isinstance(exc, client_side):
        return "data"
    if isinstance(exc, mx.MilvusException):
        if exc.code in _DATA_CODES or (
            exc.code in (0, 1, 65535) and getattr(exc, "compatible_code", 0) in _DATA_LEGACY_CODES
        ):
            return "data"
        if any(h in _describe(exc).lower() for h in _REOPEN_HINTS):
            return "reopen"
    return "unavailable"


def _read() -> dict[str, Any]:
    return current().read_options()


STRONG = {"consistency_level": "Strong"}


class MilvusItems:
    """Thread-safe access to the collections of one hashkd cluster (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        collection: str,
        bits: int,
        timeout: float = 10.0,
        token: str | None = None,
    ) -> None:
        self.uri, self.collection, self.bits = uri, collection, int(bits)
        self.blocks = collection + BLOCKS_SUFFIX
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
        """The client, with both collections created (first replica) or checked, and loaded."""
        if self._opened:
            return self._client
        with self._open_lock:
            if self._opened:
                return self._client
            if self._client is None:
                self._client = self._connect()
            client = self._client
            for name, create in (
                (self.collection, self._schema),
                (self.blocks, self._block_schema),
            ):
                if client.has_collection(name, timeout=self.timeout):
                    self._check_schema(client, name)
                else:
                    self._create(client, name, *create(client))
                client.load_collection(name, timeout=max(self.timeout, 30.0))
            self._opened = True
            return client

    def _schema(self, client: Any) -> tuple[Any, Any]:
        from pymilvus import DataType

        schema = client.create_schema(
            auto_id=False, enable_dynamic_field=False, description="hashkd items"
        )
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=self.bits)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("terms", DataType.JSON)
        schema.add_field("thumb", DataType.INT64)
        params = client.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT", metric_type="HAMMING")
        return schema, params

    @staticmethod
    def _block_schema(client: Any) -> tuple[Any, Any]:
        from pymilvus import DataType

        schema = client.create_schema(
            auto_id=False, enable_dynamic_field=False, description="hashkd id blocks"
        )
        schema.add_field("block", DataType.INT64, is_primary=True)
        schema.add_field("owner", DataType.VARCHAR, max_length=256)
        schema.add_field("leased_ms", DataType.INT64)
        schema.add_field("v", DataType.BINARY_VECTOR, dim=8)
        params = client.prepare_index_params()
        params.add_index(field_name="v", index_type="BIN_FLAT", metric_type="HAMMING")
        return schema, params

    def _create(self, client: Any, name: str, schema: Any, params: Any) -> None:
        from pymilvus.exceptions import MilvusException

        try:
            client.create_collection(
                name,
                schema=schema,
                index_params=params,
                consistency_level="Bounded",
                timeout=self.timeout,
            )
        except MilvusException:
            # Another replica may have created it at the same moment: use theirs if it fits.
            if not client.has_collection(name, timeout=self.timeout):
                raise
            self._check_schema(client, name)
        log.info("created Milvus collection %r at %s", name, self.uri)

    def _check_schema(self, client: Any, name: str) -> None:
        desc = client.describe_collection(name, timeout=self.timeout)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        if name == self.blocks:
            if set(BLOCK_FIELDS) - set(fields):
                raise ValueError(
                    f"Milvus collection {name!r} at {self.uri!r} is not the id blocks of hashkd "
                    f"collection {self.collection!r} (fields {sorted(fields)}): use another "
                    "--collection"
                )
            return
        dim = fields.get("code", {}).get("params", {}).get("dim")
        if set(ROW_FIELDS) - set(fields) or dim is None or int(dim) != self.bits:
            raise ValueError(
                f"Milvus collection {name!r} at {self.uri!r} is not a {self.bits}-bit hashkd "
                f"items collection with fields {', '.join(ROW_FIELDS)} (it has fields "
                f"{sorted(fields)}, code dim {dim!r}; collections of hashkd before the "
                "thumbnail store have a 'thumbnail' field instead of 'thumb'): use another "
                "--collection"
            )

    def call(self, what: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation(client)``; Milvus failures become :class:`ClusterUnavailableError`
        or, for data Milvus refuses, :class:`ClusterDataError` (see :func:`error_kind`)."""
        import grpc
        from pymilvus.exceptions import MilvusException

        for attempt in (1, 2):
            try:
                return operation(self._open())
            except MilvusException as exc:
                kind, reason = error_kind(exc), _describe(exc)
                if kind == "data":
                    raise ClusterDataError(f"Milvus refused the {what}: {reason}") from None
                self._opened = False  # e.g. the server restarted: load (or create) again
                if kind == "reopen" and attempt == 1:
                    continue
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

        Strong: after a server restart, Bounded queries answer seconds before the query nodes
        have caught up and Strong reads (and token reads) stop timing out."""
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
                    timeout=min(self.timeout, 3.0),
                    **STRONG,
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

    # -- writes ------------------------------------------------------------------------------
    def _mutate(self, what: str, mutation: Callable[[Any, Any], Any]) -> int:
        """Run a write on pymilvus's connection handler and record its timestamp as the current
        request's consistency token. (``MilvusClient.upsert``/``delete`` drop the
        ``MutationResult`` and its ``timestamp``; the handler returns it.) Milvus 2.3 answers a
        delete with timestamp 0: then a timestamp allocated by Milvus after the write returned
        stands in, since Milvus's timestamps are global and increasing, and a read guaranteed
        at it sees every write acknowledged before (milvus-lite has none: no token)."""

        def run(client: Any) -> int:
            conn, context = client._get_connection(), client._generate_call_context()
            timestamp = int(mutation(conn, context).timestamp)
            if not timestamp:
                timestamp = int(conn.alloc_timestamp(timeout=self.timeout, context=context) or 0)
            return timestamp

        timestamp = self.call(what, run)
        current().note_write(timestamp)
        return timestamp

    def upsert(self, rows: list[dict[str, Any]], collection: str | None = None) -> int:
        """Insert or replace rows; returns Milvus's write timestamp."""
        name = collection or self.collection
        return self._mutate(
            "write",
            lambda conn, ctx: conn.upsert_rows(name, rows, timeout=self.timeout, context=ctx),
        )

    def delete(self, ids: list[int]) -> int:
        """Delete rows by id; returns Milvus's write timestamp."""
        expr = f"id in [{', '.join(str(int(i)) for i in ids)}]"
        return self._mutate(
            "delete",
            lambda conn, ctx: conn.delete(self.collection, expr, timeout=self.timeout, context=ctx),
        )

    # -- reads -------------------------------------------------------------------------------
    def rows(
        self, ids: list[int], fields: list[str], *, strong: bool = False
    ) -> list[dict[str, Any]]:
        """The rows of those ``ids`` that exist (any order)."""
        if not ids:
            return []
        level = STRONG if strong else _read()
        return self.call(
            "lookup",
            lambda c: list(
                c.query(
                    self.collection, ids=ids, output_fields=fields, timeout=self.timeout, **level
                )
            ),
        )

    def select(
        self,
        expr: str,
        fields: list[str],
        limit: int,
        *,
        strong: bool = False,
        collection: str | None = None,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` rows matching ``expr`` (Milvus picks which when more match)."""
        level = STRONG if strong else _read()
        return self.call(
            "query",
            lambda c: list(
                c.query(
                    collection or self.collection,
                    filter=expr,
                    output_fields=fields,
                    limit=limit,
                    timeout=self.timeout,
                    **level,
                )
            ),
        )

    def count(self) -> int:
        level = _read()
        rows = self.call(
            "count",
            lambda c: c.query(
                self.collection,
                filter="",
                output_fields=["count(*)"],
                timeout=self.timeout,
                **level,
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
        level = _read()
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
                    timeout=self.timeout,
                    **level,
                )
            ],
        )
