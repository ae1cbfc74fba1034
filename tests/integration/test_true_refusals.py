"""``already_claimed`` and ``claim_limit_reached`` are answered only when they are
true: the store holds the vouchers they count.

The gate counts a person's pending reservations with their vouchers. When
Redis ran a reservation but its reply was lost (``gate_unavailable``), or a
batch broke between the gate's steps, the gate counts a claim nobody will
commit. The person's retry must not hear "claimed already" while they hold
nothing: it hears ``503 claim_pending`` while the orphan might still be
committed somewhere (until the fence), then gets its voucher. Faults are
made at the seams: a gate that loses the reply after the real gate applied
the call, and a Redis client whose pipeline is lost before it reaches the
server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from lequan.adapters.redis_gate import RedisGate
from lequan.ports import ClaimGate, GateUnavailable, ReserveRequest, ReserveResult
from lequan.services.gatekeeper import RECOUNT_QUIET_FENCES
from tests.factories import World, dining_config, make_world
from tests.integration.conftest import SHARED_STACKS, Stack, _stack
from tests.integration.test_claim_invariants import (
    FENCED,
    TEMPLATE,
    GateInFront,
    assert_books,
    claim_one,
    remaining,
    stored_vouchers,
    voucher_id,
)
from tests.waiting import wait_until


@pytest.fixture(params=["sqlite+memory", *SHARED_STACKS[:2]])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The memory gate and the Redis gate, with one bucket and several (the pending
    reservations of a person are in their home bucket)."""
    yield from _stack(request, tmp_path)


class LosesReplies(GateInFront):
    """While ``losing``, a reservation's reply is lost after the gate applied it."""

    losing = False

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        answers = self.inner.reserve(requests)
        if self.losing:
            raise GateUnavailable("ConnectionError")
        return answers


@contextmanager
def mended_by_claims(database_url: str, tmp_path: Path, gate: ClaimGate) -> Iterator[World]:
    """A platform behind ``gate`` whose reaper is stopped: only its claims mend the gate
    (and none of the reaper's calls to Redis meets a fault meant for a claim)."""
    with make_world(database_url=database_url, tmp_path=tmp_path, gate=gate, **FENCED) as world:
        world.platform.gatekeeper.stop()
        yield world


def one_voucher_per_campaign(**updates: Any) -> Any:
    """The dining campaign in WeChat and Alipay, at most one voucher per person in all."""
    return dining_config(
        stock={"wechat": {TEMPLATE: 10}, "alipay": {TEMPLATE: 10}},
        limits={"per_person_per_round_per_channel": 1, "per_person_per_campaign": 1},
        **updates,
    )


def past_the_fence(world: World, fences: float = 1) -> None:
    """Let the time a reservation may still be committed in run out."""
    time.sleep(fences * world.rt.settings.gate_fence_s + 0.2)


def assert_retry_shortly(result: Any) -> None:
    assert result.outcome == "claim_pending", result
    assert result.answer.status_code == 503
    assert result.error is not None
    assert result.error.retry_after_s == 1


def test_a_retry_after_a_lost_reply_is_not_told_already_claimed(
    stack: Stack, tmp_path: Path
) -> None:
    gate = LosesReplies(stack.new_gate())
    with mended_by_claims(stack.database_url, tmp_path, gate) as world:
        user = world.register(1)
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        gate.losing = True
        lost = claim_one(world, user, "k-1")
        gate.losing = False
        assert lost.outcome == "gate_unavailable", lost
        assert remaining(world) == 9  # Redis ran it: a reservation nobody owns

        # It might still be committed somewhere until the fence: retry shortly.
        assert_retry_shortly(claim_one(world, user, "k-1"))
        assert remaining(world) == 9
        assert stored_vouchers(world) == []

        # Past the fence it can commit nowhere: released, and reserved again for them.
        past_the_fence(world)
        late = claim_one(world, user, "k-1")
        assert late.outcome == "issued", late
        assert [s.id for s in stored_vouchers(world)] == [voucher_id(late)]
        assert remaining(world) == 9
        # Now it is true.
        assert claim_one(world, user, "k-2").outcome == "already_claimed"
        assert assert_books(world).issued == 1


