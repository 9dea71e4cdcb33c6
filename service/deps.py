"""Dependencies shared by the routers: settings, the engine and the API-key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.engine import Engine
from service.errors import ApiError
from service.settings import Settings

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required for writes (POST/DELETE on /v1/items) when the server has an API key.",
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "the service is not ready: models and index are still loading")
    return engine


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    key: Annotated[str | None, Security(_api_key_header)] = None,
) -> None:
    """Writes need ``X-API-Key`` when the server has a key; reads stay open."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if not key or not secrets.compare_digest(key.encode(), expected):
        raise ApiError(
            401,
            "this write needs a valid API key in the X-API-Key header"
            if key
            else "this write needs an API key: send it in the X-API-Key header",
            headers={"WWW-Authenticate": "APIKey"},
        )


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
WriteAccess = Depends(require_api_key)
