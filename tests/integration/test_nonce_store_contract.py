"""One contract for every NonceStore: a nonce is new once per app within its ttl, even under races.

The suite runs against ``MemoryNonceStore`` and ``RedisNonceStore`` (on the
real server from ``LEQUAN_TEST_REDIS_URL``, under a key prefix of the test's
own). Behaviour that only one of them has, the memory store's bound and the
Redis store's errors, is tested after the contract.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lequan.adapters.nonces import MemoryNonceStore, RedisNonceStore
from lequan.domain.errors import Unavailable
from lequan.ports import NonceStore
from tests.waiting import wait_until

TTL_S = 600
NONCE = "3f9c2a7b1d4e8f60"


class FakeClock:
    """A Clock that moves only when the test says so."""

    def __init__(self) -> None:
        self._now = datetime(2024, 11, 30, 2, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


@dataclass
class Subject:
    store: NonceStore
    redis_client: redis.Redis | None = None
    redis_prefix: str = ""


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "memory":
        yield Subject(MemoryNonceStore(10_000, clock=FakeClock()))
        return
    redis_url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    client = redis.Redis.from_url(redis_url)
    try:
        yield Subject(RedisNonceStore(client, key_prefix=prefix), client, prefix)
    finally:
        client.close()


# -- the contract -----------------------------------------------------------------


def test_a_nonce_is_new_once(subject: Subject) -> None:
    assert subject.store.remember("wechat", NONCE, TTL_S) is True
    assert subject.store.remember("wechat", NONCE, TTL_S) is False
    assert subject.store.remember("wechat", NONCE, TTL_S) is False


def test_nonces_are_per_app(subject: Subject) -> None:
    assert subject.store.remember("wechat", NONCE, TTL_S) is True
    assert subject.store.remember("alipay", NONCE, TTL_S) is True
    assert subject.store.remember("alipay", NONCE, TTL_S) is False


def test_nonces_are_compared_exactly(subject: Subject) -> None:
    assert subject.store.remember("wechat", NONCE, TTL_S) is True
    assert subject.store.remember("wechat", NONCE.upper(), TTL_S) is True
    assert subject.store.remember("wechat", NONCE + "0", TTL_S) is True
    assert subject.store.remember("WeChat", NONCE, TTL_S) is True


def test_app_and_nonce_do_not_run_together(subject: Subject) -> None:
    # ("a-b", "c...") and ("a", "b-c...") must stay two different nonces.
    assert subject.store.remember("app-x", "y_12345678", TTL_S) is True
    assert subject.store.remember("app", "x-y_12345678", TTL_S) is True


def test_exactly_one_of_many_racing_threads_wins(subject: Subject) -> None:
    threads = 16
    rounds = 20
    barrier = threading.Barrier(threads)

    def race(round_no: int) -> bool:
        barrier.wait(timeout=10)
        return subject.store.remember("wechat", f"race-nonce-{round_no:04d}", TTL_S)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for round_no in range(rounds):
            answers = list(pool.map(race, [round_no] * threads))
            assert answers.count(True) == 1, (round_no, answers)


def test_a_batch_answers_each_nonce_in_order(subject: Subject) -> None:
    assert subject.store.remember("wechat", NONCE, TTL_S) is True
    batch = [("wechat", "batch-nonce-1"), ("wechat", NONCE), ("alipay", NONCE)]
    assert subject.store.remember_many(batch, TTL_S) == [True, False, True]
    # What a batch recorded is as remembered as what ``remember`` recorded.
    assert subject.store.remember("wechat", "batch-nonce-1", TTL_S) is False
    assert subject.store.remember_many(batch, TTL_S) == [False, False, False]
    assert subject.store.remember_many([], TTL_S) == []


def test_a_nonce_twice_in_one_batch_is_new_only_the_first_time(subject: Subject) -> None:
    twice = [("wechat", "dup-nonce-01"), ("wechat", "dup-nonce-01")]
    assert subject.store.remember_many(twice, TTL_S) == [True, False]


def test_racing_batches_let_each_nonce_win_once(subject: Subject) -> None:
    threads = 8
    nonces = [("wechat", f"batch-race-{n:04d}") for n in range(200)]
    barrier = threading.Barrier(threads)

    def race(_: int) -> list[bool]:
        barrier.wait(timeout=10)
        return subject.store.remember_many(nonces, TTL_S)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(race, range(threads)))
    for n in range(len(nonces)):
        assert [a[n] for a in answers].count(True) == 1, n


def test_the_epoch_is_when_the_store_began_to_remember(subject: Subject) -> None:
    """Every nonce given since the epoch is held; a restart of the store starts a new one."""
    subject.store.remember("wechat", NONCE, TTL_S)
    epoch_s = subject.store.epoch_s
    assert 0 < epoch_s <= time.time()
    subject.store.remember("wechat", "later-nonce-1", TTL_S)
    assert subject.store.epoch_s == epoch_s  # remembering moves nothing


# -- the memory store ---------------------------------------------------------------


def test_memory_epoch_is_the_stores_start() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(100, clock=clock)
    assert store.epoch_s == int(clock.now().timestamp())
    clock.advance(3600)
    store.remember("wechat", NONCE, TTL_S)
    assert store.epoch_s == int(clock.now().timestamp()) - 3600
    # A process started later (a restart) remembers nothing from before its start.
    assert MemoryNonceStore(100, clock=clock).epoch_s == int(clock.now().timestamp())


def test_memory_forgets_a_nonce_when_its_ttl_ends() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(100, clock=clock)
    assert store.remember("wechat", NONCE, TTL_S) is True
    clock.advance(TTL_S - 0.001)
    assert store.remember("wechat", NONCE, TTL_S) is False
    clock.advance(0.001)
    assert store.remember("wechat", NONCE, TTL_S) is True
    clock.advance(TTL_S - 1)
    assert store.remember("wechat", NONCE, TTL_S) is False, "the second life has its own ttl"


def test_memory_honours_each_nonces_own_ttl() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(100, clock=clock)
    assert store.remember("wechat", "long-lived-0001", 100) is True
    assert store.remember("wechat", "short-lived-001", 10) is True
    clock.advance(10)
    assert store.remember("wechat", "short-lived-001", 10) is True
    assert store.remember("wechat", "long-lived-0001", 100) is False
    clock.advance(90)
    assert store.remember("wechat", "long-lived-0001", 100) is True


def test_memory_drops_expired_entries() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(1000, clock=clock)
    for n in range(500):
        store.remember("wechat", f"nonce-{n:06d}", TTL_S)
    assert len(store) == 500
    clock.advance(TTL_S)
    store.remember("wechat", "after-the-window", TTL_S)
    assert len(store) == 1


def test_memory_when_full_refuses_new_nonces_and_still_refuses_replays() -> None:
    clock = FakeClock()
    store = MemoryNonceStore(3, clock=clock)
    for n in range(3):
        assert store.remember("wechat", f"nonce-{n:06d}", TTL_S) is True
        clock.advance(10)

    with pytest.raises(Unavailable) as caught:
        store.remember("wechat", "one-too-many", TTL_S)
    assert caught.value.code == "throttled"
    # The oldest nonce frees its place TTL_S after it was taken, 30 s ago.
    assert caught.value.retry_after_s == TTL_S - 30

    # Full or not, a live nonce is never forgotten: every replay is still refused.
    for n in range(3):
        assert store.remember("wechat", f"nonce-{n:06d}", TTL_S) is False
    with pytest.raises(Unavailable):
        store.remember("alipay", "nonce-000000", TTL_S)

    # Once the oldest expires, its place is free again, and only its place.
    clock.advance(TTL_S - 30)
    assert store.remember("wechat", "one-too-many", TTL_S) is True
    with pytest.raises(Unavailable):
        store.remember("wechat", "two-too-many", TTL_S)
    assert store.remember("wechat", "nonce-000001", TTL_S) is False


def test_memory_refuses_a_batch_that_does_not_fit_and_records_none_of_it() -> None:
    store = MemoryNonceStore(3, clock=FakeClock())
    assert store.remember_many([("wechat", "nonce-000001")], TTL_S) == [True]
    batch = [("wechat", f"nonce-{n:06d}") for n in range(1, 5)]  # three new, one not
    with pytest.raises(Unavailable) as caught:
        store.remember_many(batch, TTL_S)
    assert caught.value.code == "throttled"
    assert len(store) == 1
    # A batch whose new nonces fit is taken whole; replays never count against the room.
    assert store.remember_many(batch[:3], TTL_S) == [False, True, True]
    assert len(store) == 3


def test_memory_bound_holds_under_racing_threads() -> None:
    store = MemoryNonceStore(50, clock=FakeClock())

    def remember(n: int) -> str:
        try:
            return "new" if store.remember("wechat", f"nonce-{n:06d}", TTL_S) else "seen"
        except Unavailable:
            return "throttled"

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(remember, range(200)))
    assert answers.count("new") == 50
    assert answers.count("throttled") == 150
    assert len(store) == 50


# -- the Redis store ------------------------------------------------------------------


@pytest.mark.redis
def test_redis_keys_expire_with_the_ttl(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisNonceStore(client, key_prefix=redis_prefix)
        assert store.remember("wechat", NONCE, TTL_S) is True
        keys = list(client.scan_iter(match=redis_prefix + "nonce:*"))
        assert keys == [store.key("wechat", NONCE).encode()]
        assert 0 < client.ttl(keys[0]) <= TTL_S
        # The epoch is the one key kept for good: it goes only with Redis's data.
        assert client.ttl(redis_prefix + "nonce-epoch") == -1

        # A replay neither succeeds nor extends the window.
        client.expire(keys[0], 5)
        assert store.remember("wechat", NONCE, TTL_S) is False
        assert 0 < client.ttl(keys[0]) <= 5

        # When Redis lets the key go, the nonce is new again.
        client.pexpire(keys[0], 1)
        wait_until(lambda: not client.exists(keys[0]), what="Redis let the nonce's key expire")
        assert store.remember("wechat", NONCE, TTL_S) is True
    finally:
        client.close()


class RepliesLostOnce:
    """A Redis client whose pipeline loses its first replies and sends the commands
    again, as redis-py's cluster pipeline does after a timeout: the writes ran twice."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def pipeline(self, transaction: bool = False) -> RepliesLostOnce._Pipeline:
        return RepliesLostOnce._Pipeline(self._client, transaction)

    class _Pipeline:
        def __init__(self, client: redis.Redis, transaction: bool) -> None:
            self._client = client
            self._transaction = transaction
            self._calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

        def set(self, *args: object, **kwargs: object) -> None:
            self._calls.append((args, kwargs))

        def execute(self) -> list[object]:
            replies: list[object] = []
            for _attempt in range(2):  # the first replies never arrive
                pipe = self._client.pipeline(transaction=self._transaction)
                for args, kwargs in self._calls:
                    pipe.set(*args, **kwargs)  # type: ignore[arg-type]  # as the caller gave them
                replies = pipe.execute()
            return replies


