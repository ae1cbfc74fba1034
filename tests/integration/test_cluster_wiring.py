"""The platform built from settings alone on a real Redis Cluster: the gate, the
nonces and the sold-out broadcast all reach the cluster, and a claim works."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from lequan.adapters.crypto import generate_keyring
from lequan.adapters.redis_gate import RedisGate
from lequan.adapters.sold_out import RedisSoldOut
from lequan.adapters.timed_gate import TimedGate
from lequan.bootstrap import Platform, build_runtime, sold_out_board, start_platform
from lequan.config import Settings
from lequan.services.campaigns import pool_key
from tests.integration.test_sold_out_board import wait_for_listeners
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def cluster_settings(
    redis_cluster: tuple[str, int], migrated_postgres_url: str, tmp_path: Path
) -> Settings:
    host, port = redis_cluster
    return Settings(
        data_dir=tmp_path,
        database_url=migrated_postgres_url,
        redis_url=f"redis://{host}:{port}/0",
        redis_cluster=True,
        redis_key_prefix=f"lqtest:{uuid.uuid4().hex[:12]}:",
        gate_buckets=4,
    )


@pytest.fixture
def platform(cluster_settings: Settings) -> Iterator[Platform]:
    rt = build_runtime(cluster_settings, keyring=generate_keyring())
    started = start_platform(rt, sweep=False)
    yield started
    started.close()


def test_the_gate_from_settings_is_bucketed_over_the_cluster(platform: Platform) -> None:
    timed = platform.rt.gate
    assert isinstance(timed, TimedGate)  # the claim path's calls are timed (lequan.metrics)
    gate = timed.inner
    assert isinstance(gate, RedisGate)
    assert gate.buckets == 4
    pool = pool_key("camp-x", "r1", "wechat")
    gate.reset_pool(pool, stock={"t1": 9}, claimed={})
    assert gate.remaining(pool, "t1") == 9


def test_nonces_from_settings_live_on_the_cluster(platform: Platform) -> None:
    nonces = platform.rt.nonces
    nonce = uuid.uuid4().hex
    assert nonces.remember("wechat", nonce, 60) is True
    assert nonces.remember("wechat", nonce, 60) is False  # a replay, whichever node holds it


def test_sold_out_flags_from_settings_reach_another_process(
    platform: Platform, cluster_settings: Settings
) -> None:
    assert isinstance(platform.sold_out, RedisSoldOut)
    other = sold_out_board(cluster_settings)  # as another API process would build it
    probe = RedisCluster.from_url(cluster_settings.redis_url)
    try:
        wait_for_listeners(probe, f"{cluster_settings.redis_key_prefix}sold-out", 1)
        other.publish("camp-x:r1:wechat", "t1")
        wait_until(
            lambda: ("camp-x:r1:wechat", "t1") in platform.campaigns.sold_out,
            what="the flag reached the platform",
        )
    finally:
        other.close()
        probe.close()


def test_an_operator_rebuilds_a_campaign_gate_and_a_viewer_may_not(
    platform: Platform, cluster_settings: Settings
) -> None:
    from lequan.domain.errors import AuthError
    from lequan.services import admin, campaigns
    from tests.factories import dining_config

    rt = platform.rt
    admin.add_operator(rt, "alice", role="maker")
    admin.add_operator(rt, "bob", role="checker")
    admin.add_operator(rt, "vera", role="viewer")
    config = dining_config(stock={"wechat": {"d300-90": 50}})
    campaigns.import_campaign(rt, config, actor="alice")
    campaigns.change_status(rt, config.id, "approve", actor="bob")
    pool = pool_key(config.id, "r1", "wechat")
    assert rt.gate.remaining(pool, "d300-90") == 50
    rt.gate.reset_pool(pool, stock={"d300-90": 3}, claimed={})  # the gate drifted

    with pytest.raises(AuthError):
        campaigns.rebuild_gate(rt, config.id, actor="vera")
    assert campaigns.rebuild_gate(rt, config.id, actor="alice") is True

    assert rt.gate.remaining(pool, "d300-90") == 50  # the store's truth again
