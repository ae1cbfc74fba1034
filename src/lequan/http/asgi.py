"""The ASGI entry point for ``uvicorn --factory`` (one platform per worker process)."""

from __future__ import annotations

from fastapi import FastAPI

from lequan.bootstrap import build_runtime, start_platform
from lequan.config import Settings
from lequan.http.app import create_app
from lequan.logging import configure_logging

__all__ = ["create"]


def create() -> FastAPI:
    settings = Settings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    rt = build_runtime(settings, create_keys=False)
    return create_app(start_platform(rt))
