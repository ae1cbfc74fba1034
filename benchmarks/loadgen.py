"""A small HTTP/1.1 load generator: keep-alive connections replaying prepared
requests as fast as the server answers (a closed loop: each connection has
one request in flight).

Requests are built (and signed) before the clock starts, so what is measured
is the server, not our signing. It parses only what it needs: the status
line and Content-Length. Bounded by count and time; loopback only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LoadResult", "build_request", "run_load"]

HEADER_BYTES_MAX = 64 * 1024


def build_request(
    method: str, target: str, *, host: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    requests: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEADER_BYTES_MAX:
        raise RuntimeError("response headers too large")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, (await reader.readexactly(length) if length else b"")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    duration_s: float,
    keep_bodies: bool,
) -> LoadResult:
    result = LoadResult()
    queue = iter(requests)
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                try:
                    request = next(queue)
                except StopIteration:
                    return
                started = time.perf_counter()
                writer.write(request)
                status, body = await _read_response(reader)
                result.latencies_s.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                result.requests += 1
                if keep_bodies:
                    result.bodies.append(body)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.elapsed_s = time.perf_counter() - started
    return result


def run_load(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 32,
    duration_s: float = 5.0,
    keep_bodies: bool = False,
) -> LoadResult:
    """Replay ``requests`` (each at most once) over ``connections`` until done or ``duration_s``."""
    assert host in ("127.0.0.1", "localhost", "::1"), "load tests stay on loopback"
    assert 1 <= connections <= 1024
    assert 0 < duration_s <= 120
    coroutine = _run(
        host,
        port,
        requests,
        connections=connections,
        duration_s=duration_s,
        keep_bodies=keep_bodies,
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
