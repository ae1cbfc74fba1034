"""A claim's Idempotency-Key in flight in one process is in flight in all of them.

Two platforms (two API processes) on one store and one gate: a retry of a
claim reaching the second while the first still runs hears
``idempotency_in_flight``, then the replay, never what the gate says of the
first request's reservation (``already_claimed``). The holds are behind a
port (``KeyHolds``): in Redis beside the shared gate, in memory for tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from lequan.adapters.key_holds import HoldTable, MemoryKeyHolds, RedisKeyHolds
from lequan.bootstrap import build_runtime, start_platform
from lequan.config import Settings
from lequan.ports import KeyHolds
from lequan.services.idempotency import InFlight
from tests.factories import World, dining_config
from tests.integration.conftest import SHARED_STACKS, Stack, _stack
from tests.integration.test_claim_invariants import (
    TEMPLATE,
    assert_books,
    claim_one,
    remaining,
    stored_vouchers,
    voucher_id,
)
from tests.waiting import wait_until


@pytest.fixture(params=["sqlite+memory", SHARED_STACKS[0], SHARED_STACKS[2]])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """One memory gate shared in-process, one Redis, and a Redis Cluster."""
    yield from _stack(request, tmp_path)


class Holds:
    """Where the holds of one deployment live, and each process's view of them."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._table = HoldTable()
        self._clients: list[redis.Redis | RedisCluster] = []

    def of_a_process(self) -> KeyHolds:
        if self._stack.redis_url is None:
            return MemoryKeyHolds(self._table)
        client: redis.Redis | RedisCluster = (
            RedisCluster.from_url(self._stack.redis_url)
            if self._stack.redis_cluster
            else redis.Redis.from_url(self._stack.redis_url)
        )
        self._clients.append(client)
        return RedisKeyHolds(client, key_prefix=self._stack.redis_prefix or "")

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.fixture
def holds(stack: Stack) -> Iterator[Holds]:
    made = Holds(stack)
    yield made
    made.close()


@contextmanager
def second_process(world: World, stack: Stack, tmp_path: Path, holds: Holds) -> Iterator[World]:
    """Another API process: the same store and the same gate (its own client to it)."""
    settings = Settings(data_dir=tmp_path / "second", database_url=stack.database_url)
    (tmp_path / "second").mkdir()
    gate = world.rt.gate if stack.redis_url is None else stack.new_gate()
    rt = build_runtime(settings, clock=world.clock, keyring=world.rt.keyring, gate=gate)
    rt.inflight = InFlight(shared=holds.of_a_process(), hold_ttl_s=60)
    platform = start_platform(rt, sweep=False)
    try:
        yield World(platform=platform, clock=world.clock, secrets=world.secrets)
    finally:
        platform.stop_workers()
        if gate is not world.rt.gate:
            gate.close()
        rt.store.dispose()


def test_a_retry_in_another_process_is_in_flight_then_replayed(
    stack: Stack, tmp_path: Path, holds: Holds
) -> None:
    # The first request waits a second in the writer for company: still in flight.
    with stack.world(tmp_path, claim_batch_wait_ms=1000) as world:
        world.rt.inflight = InFlight(shared=holds.of_a_process(), hold_ttl_s=60)
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)
        with second_process(world, stack, tmp_path, holds) as other:
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(claim_one, world, user, "k-1")
                wait_until(lambda: remaining(world) == 9, what="reserved, not committed")
                retry = claim_one(other, user, "k-1")
                issued = first.result(30)
            assert issued.outcome == "issued", issued
            assert retry.outcome == "idempotency_in_flight", retry
            assert retry.answer.status_code == 409

            again = claim_one(other, user, "k-1")
            assert again.outcome == "replayed", again
            assert again.answer == issued.answer
        assert [s.id for s in stored_vouchers(world)] == [voucher_id(issued)]
        assert assert_books(world).issued == 1


def test_holds_are_one_per_key_across_processes_and_expire(stack: Stack, holds: Holds) -> None:
    one, two = holds.of_a_process(), holds.of_a_process()
    a, b = ("wechat", f"k-a-{uuid.uuid4().hex}"), ("wechat", f"k-b-{uuid.uuid4().hex}")

    assert one.hold([a, b], ttl_s=60) == [True, True]
    assert two.hold([a, b], ttl_s=60) == [False, False]
    assert one.hold([a], ttl_s=60) == [True]  # its own: a command sent again finds it

    two.let_go([a])  # not its hold: nothing changes
    assert two.hold([a], ttl_s=60) == [False]
    one.let_go([a])
    assert two.hold([a], ttl_s=60) == [True]

    # A process that dies holding c: the hold expires.
    c = ("wechat", f"k-c-{uuid.uuid4().hex}")
    assert one.hold([c], ttl_s=0.05) == [True]
    deadline = time.monotonic() + 10
    while not two.hold([c], ttl_s=60)[0]:
        assert time.monotonic() < deadline, "the hold never expired"
        time.sleep(0.02)
    two.let_go([a, c])
    one.let_go([b])


def test_in_flight_holds_a_claim_in_both_places_and_lets_go_of_both(
    stack: Stack, holds: Holds
) -> None:
    here = InFlight(shared=holds.of_a_process(), hold_ttl_s=60)
    there = InFlight(shared=holds.of_a_process(), hold_ttl_s=60)
    key = ("wechat", f"k-{uuid.uuid4().hex}")

    assert here.acquire_many([key, key]) == [True, False]
    assert there.acquire_many([key]) == [False]
    # Refused by the other process, it holds nothing here either.
    here.release_many([key])
    assert there.acquire_many([key]) == [True]
    assert here.acquire_many([key]) == [False]
    there.release_many([key])
