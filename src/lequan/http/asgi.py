"""The ASGI entry point for ``uvicorn --factory`` (one platform per worker process)."""

from __future__ import annotations

import gc

from fastapi import FastAPI

from lequan.bootstrap import build_runtime, start_platform
from lequan.config import Settings
from lequan.http.app import create_app
from lequan.logging import configure_logging

__all__ = ["create", "settle_heap"]


def create() -> FastAPI:
    settings = Settings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    rt = build_runtime(settings, create_keys=False)
    app = create_app(start_platform(rt))
    settle_heap(settings.gc_gen0_threshold)
    return app


def settle_heap(gen0_threshold: int) -> None:
    """Take what the process built at start (framework, schemas, caches) out of the
    garbage collector's passes, and collect young objects less often.

    Without this, every full collection walks the whole framework's heap
    again while a batch of claims is being answered.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
