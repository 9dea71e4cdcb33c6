"""The search page: plain HTML/CSS/JS from ``service/static`` (no build step), at ``/ui/``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(url="/ui/", status_code=307)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR, html=True)
