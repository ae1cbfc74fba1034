"""What a caller nobody has authenticated yet can make the server hold with bodies:
each one is read within a time limit, and all of them at once within a memory
budget. ``BodyLimit`` is driven as the server drives it, through ASGI, with
clients that send part of a body and then nothing more.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from lequan.http.app import BodyLimit

Message = dict[str, Any]


class Client:
    """One request's body as the server receives it: the chunks given, then nothing
    until ``finish`` (a slow or stalled client)."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)
        self._rest = asyncio.Event()
        self.sent: list[Message] = []

    def finish(self) -> None:
        self._rest.set()

    async def receive(self) -> Message:
        if self._chunks:
            return {"type": "http.request", "body": self._chunks.pop(0), "more_body": True}
        await self._rest.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.sent[1]["body"])
        return body


def echo() -> Callable[[Any, Any, Any], Awaitable[None]]:
    """An app that answers 200 with the size of the body it got."""

    async def app(_scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(message["body"])).encode()})

    return app


async def call(limit: BodyLimit, client: Client) -> None:
    await limit({"type": "http", "method": "POST"}, client.receive, client.send)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def test_a_body_that_stops_coming_is_408_once_its_time_is_up() -> None:
    async def scenario() -> None:
        limit = BodyLimit(echo(), body_bytes_max=10_000, body_timeout_s=0.2)
        stalled = Client(b"x" * 100)
        await asyncio.wait_for(call(limit, stalled), timeout=10)
        assert stalled.status == 408
        assert stalled.body["code"] == "request_timeout"
        assert limit.buffered_bytes == 0  # what it had sent is let go

    asyncio.run(scenario())


def test_bodies_received_at_once_are_held_within_the_budget() -> None:
    async def scenario() -> None:
        limit = BodyLimit(echo(), body_bytes_max=10_000, buffered_bytes_max=1000)
        first = Client(b"a" * 600)
        second = Client(b"b" * 600)
        slow_first = asyncio.create_task(call(limit, first))
        await until(lambda: limit.buffered_bytes == 600)
        # A second body would take the process past its budget: refused at once.
        await asyncio.wait_for(call(limit, second), timeout=10)
        assert second.status == 429
        assert second.body["code"] == "overloaded"
        assert (b"retry-after", b"1") in second.sent[0]["headers"]
        assert limit.buffered_bytes == 600

        first.finish()
        await asyncio.wait_for(slow_first, timeout=10)
        assert first.status == 200
        assert first.sent[1]["body"] == b"600"
        assert limit.buffered_bytes == 0
        # Once the first is whole, there is room again.
        again = Client(b"b" * 600)
        again.finish()
        await asyncio.wait_for(call(limit, again), timeout=10)
        assert again.status == 200

    asyncio.run(scenario())


def test_a_body_alone_may_be_larger_than_the_budget_up_to_its_own_limit() -> None:
    async def scenario() -> None:
        limit = BodyLimit(echo(), body_bytes_max=5000, buffered_bytes_max=1000)
        alone = Client(b"a" * 2000, b"b" * 2000)
        alone.finish()
        await asyncio.wait_for(call(limit, alone), timeout=10)
        assert alone.status == 200
        assert alone.sent[1]["body"] == b"4000"
        too_big = Client(b"a" * 5001)
        too_big.finish()
        await asyncio.wait_for(call(limit, too_big), timeout=10)
        assert too_big.status == 413
        assert limit.buffered_bytes == 0

    asyncio.run(scenario())
