"""Admission control at the edge: a token bucket per calling app, and a bound
on the claims this process is answering at once.

A channel that sends more than its share is told ``429 throttled`` with a
``Retry-After`` at once, instead of making everyone wait in a queue that
grows until requests time out. A batch costs one token per item. Whatever
the apps' shares, at most ``claim_inflight_max`` claim items are in flight
in one process; beyond that ``429 overloaded``, retried with the same
Idempotency-Key (nothing was reserved).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
    """At most ``items_max`` claim items being answered by this process at once."""

    def __init__(self, items_max: int) -> None:
        assert items_max >= 1
        self._items_max = items_max
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def admit(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` places while the block runs, or refuse with ``overloaded``."""
        with self._lock:
            if self._in_flight + cost > self._items_max:
                raise Unavailable(
                    "overloaded",
                    "too many claims are being answered; retry with the same Idempotency-Key",
                    retry_after_s=1,
                )
            self._in_flight += cost
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= cost
