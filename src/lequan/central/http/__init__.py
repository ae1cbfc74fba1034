"""Central's signed HTTP API (``app``) and its ASGI entry point (``asgi``)."""
