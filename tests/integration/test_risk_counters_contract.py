"""The risk counters' contract, in this process's memory and on Redis (one server, and a
cluster with names over several slots): what the claim-time rules count on. Two Redis
counters stand for two API processes sharing one count.

A figure includes the tally and those of its name before it in the call; counted
tallies slide over their window (kept as sub-windows), distinct members are counted
once per fixed window; a batch is one round trip; memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from lequan.adapters.memory_risk_counters import MemoryRiskCounters
from lequan.adapters.redis_risk_counters import SLACK_MS, RedisRiskCounters
from lequan.ports.risk_counters import (
    SUB_WINDOWS,
    RiskCounters,
    RiskCountersUnavailable,
    Tallies,
)

# An instant at the start of a minute, a day and every sub-window of the windows below.
T0_MS = 1_764_288_000_000  # 2025-11-28 00:00:00 UTC
MINUTE = 60


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[RiskCounters, RiskCounters]]:
    """Two processes' counters: the same one in memory (one process), two on Redis."""
    if request.param == "memory":
        counters = MemoryRiskCounters()
        yield counters, counters
        return
    client: redis.Redis | RedisCluster
    if request.param == "redis":
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        prefix = request.getfixturevalue("redis_prefix")
        shards = 1
    else:
        host, port = request.getfixturevalue("redis_cluster")
        client = RedisCluster(host=host, port=port)
        prefix = "lqtest-risk:"
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        shards = 8
    yield (
        RedisRiskCounters(client, key_prefix=prefix, shards=shards),
        RedisRiskCounters(client, key_prefix=prefix, shards=shards),
    )
    client.close()


def counted(window_s: int, *names: str) -> Tallies:
    return Tallies(window_s, list(names))


def distinct(window_s: int, *pairs: tuple[str, str]) -> Tallies:
    return Tallies(window_s, [n for n, _ in pairs], [m for _, m in pairs])


def test_counted_tallies_include_the_ones_before_them(
    pair: tuple[RiskCounters, RiskCounters],
) -> None:
    one, two = pair
    assert one.count([counted(MINUTE, "d1", "d2", "d1", "d1")], now_ms=T0_MS) == [[1, 1, 2, 3]]
    # Another process sees the same count and adds to it.
    assert two.count([counted(MINUTE, "d1", "d3")], now_ms=T0_MS + 10) == [[4, 1]]
    assert one.count([counted(MINUTE, "d2")], now_ms=T0_MS + 20) == [[2]]


def test_distinct_members_are_counted_once(pair: tuple[RiskCounters, RiskCounters]) -> None:
    one, two = pair
    first = one.count(
        [distinct(86_400, ("dev", "p1"), ("dev", "p2"), ("dev", "p1"), ("other", "p1"))],
        now_ms=T0_MS,
    )
    assert first == [[1, 2, 2, 1]]
    assert two.count([distinct(86_400, ("dev", "p2"), ("dev", "p3"))], now_ms=T0_MS + 1) == [[2, 3]]


def test_a_mirrored_group_counts_both_sides_of_each_pair(
    pair: tuple[RiskCounters, RiskCounters],
) -> None:
    one, two = pair
    devices = ["dp:d1", "dp:d1", "dp:d2", "dp:d1", "dp:d3"]
    persons = ["p1", "p2", "p1", "p1", "p1"]
    mirrored = Tallies(86_400, devices, persons, mirror="pd:")
    persons_per_device = [1, 2, 1, 2, 1]
    devices_per_person = [1, 1, 2, 2, 3]  # as two groups would count them, after the first
    assert one.count([mirrored], now_ms=T0_MS) == [persons_per_device + devices_per_person]
    again = two.count([Tallies(86_400, ["dp:d2"], ["p2"], mirror="pd:")], now_ms=T0_MS + 1)
    assert again == [[2, 2]]
    assert two.count([distinct(86_400, ("pd:p1", "dp:d4"))], now_ms=T0_MS + 2) == [[4]]
    many = Tallies(86_400, [f"dp:x{n}" for n in range(1500)], ["px"] * 1500, mirror="pd:")
    figures = one.count([many], now_ms=T0_MS + 3)[0]
    assert figures[:3] == [1, 1, 1]
    assert figures[1500:1503] == [1, 2, 3]
    assert figures[-1] == 1500


def test_groups_are_counted_apart_in_one_call(pair: tuple[RiskCounters, RiskCounters]) -> None:
    one, _ = pair
    figures = one.count(
        [
            counted(600, "vd:a", "vd:a"),
            counted(MINUTE, "vi:1.2.3.4"),
            distinct(86_400, ("dp:a", "p1"), ("dp:a", "p2")),
            distinct(86_400, ("pd:p1", "a")),
            counted(MINUTE, "vn:1.2.3.0/24", "vi:1.2.3.4"),
        ],
        now_ms=T0_MS,
    )
    assert figures == [[1, 2], [1], [1, 2], [1], [1, 2]]
    assert one.count([], now_ms=T0_MS) == []


