"""The ASGI entry point of ``lequan central serve`` (``uvicorn --factory``, one central
per worker process)."""

from __future__ import annotations

from typing import Any

from lequan.central.bootstrap import build_central
from lequan.central.config import CentralSettings
from lequan.central.http.app import CentralApp, bounded, create_app
from lequan.logging import configure_logging

__all__ = ["create"]


def create() -> Any:
    settings = CentralSettings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    central = build_central(settings, create_keys=False)
    app = create_app(
        CentralApp(
            central.service,
            central.nonces,
            signature_max_skew_s=settings.signature_max_skew_s,
            sweep_interval_s=settings.sweep_interval_s,
            sweep_batch_max=settings.sweep_batch_max,
        )
    )
    return bounded(app, body_bytes_max=settings.request_body_bytes_max)
