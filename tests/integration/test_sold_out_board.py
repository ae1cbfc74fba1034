"""Sold-out flags reach every API process over Redis (real server, real threads)."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from lequan.adapters.sold_out import LocalSoldOut, RedisSoldOut
from lequan.services.campaigns import pool_key
from tests.factories import dining_config
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    TEMPLATE,
    claim_one,
    register_many,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.redis


def listeners(client: redis.Redis | RedisCluster, channel: str) -> int:
    """Connections subscribed to ``channel``; on a cluster, summed over its nodes (a
    listener subscribes on one of them, and a message is published to all)."""
    if isinstance(client, RedisCluster):
        counts = client.pubsub_numsub(channel, target_nodes=RedisCluster.ALL_NODES)
    else:
        counts = client.pubsub_numsub(channel)
    return sum(count for _channel, count in counts)


def wait_for_listeners(client: redis.Redis | RedisCluster, channel: str, count: int) -> None:
    """Until ``count`` listeners are subscribed: a message published before is lost."""
    wait_until(
        lambda: listeners(client, channel) >= count,
        what=f"{count} listeners subscribed to {channel}",
    )


def wait_for_flags(flags: list[tuple[str, str]], count: int) -> None:
    wait_until(lambda: len(flags) >= count, what=f"{count} sold-out flags heard")


@pytest.mark.parametrize("topology", ["redis", "redis_cluster"])
def test_a_flag_raised_in_one_process_is_raised_in_the_others(
    topology: str, request: pytest.FixtureRequest, redis_prefix: str
) -> None:
    def client() -> redis.Redis | RedisCluster:
        if topology == "redis_cluster":
            host, port = request.getfixturevalue("redis_cluster")
            return RedisCluster(host=host, port=port)
        url: str = request.getfixturevalue("redis_url")
        return redis.Redis.from_url(url)

    channel = f"{redis_prefix}sold-out"
    boards = [RedisSoldOut(client(), channel=channel) for _ in range(3)]
    heard: list[list[tuple[str, str]]] = [[] for _ in boards]
    lock = threading.Lock()
    probe = client()
    try:
        for board, flags in zip(boards, heard, strict=True):
            board.listen(partial(_add_flag, lock, flags))
        wait_for_listeners(probe, channel, len(boards))

        boards[0].publish("camp:r1:wechat", "d300-90")
        boards[1].publish("camp:r1:alipay", "d500-150")

        for flags in heard:
            wait_for_flags(flags, 2)
            assert sorted(flags) == [("camp:r1:alipay", "d500-150"), ("camp:r1:wechat", "d300-90")]
    finally:
        for board in boards:
            board.close()
        probe.close()


def test_a_foreign_message_on_the_channel_is_ignored(redis_url: str, redis_prefix: str) -> None:
    channel = f"{redis_prefix}sold-out"
    board = RedisSoldOut(redis.Redis.from_url(redis_url), channel=channel)
    heard: list[tuple[str, str]] = []
    lock = threading.Lock()
    board.listen(lambda pool, template: _add(lock, heard, (pool, template)))
    try:
        with redis.Redis.from_url(redis_url) as other:
            wait_for_listeners(other, channel, 1)
            other.publish(channel, "no separator here")
            other.publish(channel, "x" * 500)
        board.publish("camp:r1:wechat", "d300-90")
        wait_for_flags(heard, 1)
        # One server delivers in the order published: the foreign messages came
        # first and were dropped, or they would be heard before the flag.
        assert heard == [("camp:r1:wechat", "d300-90")]
    finally:
        board.close()


def test_the_first_sold_out_answer_of_a_platform_reaches_the_other_processes(
    shared_stack: Stack, tmp_path: Path
) -> None:
    """The wiring, not the board alone: the claim service that first hears SOLD_OUT
    from the gate publishes it once; the flood after it is answered from its flag."""
    stack = shared_stack
    assert stack.redis_url is not None
    assert stack.redis_prefix is not None
    channel = f"{stack.redis_prefix}sold-out"
    probe = (
        RedisCluster.from_url(stack.redis_url)
        if stack.redis_cluster
        else redis.Redis.from_url(stack.redis_url)
    )
    other_process = RedisSoldOut(
        RedisCluster.from_url(stack.redis_url)
        if stack.redis_cluster
        else redis.Redis.from_url(stack.redis_url),
        channel=channel,
    )
    heard: list[tuple[str, str]] = []
    lock = threading.Lock()
    other_process.listen(partial(_add_flag, lock, heard))
    try:
        with stack.world(
            tmp_path,
            redis_url=stack.redis_url,
            redis_key_prefix=stack.redis_prefix,
            redis_cluster=stack.redis_cluster,
        ) as world:
            users = register_many(world, range(6))
            world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 2}}))
            wait_for_listeners(probe, channel, 2)  # the other process's, and the platform's
            outcomes = [claim_one(world, user, f"k-{user}").outcome for user in users]
            assert outcomes == ["issued", "issued"] + ["sold_out"] * 4
            wait_for_flags(heard, 1)
            # A message that is not sent leaves nothing to wait for: a moment in
            # which a second one would be heard (it would arrive in milliseconds).
            time.sleep(0.2)
            assert heard == [(pool_key(CAMPAIGN, "r1", "wechat"), TEMPLATE)]
    finally:
        other_process.close()
        probe.close()


def test_a_listener_whose_connection_is_dropped_comes_back(
    redis_url: str, redis_prefix: str
) -> None:
    channel = f"{redis_prefix}sold-out"
    board = RedisSoldOut(redis.Redis.from_url(redis_url), channel=channel)
    heard: list[tuple[str, str]] = []
    lock = threading.Lock()
    board.listen(partial(_add_flag, lock, heard))
    try:
        with redis.Redis.from_url(redis_url) as admin:
            wait_for_listeners(admin, channel, 1)
            assert admin.client_kill_filter(_type="pubsub") >= 1  # as a Redis restart would

            def heard_after_publishing() -> bool:
                # Published until heard: a message sent while nobody listens is lost
                # by design, and one may reach a connection that is being closed.
                if not heard:
                    admin.publish(channel, "camp:r1:wechat\x1fd300-90")
                return bool(heard)

            wait_until(heard_after_publishing, what="the dropped listener heard a flag again")
        assert set(heard) == {("camp:r1:wechat", "d300-90")}
    finally:
        board.close()


def test_one_process_has_nobody_to_tell() -> None:
    board = LocalSoldOut()
    board.listen(lambda pool, template: pytest.fail("nobody else publishes"))
    board.publish("camp:r1:wechat", "d300-90")
    board.close()


def _add_flag(lock: threading.Lock, flags: list[tuple[str, str]], pool: str, template: str) -> None:
    _add(lock, flags, (pool, template))


def _add(lock: threading.Lock, flags: list[tuple[str, str]], flag: tuple[str, str]) -> None:
    with lock:
        flags.append(flag)