@pytest.mark.redis
def test_redis_a_resent_write_is_not_taken_for_a_replay(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        store = RedisNonceStore(RepliesLostOnce(client), key_prefix=redis_prefix)  # type: ignore[arg-type]  # the pipeline is all it uses
        batch = [("wechat", "resent-nonce-1"), ("wechat", "resent-nonce-2")]
        assert store.remember_many(batch, TTL_S) == [True, True]
        # A real replay, by another call, is still refused; so is a nonce twice in a batch.
        assert store.remember_many(batch[:1], TTL_S) == [False]
        twice = [("wechat", "resent-nonce-3"), ("wechat", "resent-nonce-3")]
        assert store.remember_many(twice, TTL_S) == [True, False]
    finally:
        client.close()


@pytest.mark.redis
def test_redis_epoch_is_shared_and_starts_again_when_redis_lost_its_data(
    redis_url: str, redis_prefix: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        clock = FakeClock()
        first = RedisNonceStore(client, key_prefix=redis_prefix, clock=clock)
        assert first.remember("wechat", NONCE, TTL_S) is True
        started_s = int(clock.now().timestamp())
        assert first.epoch_s == started_s
        # Another process, started later, shares the first one's epoch.
        clock.advance(60)
        second = RedisNonceStore(client, key_prefix=redis_prefix, clock=clock)
        assert second.remember("wechat", "other-nonce-1", TTL_S) is True
        assert second.epoch_s == started_s

        # Redis restarted without its data: the nonces and the epoch are gone together.
        for key in client.scan_iter(match=redis_prefix + "*"):
            client.delete(key)
        clock.advance(60)
        assert first.remember("wechat", NONCE, TTL_S) is True  # forgotten...
        assert first.epoch_s == started_s + 120  # ...so its old requests are refused
        assert second.remember("wechat", "other-nonce-2", TTL_S) is True
        assert second.epoch_s == started_s + 120
    finally:
        client.close()


@pytest.mark.redis
def test_a_new_redis_epoch_starts_with_the_process_not_its_first_call(
    redis_url: str, redis_prefix: str
) -> None:
    """A request signed in the second before a new store's first call must pass: the
    epoch starts when the process starts (``open_epoch``), not at that call."""
    client = redis.Redis.from_url(redis_url)
    try:
        clock = FakeClock()
        store = RedisNonceStore(client, key_prefix=redis_prefix, clock=clock)
        store.open_epoch()
        started_s = int(clock.now().timestamp())
        clock.advance(1)
        assert store.remember("wechat", NONCE, TTL_S) is True
        assert store.epoch_s == started_s  # a call signed at started_s is not stale
        # Another process starting later keeps the store's epoch.
        clock.advance(30)
        later = RedisNonceStore(client, key_prefix=redis_prefix, clock=clock)
        later.open_epoch()
        assert later.remember("wechat", "other-nonce-1", TTL_S) is True
        assert later.epoch_s == started_s
    finally:
        client.close()


def test_redis_down_is_unavailable_not_a_crash() -> None:
    # Nothing listens on port 1; the store must answer with an operating error of its
    # own, so that a Redis outage does not send operators to the database.
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    try:
        with pytest.raises(Unavailable) as caught:
            RedisNonceStore(client).remember("wechat", NONCE, TTL_S)
        assert caught.value.code == "nonce_store_unavailable"
        with pytest.raises(Unavailable) as caught:
            RedisNonceStore(client).remember_many([("wechat", NONCE)], TTL_S)
        assert caught.value.code == "nonce_store_unavailable"
    finally:
        client.close()
