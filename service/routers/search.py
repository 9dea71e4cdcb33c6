"""Search by image: ``POST /v1/search`` and ``POST /v1/search/batch``."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from service.deps import EngineDep, SettingsDep
from service.routers.common import check_k_radius, error_responses, read_images
from service.schemas import DEFAULT_K, MAX_K, BatchSearchResponse, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])

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
ERRORS = error_responses(400, 413, 415, 422, 503)


@router.post(
    "/search", response_model=SearchResponse, responses=ERRORS, summary="Search by one image"
)
async def search(
    engine: EngineDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="The query image (JPEG, PNG, WebP ...).")],
    k: K = None,
    radius: RADIUS = None,
) -> SearchResponse:
    """Encode the image with the query model and return its nearest stored items."""
    start = time.perf_counter()
    k, radius = check_k_radius(k, radius)
    images = await read_images([image], settings, "image")
    results, truncated = await engine.asearch_images(images, k, radius)
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
    k: K = None,
    radius: RADIUS = None,
) -> BatchSearchResponse:
    """One result list per uploaded image, in upload order."""
    start = time.perf_counter()
    k, radius = check_k_radius(k, radius)
    decoded = await read_images(images, settings, "images")
    results, truncated = await engine.asearch_images(decoded, k, radius)
    return BatchSearchResponse(
        results=results,
        bits=engine.bits,
        took_ms=(time.perf_counter() - start) * 1000,
        truncated=truncated,
    )
