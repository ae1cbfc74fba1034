"""Signed calls to the lequan API for channels, acquirers, the demo and the tests.

``LequanAuth`` is an ``httpx.Auth``: give it to a client and every request
leaves with the four signature headers of ``lequan.signing``::

    import httpx
    from lequan.client import LequanAuth

    with httpx.Client(
        base_url="https://lequan.example.gov.cn",
        auth=LequanAuth("wechat", secret),
        timeout=httpx.Timeout(5.0),
    ) as client:
        response = client.post("/v1/claims", json={"round_id": "r1"})

It works the same with ``httpx.AsyncClient``. Each request gets a fresh
nonce and the current time, so a retry is signed anew; the server refuses a
timestamp more than 300 s off its clock, so keep the host's clock in sync.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Generator

import httpx

from lequan.signing import signature_headers

__all__ = ["LequanAuth"]


def _random_nonce() -> str:
    return secrets.token_hex(16)


class LequanAuth(httpx.Auth):
    """Signs each request with the app's secret; the body is read first because it is signed."""

    requires_request_body = True

    def __init__(
        self,
        app_id: str,
        secret: str,
        *,
        clock: Callable[[], float] = time.time,
        nonce_factory: Callable[[], str] = _random_nonce,
    ) -> None:
        self._app_id = app_id
        self._secret = secret
        self._clock = clock
        self._nonce_factory = nonce_factory

    def __repr__(self) -> str:
        # The secret stays out of logs and tracebacks.
        return f"LequanAuth(app_id={self._app_id!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # raw_path is the path and query exactly as they go on the wire,
        # percent-encoded, which is what the server sees and signs again.
        request.headers.update(
            signature_headers(
                self._app_id,
                self._secret,
                request.method,
                request.url.raw_path.decode("ascii"),
                request.content,
                timestamp=int(self._clock()),
                nonce=self._nonce_factory(),
            )
        )
        yield request
