"""Sold-out flags reach every API process over Redis (real server, real threads)."""

from __future__ import annotations

import threading
import time
from functools import partial

import pytest
import redis
from redis.cluster import RedisCluster

from lequan.adapters.sold_out import LocalSoldOut, RedisSoldOut

pytestmark = pytest.mark.redis


def wait_for_flags(flags: list[tuple[str, str]], count: int) -> None:
    deadline = time.monotonic() + 10
    while len(flags) < count and time.monotonic() < deadline:
        time.sleep(0.01)


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
    try:
        for board, flags in zip(boards, heard, strict=True):
            board.listen(partial(_add_flag, lock, flags))
        time.sleep(0.3)  # the listeners are subscribed

        boards[0].publish("camp:r1:wechat", "d300-90")
        boards[1].publish("camp:r1:alipay", "d500-150")

        for flags in heard:
            wait_for_flags(flags, 2)
            assert sorted(flags) == [("camp:r1:alipay", "d500-150"), ("camp:r1:wechat", "d300-90")]
    finally:
        for board in boards:
            board.close()


def test_a_foreign_message_on_the_channel_is_ignored(redis_url: str, redis_prefix: str) -> None:
    channel = f"{redis_prefix}sold-out"
    board = RedisSoldOut(redis.Redis.from_url(redis_url), channel=channel)
    heard: list[tuple[str, str]] = []
    lock = threading.Lock()
    board.listen(lambda pool, template: _add(lock, heard, (pool, template)))
    try:
        time.sleep(0.3)
        with redis.Redis.from_url(redis_url) as other:
            other.publish(channel, "no separator here")
            other.publish(channel, "x" * 500)
        board.publish("camp:r1:wechat", "d300-90")
        wait_for_flags(heard, 1)
        time.sleep(0.1)
        assert heard == [("camp:r1:wechat", "d300-90")]
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
