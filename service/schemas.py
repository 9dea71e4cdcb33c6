"""The API contract: every request and response shape of the REST API (OpenAPI source)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "v1"
#: The most nearest neighbours one search returns (the ``k`` query parameter's bound).
MAX_K = 1000
#: ``k`` when a search gives neither ``k`` nor ``radius``.
DEFAULT_K = 10
#: The deepest rank a k-NN page may reach: ``offset + k <= MAX_RANK`` (half of Milvus's 16384
#: hits per query, so that every backend can fetch the page and complete its tie group).
MAX_RANK = 8192
#: Most codes in one ``/v1/search/codes`` request.
MAX_QUERY_CODES = 1024
#: Most items in one page of ``GET /v1/items``.
MAX_LIST_LIMIT = 1000
#: Items per page of ``GET /v1/items`` when ``limit`` is not given.
DEFAULT_LIST_LIMIT = 100


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: one readable sentence, plus field errors for validation failures."""

    detail: str = Field(description="What was wrong with the request, in one sentence.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Per-field validation errors (422 only)."
    )


class Hit(BaseModel):
    id: int = Field(description="The item's int64 id.")
    distance: int = Field(
        ge=0, description="Hamming distance between the query code and the item code, in bits."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The JSON object stored with the item."
    )


class SearchResponse(BaseModel):
    results: list[Hit] = Field(description="Nearest first; ties by ascending id.")
    bits: int = Field(description="Code length K in bits.")
    took_ms: float = Field(description="Server time for this request, in milliseconds.")
    truncated: bool = Field(
        False, description="True when a radius search had more hits than max_range_results."
    )


class BatchSearchResponse(BaseModel):
    results: list[list[Hit]] = Field(
        description="One result list per uploaded image, in upload order."
    )
    bits: int
    took_ms: float
    truncated: bool = False


FILTER_DESCRIPTION = (
    "Only items whose metadata matches: a JSON object of top-level keys to a value (exact "
    'match) or a list of values (any of); several keys must all match, e.g. {"label": "cat"} '
    'or {"label": ["cat", "dog"], "split": "val"}. An item whose value is a list matches when '
    "any element matches. Results are the exact nearest among the matching items."
)


class CodeSearchRequest(BaseModel):
    """A search by precomputed codes (e.g. made on the client's device by the exported student)."""

    model_config = ConfigDict(extra="forbid")

    codes: str | list[str] = Field(
        description="One code or a list of codes, each as hex (K/8 bytes, most significant bit "
        "first, as returned by GET /v1/items/{id}).",
        examples=[["0f3a9c51"]],
    )
    k: int | None = Field(
        None,
        ge=1,
        le=MAX_K,
        description=f"Nearest items per code (1-{MAX_K}; default {DEFAULT_K}).",
    )
    radius: int | None = Field(
        None, ge=0, le=65536, description="Every item within this many bits instead of k."
    )
    offset: int = Field(
        0,
        ge=0,
        le=MAX_RANK,
        description=f"Skip this many nearest items (k-NN pages); offset + k <= {MAX_RANK}.",
    )
    filter: dict[str, Any] | None = Field(None, description=FILTER_DESCRIPTION)


TOKEN_FIELD_DESCRIPTION = (
    "Cluster mode: the consistency token of this write (also in the X-Consistency-Token "
    "header). Pass it back (X-Consistency-Token header or consistency_token query parameter) "
    "and a read through any replica sees this write. Opaque decimal text; absent in the "
    "embedded mode, whose reads always see every acknowledged write."
)


class AddResponse(BaseModel):
    ids: list[int] = Field(
        description="Ids of the added items, in upload order (durable when returned)."
    )
    consistency_token: str | None = Field(None, description=TOKEN_FIELD_DESCRIPTION)


class ItemResponse(BaseModel):
    id: int
    bits: int
    code: str = Field(description="The packed code as hex (K/8 bytes, most significant bit first).")
    metadata: dict[str, Any]
    has_thumbnail: bool


class UpsertResponse(BaseModel):
    id: int
    created: bool = Field(description="True when the item did not exist before this request.")
    consistency_token: str | None = Field(None, description=TOKEN_FIELD_DESCRIPTION)


class ItemSummary(BaseModel):
    id: int
    code: str = Field(description="The packed code as hex.")
    metadata: dict[str, Any]
    has_thumbnail: bool


class ItemListResponse(BaseModel):
    items: list[ItemSummary] = Field(description="Items in ascending id order.")
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null on the last page."
    )


class DeleteResponse(BaseModel):
    id: int
    deleted: bool = True
    consistency_token: str | None = Field(None, description=TOKEN_FIELD_DESCRIPTION)


class ModelInfo(BaseModel):
    path: str
    backbone: str
    bits: int
    img_size: int
    role: str
    backend: str
    precision: str = Field(description="ONNX graph in use: fp32 or int8 (fp32 for other backends).")


class IndexInfo(BaseModel):
    spec: str
    kind: str
    size: int = Field(description="Number of items in the index.")
    supports: list[str]
    snapshot_seq: int = Field(
        description="Change sequence number of the last durable index snapshot."
    )
    recovery: str = Field(
        description="How the index was loaded at start: snapshot, snapshot+replay or rebuild "
        "(cluster: nothing is kept locally)."
    )
    mode: Literal["embedded", "cluster"] = Field(
        "embedded",
        description="embedded: this process's SQLite store and index; cluster: a Milvus "
        "collection shared by every replica (--cluster).",
    )
    collection: str | None = Field(None, description="The Milvus collection (cluster mode).")
    consistency: str | None = Field(
        None,
        description="Milvus consistency level of reads (cluster mode): Bounded (default; a "
        "read passing a consistency token waits for that write) or Strong.",
    )
    thumbnails: Literal["store", "none"] | None = Field(
        None,
        description="Cluster mode: 'store' when thumbnails are kept in a shared directory "
        "(--thumbnail-store), 'none' otherwise.",
    )


class BatchingInfo(BaseModel):
    enabled: bool
    max_batch: int
    max_wait_ms: float


class CodesetInfo(BaseModel):
    source: str = Field(description="The code set loaded at start-up (hashkd serve --codes).")
    digest: str = Field(description="SHA-256 of its files.")
    count: int = Field(description="Codes in the code set.")
    added: int = Field(description="Items added by this start-up.")
    already_stored: int = Field(description="Codes that were stored before this start-up.")
    thumbnails: int = Field(description="Thumbnails made from the files by this start-up.")
    unreadable: int = Field(description="Files that could not be read for a thumbnail.")
    path_root: str | None = Field(description="Folder the paths are relative to.")
    skipped: bool = Field(description="True when the code set was loaded before: nothing read.")


class InfoResponse(BaseModel):
    version: str
    api: str = API_VERSION
    protocol: Literal["symmetric", "asymmetric"] = Field(
        description="symmetric: one model encodes queries and items; asymmetric: the query model encodes "
        "queries and the database model encodes stored items."
    )
    bits: int
    query_model: ModelInfo
    database_model: ModelInfo
    index: IndexInfo
    items: int = Field(description="Number of items in the durable store.")
    batching: BatchingInfo
    auth: bool = Field(description="True when writes need the X-API-Key header.")
    limits: dict[str, int]
    codes: CodesetInfo | None = Field(
        None, description="The code set loaded at start-up (hashkd serve --codes), if any."
    )


class HealthResponse(BaseModel):
    status: str
    detail: str | None = Field(None, description="Why the service is not ready.")
