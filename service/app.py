"""The application factory: ``create_app(settings) -> FastAPI``.

Following FastAPI's "Bigger Applications" layout: one router per resource, settings and
auth as dependencies, models and the index loaded in ``lifespan`` onto ``app.state``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.codeset_loader import CodesetLoadError, load_settings_codeset
from service.engine import Engine
from service.errors import JsonErrorMiddleware, install_error_handlers
from service.metrics import Metrics, MetricsMiddleware
from service.routers import items, ops, search, ui
from service.routers.common import MAX_JSON_BODY
from service.settings import Settings

log = logging.getLogger("service")

DESCRIPTION = """Image search over binary hash codes (hashkd).

Upload an image to `/v1/search` to find the stored items whose K-bit codes are nearest in
Hamming distance; or search by precomputed codes (`/v1/search/codes`) or by a stored item
(`/v1/items/{id}/similar`), optionally restricted by a metadata `filter` and paged with
`offset`. Add items by image (`/v1/items`) or as precomputed codes (`/v1/items/codes`),
replace them (`PUT /v1/items/{id}`) and page through them (`GET /v1/items`). Writes need the
`X-API-Key` header when the server has a key.
"""

#: Multipart framing around files (boundaries, part headers) on top of the files' bytes.
MULTIPART_SLACK = 64 * 1024
#: Routes that take no body.
SMALL_BODY = 64 * 1024


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the models and the index are loaded when its lifespan starts."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = None
        engine = await run_in_threadpool(Engine, settings, metrics)
        if settings.codes is not None:  # hashkd serve --codes: load before answering
            try:
                app.state.codeset = await run_in_threadpool(load_settings_codeset, engine, settings)
            except ValueError as exc:  # a bad or conflicting code set: one line, no traceback
                log.error("could not load the code set %s: %s", settings.codes, exc)
                await run_in_threadpool(engine.close)
                raise CodesetLoadError(str(exc)) from None
            except BaseException:
                await run_in_threadpool(engine.close)
                raise
        app.state.engine = engine
        try:
            yield
        finally:
            app.state.engine = None
            await run_in_threadpool(engine.close)

    image_body = (
        settings.max_upload_bytes * settings.max_images
        + settings.max_metadata_bytes
        + MULTIPART_SLACK
    )
    codes_body = (
        4 * settings.max_codes_bytes
    )  # codes, ids, labels, paths + settings.max_metadata_bytes + MULTIPART_SLACK
    app = FastAPI(
        title="hashkd image search",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
        form_limits={
            "max_files": settings.max_images,
            "max_part_size": settings.max_metadata_bytes,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = None
    app.state.codeset = None
    install_error_handlers(app)
    # Body limits per router (inside the middleware stack, so JsonErrorMiddleware sees the 413).
    app.include_router(search.router, max_body_size=image_body)
    app.include_router(search.codes_router, max_body_size=MAX_JSON_BODY)
    app.include_router(items.codes_router, max_body_size=codes_body)
    app.include_router(items.router, max_body_size=image_body)
    app.include_router(ops.router, max_body_size=SMALL_BODY)
    app.include_router(ui.router, max_body_size=SMALL_BODY)
    app.mount("/ui", ui.static_files(), name="ui")
    app.add_middleware(JsonErrorMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
