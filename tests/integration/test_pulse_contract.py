"""The pulse's contract, on this process's memory and on Redis: what the big screen
counts on. Two Redis pulses stand for two processes feeding one screen."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from lequan.adapters.memory_pulse import MemoryPulse
from lequan.adapters.redis_pulse import RedisPulse
from lequan.ports.pulse import FIELDS_PER_SECOND_MAX, SECONDS_KEPT, Pulse, PulseUnavailable


@pytest.fixture(params=["memory", "redis"])
def pulses(request: pytest.FixtureRequest) -> Iterator[tuple[Pulse, Pulse]]:
    """Two pulses of one platform: the same one in memory (one process), two processes'
    on Redis."""
    if request.param == "memory":
        pulse = MemoryPulse()
        yield pulse, pulse
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    client = redis.Redis.from_url(url)
    yield RedisPulse(client, key_prefix=prefix), RedisPulse(client, key_prefix=prefix)
    client.close()


def test_every_process_counts_into_one_view(pulses: tuple[Pulse, Pulse]) -> None:
    one, two = pulses
    one.add(1000, {"claims|c1|issued": 3}, {("c1", "region|310101"): 2})
    two.add(1000, {"claims|c1|issued": 4, "claims|c1|sold_out": 1}, {("c1", "region|310101"): 5})
    two.add(1001, {"claims|c1|issued": 1})
    one.flush()
    two.flush()
    for reader in (one, two):
        assert reader.seconds(999, 1002) == {
            1000: {"claims|c1|issued": 7, "claims|c1|sold_out": 1},
            1001: {"claims|c1|issued": 1},
        }
        assert reader.totals(["c1", "c2"]) == {"c1": {"region|310101": 7}, "c2": {}}


def test_a_range_is_half_open(pulses: tuple[Pulse, Pulse]) -> None:
    one, _ = pulses
    for at_s in (10, 11, 12):
        one.add(at_s, {"x": at_s})
    one.flush()
    assert one.seconds(11, 12) == {11: {"x": 11}}


def test_the_earliest_mark_wins_whoever_flushes_first(pulses: tuple[Pulse, Pulse]) -> None:
    one, two = pulses
    two.mark({"first_redemption|c1": 5_000})
    two.flush()
    one.mark({"first_redemption|c1": 4_000, "sold_out|p|t": 9_000})
    one.flush()
    two.mark({"first_redemption|c1": 4_500})
    two.flush()
    assert one.marks(["first_redemption|c1", "sold_out|p|t", "never"]) == {
        "first_redemption|c1": 4_000,
        "sold_out|p|t": 9_000,
    }


def test_per_minute_totals_are_kept_by_minute(pulses: tuple[Pulse, Pulse]) -> None:
    one, two = pulses
    one.add(600, {}, per_minute={("merchants", "m1"): 2})
    two.add(659, {}, per_minute={("merchants", "m1"): 1, ("merchants", "m2"): 1})
    two.add(660, {}, per_minute={("merchants", "m1"): 9})
    one.flush()
    two.flush()
    assert one.minutes("merchants", 10, 12) == {10: {"m1": 3, "m2": 1}, 11: {"m1": 9}}
    assert one.minutes("others", 10, 12) == {}


def test_concurrent_counts_are_never_lost(pulses: tuple[Pulse, Pulse]) -> None:
    """Threads counting while another flushes, as a process's claims and its flusher do."""
    one, two = pulses
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            one.flush()
            two.flush()

    def counter(pulse: Pulse) -> None:
        for _ in range(2000):
            pulse.add(5000, {"claims": 1}, {("g", "n"): 1})

    background = threading.Thread(target=flusher)
    background.start()
    workers = [threading.Thread(target=counter, args=(p,)) for p in (one, two, one, two)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    background.join()
    one.flush()
    two.flush()
    assert one.seconds(5000, 5001) == {5000: {"claims": 8000}}
    assert one.totals(["g"]) == {"g": {"n": 8000}}


def test_old_seconds_are_forgotten() -> None:
    pulse = MemoryPulse()
    pulse.add(100, {"x": 1})
    pulse.add(100 + SECONDS_KEPT, {"x": 1})
    assert pulse.seconds(0, 10_000) == {100 + SECONDS_KEPT: {"x": 1}}


def test_a_second_holds_a_bounded_number_of_names() -> None:
    pulse = MemoryPulse()
    pulse.add(1, {f"n{i}": 1 for i in range(FIELDS_PER_SECOND_MAX + 10)})
    assert len(pulse.seconds(1, 2)[1]) == FIELDS_PER_SECOND_MAX


def test_redis_down_keeps_the_counts_for_the_next_flush(redis_url: str, redis_prefix: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    pulse = RedisPulse(dead, key_prefix=redis_prefix)
    pulse.add(7, {"claims": 2})
    with pytest.raises(PulseUnavailable):
        pulse.flush()
    with pytest.raises(PulseUnavailable):
        pulse.seconds(0, 10)
    live = redis.Redis.from_url(redis_url)
    pulse._client = live  # the same pulse once Redis answers again
    pulse.add(7, {"claims": 1})
    pulse.flush()
    assert RedisPulse(live, key_prefix=redis_prefix).seconds(7, 8) == {7: {"claims": 3}}
    live.close()
