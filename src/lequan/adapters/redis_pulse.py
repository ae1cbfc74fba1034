"""The pulse in Redis: what every process flushes, and any reads.

Each process counts into a ``MemoryPulse`` between flushes and hands its
counts over in one pipeline (``HINCRBY``), so the claim path never waits on
Redis for a figure. Keys share one hash tag (``{pulse}``): on a Redis
Cluster they live on one node and a flush is one round trip.

- ``<prefix>{pulse}:s:<unix second>`` hash: the per-second counters, kept
  ``SECONDS_KEPT`` seconds;
- ``<prefix>{pulse}:t:<group>`` hash: totals, kept ``TOTALS_KEPT_S`` after
  their last count;
- ``<prefix>{pulse}:m:<unix minute>:<group>`` hash: per-minute totals, kept
  ``MINUTES_KEPT`` minutes;
- ``<prefix>{pulse}:marks`` sorted set: each mark's earliest instant
  (``ZADD LT`` keeps the smaller score, whichever process flushes first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis
import structlog
from redis.cluster import RedisCluster

from lequan.adapters.memory_pulse import MemoryPulse
from lequan.ports.pulse import MINUTES_KEPT, SECONDS_KEPT, PulseUnavailable

__all__ = ["TOTALS_KEPT_S", "RedisPulse"]

log = structlog.get_logger("lequan.pulse")

# A campaign's totals outlive it by a season: its screen can be looked back at.
TOTALS_KEPT_S = 90 * 24 * 3600
_NO_TOTALS: Mapping[tuple[str, str], int] = {}


class RedisPulse:
    """The Pulse port on Redis (``shared`` is True)."""

    shared = True

    def __init__(self, client: redis.Redis | RedisCluster, *, key_prefix: str = "lq:") -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix must not contain braces, got {key_prefix!r}")
        self._client = client
        self._base = f"{key_prefix}{{pulse}}:"
        self._buffer = MemoryPulse()

    def add(
        self,
        at_s: int,
        per_second: Mapping[str, int],
        totals: Mapping[tuple[str, str], int] = _NO_TOTALS,
        per_minute: Mapping[tuple[str, str], int] = _NO_TOTALS,
    ) -> None:
        self._buffer.add(at_s, per_second, totals, per_minute)

    def mark(self, marks: Mapping[str, int]) -> None:
        self._buffer.mark(marks)

    def flush(self) -> None:
        counts = self._buffer.take()
        if not counts:
            return
        pipe = self._client.pipeline(transaction=False)
        for at_s, fields in counts.per_second.items():
            key = f"{self._base}s:{at_s}"
            for name, count in fields.items():
                pipe.hincrby(key, name, count)
            pipe.expire(key, SECONDS_KEPT)
        for group, fields in counts.totals.items():
            key = f"{self._base}t:{group}"
            for name, count in fields.items():
                pipe.hincrby(key, name, count)
            pipe.expire(key, TOTALS_KEPT_S)
        for (minute, group), fields in counts.per_minute.items():
            key = f"{self._base}m:{minute}:{group}"
            for name, count in fields.items():
                pipe.hincrby(key, name, count)
            pipe.expire(key, (MINUTES_KEPT + 1) * 60)
        if counts.marks:
            pipe.zadd(f"{self._base}marks", dict(counts.marks), lt=True)
        try:
            pipe.execute()
        except redis.RedisError as error:
            # Counted again next flush; a retried HINCRBY may count twice what Redis had
            # already applied before failing: a screen's figure, not money.
            self._buffer.give_back(counts)
            raise PulseUnavailable(type(error).__name__) from error

    def seconds(self, start_s: int, end_s: int) -> dict[int, dict[str, int]]:
        wanted = range(start_s, end_s)
        found = self._read([("hgetall", f"{self._base}s:{at_s}") for at_s in wanted])
        return {at_s: _ints(fields) for at_s, fields in zip(wanted, found, strict=True) if fields}

    def totals(self, groups: Sequence[str]) -> dict[str, dict[str, int]]:
        found = self._read([("hgetall", f"{self._base}t:{group}") for group in groups])
        return {group: _ints(fields) for group, fields in zip(groups, found, strict=True)}

    def minutes(self, group: str, start_min: int, end_min: int) -> dict[int, dict[str, int]]:
        wanted = range(start_min, end_min)
        found = self._read([("hgetall", f"{self._base}m:{m}:{group}") for m in wanted])
        return {m: _ints(fields) for m, fields in zip(wanted, found, strict=True) if fields}

    def marks(self, names: Sequence[str]) -> dict[str, int]:
        if not names:
            return {}
        (scores,) = self._read([("zmscore", f"{self._base}marks", list(names))])
        return {
            name: int(score) for name, score in zip(names, scores, strict=True) if score is not None
        }

    def _read(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        if not calls:
            return []
        pipe = self._client.pipeline(transaction=False)
        for method, *args in calls:
            getattr(pipe, method)(*args)
        try:
            return list(pipe.execute())
        except redis.RedisError as error:
            raise PulseUnavailable(type(error).__name__) from error


def _ints(fields: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    return {
        (name.decode() if isinstance(name, bytes) else name): int(value)
        for name, value in fields.items()
    }
