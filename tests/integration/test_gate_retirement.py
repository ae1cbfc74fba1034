"""A campaign whose rounds have all ended lets go of its gate state (memory, or Redis
keys of per-person counts); the store keeps the truth, and the gate is not loaded
for it again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from lequan.services.campaigns import RETIRE_AFTER_FENCES, ensure_gate_all
from lequan.services.sweeper import sweep
from tests.factories import dining_config
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    TEMPLATE,
    assert_books,
    claim_one,
    register_many,
    remaining,
)


def gate_keys(stack: Stack) -> list[bytes]:
    """Every key the stack's Redis gate holds (none for the in-process gate)."""
    if stack.redis_url is None:
        return []
    client: redis.Redis | RedisCluster = (
        RedisCluster.from_url(stack.redis_url)
        if stack.redis_cluster
        else redis.Redis.from_url(stack.redis_url)
    )
    try:
        return list(client.scan_iter(match=f"{stack.redis_prefix}*", count=1000))
    finally:
        client.close()


def test_the_gate_of_a_finished_campaign_is_let_go_and_not_loaded_again(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.world(tmp_path) as world:
        users = register_many(world, range(3))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        assert [claim_one(world, u, f"k-{u}").outcome for u in users[:2]] == ["issued"] * 2
        row = world.platform.campaigns.get(CAMPAIGN)
        assert row is not None
        last_end = max(ends_at for _, ends_at in row.rounds.values())
        after = timedelta(seconds=RETIRE_AFTER_FENCES * world.rt.settings.gate_fence_s)

        # While a round is open, and until two fences after the last one ends: kept.
        assert sweep(world.rt).gates_retired == 0
        world.clock.set(last_end + after - timedelta(seconds=1))
        assert sweep(world.rt).gates_retired == 0
        assert remaining(world) == 3
        assert bool(gate_keys(stack)) == stack.shared

        world.clock.set(last_end + after + timedelta(seconds=1))
        assert sweep(world.rt).gates_retired == 1
        assert remaining(world) is None
        assert not world.rt.gate.loaded(CAMPAIGN, [])
        assert gate_keys(stack) == []  # the per-person counts are gone from Redis too
        assert sweep(world.rt).gates_retired == 0  # nothing left to let go

        # A process starting now does not load it again, and a late claim is
        # refused for the round's end, not sent to rebuild the gate.
        assert ensure_gate_all(world.rt) == 0
        assert not world.rt.gate.loaded(CAMPAIGN, [])
        late = claim_one(world, users[2], f"k-{users[2]}")
        assert late.outcome == "round_ended", late
        assert not world.rt.gate.loaded(CAMPAIGN, [])
        # The store's truth is whole.
        assert assert_books(world).issued == 2
