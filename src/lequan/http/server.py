"""The HTTP server's own limits, for ``lequan serve``: what uvicorn is told, and the
limits on a request's head it does not have.

Before a signature is checked, a caller is nobody: everything it can make
the server hold must be bounded. uvicorn bounds connections and requests
at once (``limit_concurrency``) and idle keep-alive connections
(``timeout_keep_alive``); its httptools parser (the fast one, used here)
takes a request head of any size, for as long as the client likes to send
it. ``BoundedHttpTools`` adds both: a head (request line and headers) is
at most ``http_header_bytes_max`` bytes, answered ``431
headers_too_large``, and arrives within ``http_header_timeout_s`` of the
connection or of the previous response, answered ``408 request_timeout``;
the connection is closed after either. Bodies are bounded in the ASGI layer
(``http.app.BodyLimit``). Production puts a reverse proxy in front as well
(``deploy/nginx/lequan.conf``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lequan.config import Settings

__all__ = ["BoundedHttpTools", "uvicorn_options"]

log = structlog.get_logger("lequan.http")

# What uvicorn is given to find the protocol in each worker process (a name, not a
# class object: the settings reach a worker through its environment, as the app's).
PROTOCOL = "lequan.http.server:BoundedHttpTools"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The server's limits as uvicorn's options (``serve``)."""
    return {
        "http": PROTOCOL,
        # Only if uvicorn fell back to h11: the same bound on an unfinished head.
        "h11_max_incomplete_event_size": settings.http_header_bytes_max,
        "timeout_keep_alive": settings.http_keep_alive_s,
        "limit_concurrency": settings.http_connections_max,
    }


@functools.cache
def _head_limits() -> tuple[int, float]:
    """(bytes, seconds) of a request head, read once per process from its settings."""
    settings = Settings()
    return settings.http_header_bytes_max, settings.http_header_timeout_s


def _answer(status: int, body: dict[str, str]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """An error answer's headers and payload (lequan's error body), logged."""
    request_id = uuid.uuid4().hex
    log.info("request", status=status, request_id=request_id, code=body["code"])
    payload = json.dumps({**body, "request_id": request_id}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
        (b"x-request-id", request_id.encode()),
    ]
    return headers, payload


def refusal(status: int, body: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 answer, written to a connection no request is being answered on."""
    headers, payload = _answer(status, body)
    lines = [f"HTTP/1.1 {status} {_REASONS[status]}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time limit on each request head.

    A head's size is checked twice: as its bytes arrive, from the request's
    first byte (``on_message_begin``) while it is unfinished, so one that
    never ends is cut off once over the limit (a chunk in which a pipelined
    request began counts whole: refused up to one read early, never late);
    and exactly, once parsed, by its request target and headers, answered
    like a request whose answer is the refusal (as uvicorn answers its own
    ``limit_concurrency``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes_max, self._head_timeout_s = _head_limits()
        self._head_bytes = 0
        self._in_head = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn narrows it too
        super().connection_made(transport)
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused: what the client still sends is not read
        super().data_received(data)
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._head_bytes_max:
                self._refuse(431, self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_waiting()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size <= self._head_bytes_max:
            super().on_headers_complete()
            return
        app, self.app = self.app, self._refuse_head
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms its keep-alive timer when it waits for the next request: the
        # next head must then come whole within the head timeout, however slowly
        # its bytes trickle in (each byte stops the keep-alive timer).
        if self.timeout_keep_alive_task is not None:
            self._wait_for_head()

    async def _refuse_head(self, _scope: Any, _receive: Any, send: Any) -> None:
        """The ASGI app of a request whose head is over the limit."""
        headers, payload = _answer(431, self._too_large())
        await send({"type": "http.response.start", "status": 431, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _too_large(self) -> dict[str, str]:
        return {
            "code": "headers_too_large",
            "message": f"a request's line and headers are at most {self._head_bytes_max} bytes",
        }

    def _wait_for_head(self) -> None:
        self._stop_waiting()
        self._head_timer = self.loop.call_later(self._head_timeout_s, self._head_too_slow)

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(
                408,
                {
                    "code": "request_timeout",
                    "message": f"a request's headers must arrive within {self._head_timeout_s:g} s",
                },
            )
        elif not self.transport.is_closing():
            self.transport.close()  # nothing of a request came: just let it go

    def _refuse(self, status: int, body: dict[str, str]) -> None:
        """Answer an unfinished head and close: no request of it reached the app."""
        self._stop_waiting()
        self._in_head = False
        if self.transport.is_closing():
            return
        # Between answers only: a pipelined head refused while an answer is being
        # written cannot be answered on the same connection.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal(status, body))
        self.transport.close()
