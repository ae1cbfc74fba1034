"""Calling Redis the way the gate and the key holds do: Lua scripts of one hash slot
each and plain commands per key, pipelined per server, on one Redis or a Redis
Cluster alike, with a server out of reach raised as the port's ``GateUnavailable``.

On a cluster the calls go to each primary's own connection, past the
cluster client, which therefore never sees a primary fail: a call that
cannot reach its server, or hears that the slot moved, makes the client read
the cluster's map again, so once a replica is promoted the next calls reach it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import (
    AskError,
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)

from lequan.ports import GateUnavailable

__all__ = ["DELETE_IF_LUA", "ScriptCall", "each_key", "reaching", "run_scripts"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

# What a server that is down, restarting, loading, full or failing over answers
# (a replica promoted meanwhile answers READONLY or TRYAGAIN for a moment, and a
# node that lost the slot MOVED or ASK). Anything else (a script's error, a
# cross-slot call) is a bug and stays one.
UNREACHABLE = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterError,
    ReadOnlyError,
    TryAgainError,
    OutOfMemoryError,
    SlotNotCoveredError,
    AskError,
)

# Letting go of a lock or a hold. KEYS[1] the key, ARGV[1] the holder's token:
# deleted only if it still holds that token (an expired one may be another's).
DELETE_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def reaching(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """The method, with Redis being out of reach raised as the port's GateUnavailable."""

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except UNREACHABLE as error:
            raise GateUnavailable(type(error).__name__) from error

    return call


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script call of a pipeline."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


def each_key(
    client: redis.Redis | RedisCluster, keys: Sequence[str], command: Callable[[Any, str], Any]
) -> list[Any]:
    """One command per key, pipelined per server; replies in key order."""
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for n, key in enumerate(keys):
        name, node = _node_of(client, key)
        by_node.setdefault(name, (node, []))[1].append(n)
    replies: list[Any] = [None] * len(keys)
    for node, indexes in by_node.values():
        pipe = node.pipeline(transaction=False)
        for n in indexes:
            command(pipe, keys[n])
        for n, reply in zip(indexes, _execute(client, pipe), strict=True):
            replies[n] = reply
    return replies


def run_scripts(client: redis.Redis | RedisCluster, calls: Sequence[ScriptCall]) -> list[Any]:
    """Run script calls in one pipeline per server; reload scripts the server forgot.

    ``Script`` objects in a pipeline would ask ``SCRIPT EXISTS`` first,
    one more round trip for every phase; instead EVALSHA goes out
    directly, and only the calls that came back NOSCRIPT (a restarted or
    flushed server) are sent again after a SCRIPT LOAD. A NOSCRIPT call
    did not run, so sending it again cannot apply it twice.
    """
    replies: list[Any] = [None] * len(calls)
    pending = list(range(len(calls)))
    for _attempt in range(2):
        if not pending:
            break
        missing: list[int] = []
        errors: list[Exception] = []
        for node, indexes in _by_node(client, calls, pending):
            pipe = node.pipeline(transaction=False)
            for i in indexes:
                call = calls[i]
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            for i, reply in zip(indexes, _execute(client, pipe, raise_on_error=False), strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(i)
                elif isinstance(reply, Exception):
                    errors.append(reply)
                else:
                    replies[i] = reply
            for script in {
                id(calls[i].script): calls[i].script for i in indexes if i in missing
            }.values():
                script.sha = node.script_load(script.script)
        if errors:
            if isinstance(errors[0], UNREACHABLE):
                _read_the_map_again(client)
            raise errors[0]
        pending = missing
    if pending:
        raise NoScriptError(f"scripts still unknown to the server after loading: {pending}")
    return replies


def _by_node(
    client: redis.Redis | RedisCluster, calls: Sequence[ScriptCall], indexes: Sequence[int]
) -> list[tuple[Any, list[int]]]:
    """The calls grouped by the server that holds their keys' slot.

    On one Redis that is the one client. On a Redis Cluster each script's
    keys share one hash slot, so each call goes whole to one primary; the
    cluster client's own pipeline refuses EVALSHA, so each primary gets a
    plain pipeline of its own.
    """
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i in indexes:
        name, node = _node_of(client, calls[i].keys[0])
        groups.setdefault(name, (node, []))[1].append(i)
    return list(groups.values())


def _execute(client: redis.Redis | RedisCluster, pipe: Any, **options: Any) -> list[Any]:
    try:
        replies: list[Any] = pipe.execute(**options)
    except UNREACHABLE:
        _read_the_map_again(client)
        raise
    return replies


def _read_the_map_again(client: redis.Redis | RedisCluster) -> None:
    """Have a cluster client ask the cluster which primary holds which slots now.

    Threads failing together read it once (redis-py skips a read another
    thread finished meanwhile). A cluster that cannot say yet (its failover
    still running) is asked again by the next failure.
    """
    if not isinstance(client, RedisCluster):
        return
    try:
        client.nodes_manager.initialize()
    except (RedisClusterException, redis.RedisError):
        return


def _node_of(client: redis.Redis | RedisCluster, key: str) -> tuple[str, Any]:
    if not isinstance(client, RedisCluster):
        return ("", client)
    node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    return (node.name, client.get_redis_connection(node))
