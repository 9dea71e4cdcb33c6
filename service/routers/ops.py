"""Operations: ``/v1/info``, ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

import hashkd
from service.deps import EngineDep
from service.routers.common import CONSISTENCY, error_responses
from service.schemas import HealthResponse, InfoResponse

router = APIRouter(tags=["ops"])


@router.get(
    "/v1/info",
    response_model=InfoResponse,
    responses=error_responses(422, 503),
    dependencies=CONSISTENCY,
    summary="Models, protocol and index",
)
def info(engine: EngineDep, request: Request) -> InfoResponse:
    loaded = request.app.state.codeset  # hashkd serve --codes
    codes = loaded.as_dict() if loaded is not None else None
    return InfoResponse(version=hashkd.__version__, codes=codes, **engine.info())


@router.get(
    "/healthz",
    response_model=HealthResponse,
    response_model_exclude_none=True,
    summary="Liveness: the process answers",
)
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={
        503: {
            "model": HealthResponse,
            "description": "Models or index not loaded, or (cluster mode) Milvus not answering.",
        }
    },
    summary="Readiness: models and index are loaded (cluster mode: and Milvus answers)",
)
async def readyz(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        return JSONResponse({"status": "loading"}, status_code=503)
    ready, why = await run_in_threadpool(engine.ready)
    if not ready:
        return JSONResponse({"status": "unavailable", "detail": why}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.render()
    return Response(content=body, media_type=content_type)
