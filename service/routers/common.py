"""Helpers shared by the routers: error responses for OpenAPI, reading and decoding uploads."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request, Response, UploadFile
from fastapi.routing import APIRoute
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from service.consistency import (
    TOKEN_DESCRIPTION,
    TOKEN_HEADER,
    TOKEN_PARAM,
    RequestConsistency,
    begin,
)
from service.deps import SettingsDep
from service.errors import ApiError
from service.jsonlimits import loads_bounded
from service.schemas import DEFAULT_K, MAX_RANK, ErrorResponse
from service.settings import Settings
from service.uploads import decode_image, read_capped


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers of a route (all share :class:`ErrorResponse`)."""
    text = {
        400: "The request body is not well-formed (e.g. broken multipart framing).",
        401: "Missing or wrong X-API-Key (writes only, when the server has a key).",
        404: "No item with this id.",
        409: "An id is already stored.",
        413: "An upload is larger than the size or pixel limits.",
        415: "An upload is not a readable image.",
        422: "A parameter or field is missing or not valid.",
        503: "The service is still loading, or (cluster mode) its Milvus server is unavailable.",
    }
    return {c: {"model": ErrorResponse, "description": text.get(c, "Error.")} for c in codes}


async def consistency(
    settings: SettingsDep,
    header: Annotated[
        str | None, Header(alias=TOKEN_HEADER, max_length=64, description=TOKEN_DESCRIPTION)
    ] = None,
    token: Annotated[
        str | None, Query(alias=TOKEN_PARAM, max_length=64, description=TOKEN_DESCRIPTION)
    ] = None,
) -> RequestConsistency:
    """The request's read consistency (``service/consistency.py``): ``--consistency``, and the
    token passed back (the query parameter wins over the header). An ``async`` dependency, so
    that the context variable it sets is the request's (worker threads get a copy)."""
    try:
        return begin(settings.consistency, token if token is not None else header)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


ConsistencyDep = Annotated[RequestConsistency, Depends(consistency)]
#: For routers: every route reads (and, for writes, records) at the request's consistency.
CONSISTENCY = [Depends(consistency)]


def write_token(response: Response, state: RequestConsistency) -> str | None:
    """Put a write's consistency token in the ``X-Consistency-Token`` header; returns it."""
    token = state.token
    if token is not None:
        response.headers[TOKEN_HEADER] = token
    return token


def check_k_radius(
    k: int | None, radius: int | None, offset: int = 0
) -> tuple[int | None, int | None]:
    """Exactly one of k (nearest neighbours) and radius (all within r bits); k defaults to 10
    (``DEFAULT_K``); ``offset`` pages k-NN results up to rank ``MAX_RANK``."""
    if k is not None and radius is not None:
        raise ApiError(
            422,
            f"give either k={k} or radius={radius}, not both: k asks for the k nearest "
            "items, radius for every item within that many bits",
        )
    if k is None and radius is None:
        k = DEFAULT_K
    if offset and radius is not None:
        raise ApiError(
            422, f"offset={offset} pages k-NN results: it cannot be used with radius={radius}"
        )
    if k is not None and offset + k > MAX_RANK:
        raise ApiError(
            422,
            f"offset={offset} + k={k} is {offset + k}: pages reach at most rank {MAX_RANK} "
            "(offset + k <= MAX_RANK)",
        )
    return k, radius


#: Largest JSON request body (a list of MAX_QUERY_CODES long codes and a filter).
MAX_JSON_BODY = 2 * 1024 * 1024


class BoundedJsonRequest(Request):
    """A request whose JSON body is decoded with size and depth bounds (``jsonlimits``)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_bounded(await self.body(), "the JSON body", MAX_JSON_BODY)
        return self._json


class BoundedJsonRoute(APIRoute):
    """A route that decodes its JSON body with :class:`BoundedJsonRequest` (FastAPI's
    "custom Request and APIRoute class" pattern): a 5,000-level nested body is a 422, not
    a ``RecursionError``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedJsonRequest(request.scope, request.receive))

        return bounded


async def read_images(
    uploads: Sequence[UploadFile], settings: Settings, field: str
) -> list[Image.Image]:
    """Read (size-capped) and decode uploads into RGB images, off the event loop."""
    if len(uploads) > settings.max_images:
        raise ApiError(
            413, f"{len(uploads)} images in one request: expected at most {settings.max_images}"
        )
    datas = []
    for up in uploads:
        if not isinstance(up, StarletteUploadFile):
            raise ApiError(422, f"form field {field!r} must be a file upload, not text")
        datas.append(
            (await read_capped(up, settings.max_upload_bytes, "image"), up.filename or field)
        )

    def _decode_all() -> list[Image.Image]:
        # Each image may use what the request's pixel budget has left (and no more than the
        # per-image cap): a request cannot decode more than max_request_pixels in all.
        images, left = [], settings.max_request_pixels
        for data, name in datas:
            allowed = min(settings.max_image_pixels, left)
            if allowed < 1:
                raise ApiError(
                    413,
                    f"image {name!r} is past the request's budget of max_request_pixels = "
                    f"{settings.max_request_pixels} decoded pixels: send fewer or smaller images",
                )
            try:
                image = decode_image(data, allowed, name)
            except ApiError as exc:
                if exc.status_code != 413 or allowed == settings.max_image_pixels:
                    raise
                raise ApiError(
                    413,
                    f"image {name!r} is past the request's budget of max_request_pixels = "
                    f"{settings.max_request_pixels} decoded pixels ({left} left for it): send "
                    "fewer or smaller images",
                ) from None
            images.append(image)
            left -= image.width * image.height
        return images

    return await run_in_threadpool(_decode_all)
