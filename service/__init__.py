"""hashkd search service: a FastAPI app over hashkd encoders and indexes binary indexes.

>>> from service import Settings, create_app
>>> app = create_app(Settings(model="student/", database_model="teacher/", store="store/"))

The app and settings are imported lazily, so that ``hashkd --help`` (which loads
``service.cli`` to register ``serve``) does not import torch, FastAPI and the models.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from service.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(f"module 'service' has no attribute {name!r}")