def test_a_claim_in_another_channel_after_a_lost_reply_is_not_told_the_limit_is_reached(
    stack: Stack, tmp_path: Path
) -> None:
    gate = LosesReplies(stack.new_gate())
    with mended_by_claims(stack.database_url, tmp_path, gate) as world:
        user = world.register(1, channel="wechat")
        assert world.register(1, channel="alipay") == user  # one person, two accounts
        world.open_campaign(one_voucher_per_campaign())
        gate.losing = True
        assert claim_one(world, user, "k-w").outcome == "gate_unavailable"
        gate.losing = False

        assert_retry_shortly(claim_one(world, user, "k-a", channel="alipay"))

        past_the_fence(world)
        late = claim_one(world, user, "k-a", channel="alipay")
        assert late.outcome == "issued", late
        assert remaining(world, "wechat") == 10  # the lost one was given back
        assert remaining(world, "alipay") == 9
        assert claim_one(world, user, "k-w2").outcome == "claim_limit_reached"
        assert assert_books(world).issued == 1


def test_a_claim_while_another_of_the_person_is_being_committed_is_not_told_it_is_done(
    stack: Stack, tmp_path: Path
) -> None:
    """The first claim is reserved and waits for its commit (the writer waits a second
    for company): the second, under another key, may not be told "already claimed"
    for a voucher the store does not hold; once it does, it is."""
    with stack.world(tmp_path, claim_batch_wait_ms=1000) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(claim_one, world, user, "k-1")
            wait_until(lambda: remaining(world) == 9, what="the gate holds the reservation")
            meanwhile = claim_one(world, user, "k-2")
            assert first.result(30).outcome == "issued"
        assert_retry_shortly(meanwhile)
        assert claim_one(world, user, "k-2").outcome == "already_claimed"
        assert assert_books(world).issued == 1


class LosesPipelines:
    """A redis-py client whose next pipeline touching a pool's journal is lost before it
    reaches the server, once ``armed``: a batch broken between the gate's steps."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        return _LosablePipeline(self, self._client.pipeline(*args, **kwargs))


class _LosablePipeline:
    def __init__(self, owner: LosesPipelines, inner: Any) -> None:
        self._owner = owner
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        touched = [str(part) for command, _options in self._inner.command_stack for part in command]
        if self._owner.armed and any(part.endswith(":pending") for part in touched):
            self._owner.armed = False
            self._inner.reset()
            raise redis.ConnectionError("the connection dropped before the call was sent")
        return self._inner.execute(*args, **kwargs)


@pytest.fixture
def lossy_redis(redis_url: str) -> Iterator[LosesPipelines]:
    client = redis.Redis.from_url(redis_url)
    yield LosesPipelines(client)
    client.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_a_campaign_count_left_by_a_broken_batch_is_given_back(
    lossy_redis: LosesPipelines, redis_prefix: str, migrated_postgres_url: str, tmp_path: Path
) -> None:
    """The person's campaign count was taken (step 1) and the pool never reserved (step
    2 was lost): no reservation, no voucher, and a count that no release will give
    back. Told "limit reached" it would stay so until the gate is rebuilt."""
    gate = RedisGate(lossy_redis, key_prefix=redis_prefix)  # type: ignore[arg-type]  # a redis-py client in front of one
    with mended_by_claims(migrated_postgres_url, tmp_path, gate) as world:
        user = world.register(1, channel="wechat")
        world.register(1, channel="alipay")
        world.open_campaign(one_voucher_per_campaign())
        lossy_redis.armed = True
        assert claim_one(world, user, "k-w").outcome == "gate_unavailable"
        assert not lossy_redis.armed  # the pool's step was the one lost
        assert remaining(world, "wechat") == 10

        # A claim between its steps could hold that count: not yet, then.
        assert_retry_shortly(claim_one(world, user, "k-a", channel="alipay"))

        past_the_fence(world, RECOUNT_QUIET_FENCES)
        late = claim_one(world, user, "k-a", channel="alipay")
        assert late.outcome == "issued", late
        assert claim_one(world, user, "k-w2").outcome == "claim_limit_reached"
        assert remaining(world, "alipay") == 9
        assert assert_books(world).issued == 1
