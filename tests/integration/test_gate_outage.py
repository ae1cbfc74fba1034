"""Redis down and back mid-sale: a real server of the test's own, shut down and
started again (empty), behind PostgreSQL.

While the gate cannot be reached, every claim is answered ``503
gate_unavailable`` (never a 500), nothing is reserved or written, and the
commit queue keeps no places for them. Once Redis is back, empty, the gate is
rebuilt from the store and the sale goes on: the stock sold once, nobody
twice, every ``issued`` answer a stored voucher, the books balanced.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from benchmarks.cluster import ClusterUnavailable, LocalRedis
from lequan.adapters.redis_gate import RedisGate
from lequan.services import campaigns
from lequan.services.claim_answers import ClaimResult
from tests.conftest import _unreachable
from tests.factories import (
    World,
    dining_config,
    import_merchants,
    make_world,
)
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    FENCED,
    TEMPLATE,
    assert_books,
    claim_one,
    concurrently,
    register_many,
    remaining,
    stored_vouchers,
    voucher_id,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    try:
        server = LocalRedis(tmp_path / "redis")
        server.start()
    except ClusterUnavailable as error:
        _unreachable("a Redis server of the test's own", error)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database_url(migrated_postgres_url: str) -> str:
    """PostgreSQL: the store a shared gate is used with."""
    return migrated_postgres_url


def claim_until_answered(world: World, user: str, key: str) -> ClaimResult:
    """What a person's app does with a 503: the same key again, shortly."""
    for _ in range(200):
        result = claim_one(world, user, key)
        if result.outcome not in (
            "gate_unavailable",
            "gate_rebuilding",
            "commit_timeout",
            "claim_pending",
        ):
            return result
        time.sleep(0.05)
    raise AssertionError(f"{user} was never answered")


def test_redis_down_and_back_mid_sale(
    own_redis: LocalRedis, database_url: str, tmp_path: Path
) -> None:
    stock, early, late = 30, 10, 30
    gate = RedisGate.from_url(
        own_redis.url, key_prefix=f"lqtest:{uuid.uuid4().hex[:8]}:", buckets=2
    )
    with make_world(database_url=database_url, tmp_path=tmp_path, gate=gate, **FENCED) as world:
        users = register_many(world, range(early + late))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        first = concurrently([partial(claim_one, world, u, f"k-{u}") for u in users[:early]])
        assert Counter(r.outcome for r in first) == {"issued": early}

        own_redis.stop()
        down = concurrently([partial(claim_one, world, u, f"k-{u}") for u in users[early:]])
        assert Counter(r.outcome for r in down) == {"gate_unavailable": late}
        assert {r.answer.status_code for r in down} == {503}
        assert len(stored_vouchers(world)) == early
        assert world.platform.claims.committer.waiting == 0

        own_redis.start()  # empty: everything the gate held is gone
        # Rebuilt from the store, the gate holds the early winners to one voucher.
        again = [claim_until_answered(world, u, f"again-{u}") for u in users[:early]]
        assert {r.outcome for r in again} == {"already_claimed"}
        rest = concurrently(
            [partial(claim_until_answered, world, u, f"k-{u}") for u in users[early:]]
        )
        assert Counter(r.outcome for r in rest) == {
            "issued": stock - early,
            "sold_out": late - (stock - early),
        }
        wait_until(lambda: remaining(world) == 0, what="the gate counted the whole stock out")
        stored = stored_vouchers(world)
        assert len(stored) == stock
        assert len({s.person_id for s in stored}) == stock
        assert sorted(s.id for s in stored) == sorted(
            voucher_id(r) for r in first + rest if r.outcome == "issued"
        )
        assert assert_books(world).issued == stock


def test_a_campaign_activated_while_redis_is_down_opens_once_it_is_back(
    own_redis: LocalRedis, database_url: str, tmp_path: Path
) -> None:
    """The operator's change is committed and answered, not a 500 after the commit;
    the gate loads the campaign when a claim finds it missing."""
    gate = RedisGate.from_url(own_redis.url, key_prefix=f"lqtest:{uuid.uuid4().hex[:8]}:")
    with make_world(database_url=database_url, tmp_path=tmp_path, gate=gate, **FENCED) as world:
        users = register_many(world, range(3))
        config = dining_config(stock={"wechat": {TEMPLATE: 2}})
        campaigns.import_campaign(world.rt, config, actor="alice")
        import_merchants(world)
        campaigns.change_status(world.rt, CAMPAIGN, "approve", actor="bob")
        own_redis.stop()
        row = campaigns.change_status(world.rt, CAMPAIGN, "activate", actor="bob")
        assert row.status.value == "live"
        world.clock.set(config.rounds[0].release_at)
        assert claim_one(world, users[0], "k-0").outcome == "gate_unavailable"

        own_redis.start()
        answers = [claim_until_answered(world, u, f"k-{u}") for u in users]
        assert [r.outcome for r in answers] == ["issued", "issued", "sold_out"]
        assert len(stored_vouchers(world)) == 2
        assert assert_books(world).issued == 2
