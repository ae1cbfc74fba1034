"""Admission control at the edge: a token bucket per calling app, and a bound
on the claims this process is answering at once.

A channel that sends more than its share is told ``429 throttled`` with a
``Retry-After`` at once, instead of making everyone wait in a queue that
grows until requests time out. A batch costs one token per item. Whatever
the apps' shares, at most ``claim_inflight_max`` claim items are in flight
in one process; a call finding no room waits for it up to
``claim_inflight_wait_ms``, then hears ``429 overloaded``, retried with the
same Idempotency-Key (nothing was reserved).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from lequan.domain.errors import Unavailable

__all__ = ["InFlightLimit", "TokenBuckets"]


class TokenBuckets:
    """One bucket per app: ``rate_per_s`` tokens a second, at most ``burst`` saved up."""

    def __init__(
        self,
        *,
        rate_per_s: float,
        burst: int,
        apps_max: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        assert rate_per_s > 0
        assert burst >= 1
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._apps_max = apps_max
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # app -> (tokens, at)

    def take(self, app_id: str, cost: int = 1) -> None:
        """Spend ``cost`` tokens or refuse with ``throttled``; nothing is spent on refusal."""
        now = self._monotonic()
        with self._lock:
            tokens, at = self._buckets.get(app_id, (float(self._burst), now))
            tokens = min(float(self._burst), tokens + (now - at) * self._rate_per_s)
            if cost > tokens:
                self._buckets[app_id] = (tokens, now)
                wait_s = (min(cost, self._burst) - tokens) / self._rate_per_s
                raise Unavailable(
                    "throttled",
                    "this app is sending faster than its allowance; slow down",
                    retry_after_s=max(1, math.ceil(wait_s)),
                )
            if app_id not in self._buckets and len(self._buckets) >= self._apps_max:
                self._buckets.clear()  # apps are registered by operators: a handful
            self._buckets[app_id] = (tokens - cost, now)


class InFlightLimit:
    """At most ``items_max`` claim items being answered by this process at once.

    A call that finds no room waits for it, up to ``wait_s``, before ``429
    overloaded``: a channel's batch was read and parsed already, and sending it
    again after Retry-After would cost the process that work again (in a window's
    crowd, more of the two cores than taking claims in). Used on the event loop
    only: the places are taken and given back by the requests' coroutines.
    """

    def __init__(self, items_max: int, *, wait_s: float = 0.0) -> None:
        assert items_max >= 1
        assert wait_s >= 0
        self._items_max = items_max
        self._wait_s = wait_s
        self._in_flight = 0
        self._waiting = 0
        self._room: asyncio.Condition | None = None  # made on the loop, when first waited on

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        """Calls waiting for room now."""
        return self._waiting

    @asynccontextmanager
    async def admit(self, cost: int) -> AsyncIterator[None]:
        """Hold ``cost`` places while the block runs; wait for them up to ``wait_s``,
        or refuse with ``overloaded``."""
        if self._in_flight + cost > self._items_max:
            await self._wait_for_room(cost)
        self._in_flight += cost
        try:
            yield
        finally:
            self._in_flight -= cost
            if self._waiting:
                room = self._condition()
                async with room:
                    room.notify_all()

    async def _wait_for_room(self, cost: int) -> None:
        if cost > self._items_max or self._wait_s <= 0:
            raise _overloaded()
        room = self._condition()
        self._waiting += 1
        try:
            async with room:
                await asyncio.wait_for(
                    room.wait_for(lambda: self._in_flight + cost <= self._items_max),
                    timeout=self._wait_s,
                )
        except TimeoutError:
            raise _overloaded() from None
        finally:
            self._waiting -= 1

    def _condition(self) -> asyncio.Condition:
        if self._room is None:
            self._room = asyncio.Condition()
        return self._room


def _overloaded() -> Unavailable:
    return Unavailable(
        "overloaded",
        "too many claims are being answered; retry with the same Idempotency-Key",
        retry_after_s=1,
    )
