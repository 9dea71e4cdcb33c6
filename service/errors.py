"""Exception handlers: every failure becomes a JSON ``{"detail": "..."}`` answer.

Domain errors raised below the routers (store, index, image decoding) are mapped to their
HTTP status here, so routers stay free of try/except ladders:

====================================  ======
error                                  status
====================================  ======
ApiError (upload checks)               its own
DuplicateItemError / DuplicateIdError  409
StoreError (out of ids)                409
UnknownItemError / UnknownIdError      404
UnsupportedOperation                   422
ClusterLimitError (a Milvus limit)     422
ClusterUnavailableError (Milvus down)  503
RequestValidationError                 422
anything else                          500 (logged; a last resort)
====================================  ======
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexes.errors import DuplicateIdError, UnknownIdError, UnsupportedOperation
from service.milvus_items import ClusterLimitError, ClusterUnavailableError
from service.store import DuplicateItemError, StoreError, UnknownItemError

log = logging.getLogger("service")


class ApiError(StarletteHTTPException):
    """A request problem with its HTTP status and one-sentence detail.

    An ``HTTPException`` so that it also passes through FastAPI's body parsing unchanged
    (raised by the bounded JSON decoder of ``service.routers.common.BoundedJsonRoute``).
    """

    def __init__(
        self, status_code: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code, detail, headers)
        self.detail: str = detail

    def __str__(self) -> str:
        return self.detail


def _json(
    status: int, detail: str, errors: list[dict[str, Any]] | None = None, headers=None
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
    where = ".".join(loc) or "request"
    msg = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        place = err.get("loc", ("",))[0]
        kind = {"body": "form field", "query": "query parameter", "header": "header"}.get(
            str(place), "field"
        )
        return f"{kind} {where!r} is required"
    value = err.get("input")
    if (
        isinstance(value, (str, int, float))
        and not isinstance(value, bool)
        and len(str(value)) <= 80
    ):
        return f"{where}={value!r} is not valid: {msg}"
    return f"{where}: {msg}"


def _clean(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        item = {
            "loc": list(e.get("loc", ())),
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status_code, exc.detail, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        detail = "; ".join(_describe(e) for e in errors[:3]) or "the request is not valid"
        return _json(422, detail, _clean(errors))

    @app.exception_handler(DuplicateItemError)
    @app.exception_handler(DuplicateIdError)
    @app.exception_handler(StoreError)  # e.g. the store has run out of int64 ids
    async def _duplicate(request: Request, exc: Exception) -> JSONResponse:
        return _json(409, str(exc))

    @app.exception_handler(UnknownItemError)
    @app.exception_handler(UnknownIdError)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        return _json(404, str(exc))

    @app.exception_handler(ClusterUnavailableError)
    async def _cluster_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _json(503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(UnsupportedOperation)
    @app.exception_handler(ClusterLimitError)
    async def _unsupported(request: Request, exc: Exception) -> JSONResponse:
        return _json(422, str(exc))

    @app.exception_handler(Exception)
    async def _last_resort(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, f"internal error ({type(exc).__name__}); the server logged the details")


_PLAIN_DETAILS = {
    413: "the request body is larger than this endpoint accepts (see the limits in /v1/info)",
}


class JsonErrorMiddleware:
    """Turn the few plain-text error answers produced below the routers into JSON.

    Starlette's request-body limit answers 413 with a plain-text body before any exception
    handler runs; clients (and the web page) rely on every error having a JSON ``detail``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"rewrite": False, "start": None, "chunks": []}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                ctype = headers.get(b"content-type", b"")
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    state["rewrite"], state["start"] = True, message
                    return
                await send(message)
            elif message["type"] == "http.response.body" and state["rewrite"]:
                state["chunks"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status = state["start"]["status"]
                text = b"".join(state["chunks"]).decode("utf-8", "replace").strip()
                detail = _PLAIN_DETAILS.get(status, text or f"HTTP error {status}")
                if status in _PLAIN_DETAILS and text:
                    detail = f"{text}: {detail}"
                body = json.dumps({"detail": detail}).encode()
                keep = [
                    (k, v)
                    for k, v in state["start"].get("headers", [])
                    if k.lower() not in (b"content-type", b"content-length")
                ]
                await send(
                    {
                        "type": "http.response.start",
                        "status": status,
                        "headers": [
                            *keep,
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            else:
                await send(message)

        await self.app(scope, receive, send_wrapper)
