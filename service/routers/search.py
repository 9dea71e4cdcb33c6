"""Search: by image (``POST /v1/search``, ``/v1/search/batch``), by code
(``POST /v1/search/codes``) and by stored item (``GET /v1/items/{id}/similar``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, File, Path, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from service.deps import EngineDep, SettingsDep
from service.filters import MAX_FILTER_BYTES, check_filter, parse_filter
from service.routers.common import (
    CONSISTENCY,
    BoundedJsonRoute,
    check_k_radius,
    error_responses,
    read_images,
)
from service.schemas import (
    DEFAULT_K,
    FILTER_DESCRIPTION,
    MAX_K,
    MAX_QUERY_CODES,
    MAX_RANK,
    BatchSearchResponse,
    CodeSearchRequest,
    SearchResponse,
)
from service.terms import Filter
from service.uploads import MAX_ID, parse_hex_codes

router = APIRouter(prefix="/v1", tags=["search"], dependencies=CONSISTENCY)
#: JSON-body searches: bounded JSON decoding and their own body limit (see create_app).
codes_router = APIRouter(
    prefix="/v1", tags=["search"], route_class=BoundedJsonRoute, dependencies=CONSISTENCY
)

K = Annotated[
    int | None,
    Query(
        ge=1,
        le=MAX_K,
        description=f"Number of nearest items to return (1-{MAX_K}; default {DEFAULT_K}).",
    ),
]
RADIUS = Annotated[
    int | None,
    Query(
        ge=0,
        le=65536,
        description="Return every item within this Hamming distance (inclusive) instead of k.",
    ),
]
OFFSET = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_RANK,
        description=f"Skip this many nearest items: the next page of k-NN results in the same "
        f"(distance, id) order. offset + k <= {MAX_RANK}; not with radius.",
    ),
]
FILTER = Annotated[
    str | None,
    Query(
        alias="filter",
        max_length=MAX_FILTER_BYTES,
        description=FILTER_DESCRIPTION + " Sent as JSON text.",
    ),
]
ERRORS = error_responses(400, 413, 415, 422, 503)


@dataclass(frozen=True)
class SearchParams:
    """The query parameters the GET/POST searches share, checked once."""

    k: int | None
    radius: int | None
    offset: int
    flt: Filter | None


def search_params(
    k: K = None, radius: RADIUS = None, offset: OFFSET = 0, flt: FILTER = None
) -> SearchParams:
    k, radius = check_k_radius(k, radius, offset)
    return SearchParams(k, radius, offset, parse_filter(flt))


Params = Annotated[SearchParams, Depends(search_params)]


@router.post(
    "/search", response_model=SearchResponse, responses=ERRORS, summary="Search by one image"
)
async def search(
    engine: EngineDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="The query image (JPEG, PNG, WebP ...).")],
    params: Params,
) -> SearchResponse:
    """Encode the image with the query model and return its nearest stored items."""
    start = time.perf_counter()
    images = await read_images([image], settings, "image")
    results, truncated = await engine.asearch_images(
        images, params.k, params.radius, flt=params.flt, offset=params.offset
    )
    return SearchResponse(
        results=results[0],
        bits=engine.bits,
        took_ms=(time.perf_counter() - start) * 1000,
        truncated=truncated,
    )


@router.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    responses=ERRORS,
    summary="Search by several images",
)
async def search_batch(
    engine: EngineDep,
    settings: SettingsDep,
    images: Annotated[
        list[UploadFile], File(description="Query images; repeat the field once per image.")
    ],
    params: Params,
) -> BatchSearchResponse:
    """One result list per uploaded image, in upload order."""
    start = time.perf_counter()
    decoded = await read_images(images, settings, "images")
    results, truncated = await engine.asearch_images(
        decoded, params.k, params.radius, flt=params.flt, offset=params.offset
    )
    return BatchSearchResponse(
        results=results,
        bits=engine.bits,
        took_ms=(time.perf_counter() - start) * 1000,
        truncated=truncated,
    )


@codes_router.post(
    "/search/codes",
    response_model=BatchSearchResponse,
    responses=error_responses(400, 413, 422, 503),
    summary="Search by codes (hex)",
)
async def search_codes(engine: EngineDep, body: CodeSearchRequest) -> BatchSearchResponse:
    """One result list per code, in order: for clients that encode images themselves (with the
    exported query model). Codes must have the index's length."""
    start = time.perf_counter()
    k, radius = check_k_radius(body.k, body.radius, body.offset)
    wanted = check_filter(body.filter)
    codes = parse_hex_codes(body.codes, engine.bits, MAX_QUERY_CODES)
    results, truncated = await run_in_threadpool(
        engine.search, codes, k, radius, flt=wanted, offset=body.offset
    )
    return BatchSearchResponse(
        results=results,
        bits=engine.bits,
        took_ms=(time.perf_counter() - start) * 1000,
        truncated=truncated,
    )


@router.get(
    "/items/{item_id}/similar",
    response_model=SearchResponse,
    responses=error_responses(404, 422, 503),
    summary="More like this: items nearest to a stored item",
)
async def similar(
    engine: EngineDep,
    item_id: Annotated[int, Path(ge=0, le=MAX_ID, description="The stored item's id.")],
    params: Params,
) -> SearchResponse:
    """The item's stored code is the query; the item itself is not among the results."""
    start = time.perf_counter()
    results, truncated = await run_in_threadpool(
        engine.similar, item_id, params.k, params.radius, flt=params.flt, offset=params.offset
    )
    return SearchResponse(
        results=results,
        bits=engine.bits,
        took_ms=(time.perf_counter() - start) * 1000,
        truncated=truncated,
    )
