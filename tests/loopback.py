"""HTTP clients of the servers the tests start: plain HTTP on a loopback port.

httpx builds a TLS context for every client it makes and loads the CA bundle
into it, which costs far more CPU than the request itself. These clients never
use TLS, yet a test that opens a connection of its own per request (as many
channels and tills at once do) or polls a server that is starting paid for a
context each time, on the cores the servers under test need. One context, made
once, serves every client here; each client still opens its own connections.
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import httpx

__all__ = ["loopback_client"]


@cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def loopback_client(base_url: str = "", **options: Any) -> httpx.Client:
    """An ``httpx.Client`` as ``httpx.Client(base_url, **options)``, without a TLS context
    of its own (see the module's docstring)."""
    return httpx.Client(base_url=base_url, verify=_tls(), **options)