def test_a_counted_window_slides(pair: tuple[RiskCounters, RiskCounters]) -> None:
    one, _ = pair
    span_ms = MINUTE * 1000 // SUB_WINDOWS
    assert one.count([counted(MINUTE, "d")], now_ms=T0_MS) == [[1]]
    assert one.count([counted(MINUTE, "d")], now_ms=T0_MS + (SUB_WINDOWS - 1) * span_ms) == [[2]]
    # The first event is forgotten once a whole window has passed since its sub-window.
    assert one.count([counted(MINUTE, "d")], now_ms=T0_MS + MINUTE * 1000 - 1) == [[3]]
    assert one.count([counted(MINUTE, "d")], now_ms=T0_MS + MINUTE * 1000) == [[3]]
    assert one.count([counted(MINUTE, "d")], now_ms=T0_MS + 3 * MINUTE * 1000) == [[1]]


def test_distinct_windows_are_fixed(pair: tuple[RiskCounters, RiskCounters]) -> None:
    one, _ = pair
    day_ms = 86_400_000
    assert one.count([distinct(86_400, ("dev", "p1"))], now_ms=T0_MS) == [[1]]
    assert one.count([distinct(86_400, ("dev", "p2"))], now_ms=T0_MS + day_ms - 1) == [[2]]
    assert one.count([distinct(86_400, ("dev", "p3"))], now_ms=T0_MS + day_ms) == [[1]]


def test_a_name_in_two_windows_is_two_counts(pair: tuple[RiskCounters, RiskCounters]) -> None:
    one, _ = pair
    assert one.count([counted(MINUTE, "d"), counted(600, "d")], now_ms=T0_MS) == [[1], [1]]


def test_a_batch_of_a_thousand_claims(pair: tuple[RiskCounters, RiskCounters]) -> None:
    one, two = pair
    devices = [f"vd:dev-{n % 250}" for n in range(1000)]
    groups = [
        counted(600, *devices),
        distinct(86_400, *[(d, f"p{n}") for n, d in enumerate(devices)]),
    ]
    first = one.count(groups, now_ms=T0_MS)
    assert first[0][:250] == [1] * 250
    assert first[0][-250:] == [4] * 250
    assert first[1][-1] == 4
    again = two.count(groups, now_ms=T0_MS + 1)
    assert again[0][-1] == 8
    assert again[1][-1] == 4  # the same persons: nobody new


# -- Redis: one round trip per batch, keys that expire, an outage ---------------------------


class _Counting(redis.Redis):
    """A Redis client that counts its pipelines and the commands sent outside them."""

    pipelines = 0
    commands = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        type(self).pipelines += 1
        return super().pipeline(*args, **kwargs)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).commands += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


def test_a_batch_is_one_round_trip(redis_url: str, redis_prefix: str) -> None:
    client = _Counting.from_url(redis_url)
    counters = RedisRiskCounters(client, key_prefix=redis_prefix)
    groups = [
        counted(600, *[f"vd:{n}" for n in range(1000)]),
        counted(MINUTE, *[f"vi:{n}" for n in range(1000)]),
        distinct(86_400, *[(f"dp:{n}", f"p{n}") for n in range(1000)]),
    ]
    counters.count(groups, now_ms=T0_MS)  # the first call may load the script
    _Counting.pipelines = _Counting.commands = 0
    figures = counters.count(groups, now_ms=T0_MS + 1)
    assert (_Counting.pipelines, _Counting.commands) == (1, 0)
    assert [f[0] for f in figures] == [2, 2, 1]
    client.close()


def test_every_key_expires(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    counters = RedisRiskCounters(client, key_prefix=redis_prefix)
    counters.count([counted(MINUTE, "d"), distinct(3600, ("dev", "p"))], now_ms=T0_MS + 1000)
    keys = list(client.scan_iter(match=redis_prefix + "*"))
    assert len(keys) == 3  # one counted sub-window, a distinct window's counts and pairs
    for key in keys:
        ttl_ms = client.pttl(key)
        assert 0 < ttl_ms <= 3600 * 1000 + SLACK_MS, key
    client.close()


def test_an_unreachable_redis_is_unavailable() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    counters = RedisRiskCounters(client)
    with pytest.raises(RiskCountersUnavailable):
        counters.count([counted(MINUTE, "d")], now_ms=T0_MS)


# -- memory: bounded ------------------------------------------------------------------------


def test_memory_stays_within_its_bound_and_lets_tallies_through() -> None:
    counters = MemoryRiskCounters(entries_max=1000)
    figures = counters.count([counted(MINUTE, *[f"d{n}" for n in range(1500)])], now_ms=T0_MS)
    assert figures[0][:1000] == [1] * 1000
    assert figures[0][1000:] == [None] * 500  # unknown: no rule fires on them
    assert counters.entries == 1000
    # A name it keeps is still counted; and once the window has passed, room is made.
    assert counters.count([counted(MINUTE, "d0")], now_ms=T0_MS + 1) == [[2]]
    later = T0_MS + 2 * MINUTE * 1000
    assert counters.count([counted(MINUTE, "d1400")], now_ms=later) == [[1]]
    assert counters.entries == 1


def test_memory_bounds_distinct_members_too() -> None:
    counters = MemoryRiskCounters(entries_max=1000)
    many = [("dev", f"p{n}") for n in range(1200)]
    figures = counters.count([distinct(86_400, *many)], now_ms=T0_MS)[0]
    assert figures[0] == 1
    assert max(f for f in figures if f is not None) == 999  # the name is one entry
    assert figures[-1] is None
    assert counters.entries <= 1000
