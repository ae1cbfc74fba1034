"""Idempotency keys held across API processes, beside the shared gate.

A claim's key held by one process is held for all of them: another process
answers its retry ``idempotency_in_flight`` instead of asking the gate,
which counts the first request's reservation and would answer "already
claimed". One Redis key per held claim key::

    <prefix>hold:<app_id>:<key>    the holding process's token (expires)

set only if absent, expiring after ``ttl_s`` (a process that dies holding
keys lets go of them then), and deleted only by its holder. ``MemoryKeyHolds``
does the same in a ``HoldTable`` that the platforms of one process share.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence

import redis
from redis.cluster import RedisCluster

from lequan.adapters.redis_scripts import DELETE_IF_LUA, ScriptCall, each_key, reaching, run_scripts

__all__ = ["HoldTable", "MemoryKeyHolds", "RedisKeyHolds"]


class RedisKeyHolds:
    """KeyHolds in Redis (or a Redis Cluster): a SET NX per key, pipelined per server."""

    def __init__(self, client: redis.Redis | RedisCluster, *, key_prefix: str = "lq:") -> None:
        self._client = client
        self._prefix = key_prefix
        # One per process: within a process InFlight never holds a key twice.
        self._token = secrets.token_hex(8)
        self._delete_if = client.register_script(DELETE_IF_LUA)

    def key(self, app_id: str, key: str) -> str:
        return f"{self._prefix}hold:{app_id}:{key}"

    @reaching
    def hold(self, keys: Sequence[tuple[str, str]], *, ttl_s: float) -> list[bool]:
        """``SET NX GET PX`` per key: held if it was absent, or already this process's.

        A command sent again after a lost reply finds its own token, not
        another holder's (Redis 7).
        """
        ttl_ms = max(1, int(ttl_s * 1000))
        replies = each_key(
            self._client,
            [self.key(app_id, key) for app_id, key in keys],
            lambda pipe, name: pipe.set(name, self._token, nx=True, px=ttl_ms, get=True),
        )
        mine = self._token.encode()
        return [reply is None or reply == mine for reply in replies]

    @reaching
    def let_go(self, keys: Sequence[tuple[str, str]]) -> None:
        run_scripts(
            self._client,
            [
                ScriptCall(self._delete_if, (self.key(app_id, key),), (self._token,))
                for app_id, key in keys
            ],
        )


class HoldTable:
    """What a Redis server would keep of the holds: key → (holder's token, until)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holds: dict[tuple[str, str], tuple[str, float]] = {}  # until in monotonic s


class MemoryKeyHolds:
    """KeyHolds in a ``HoldTable`` that the platforms of one process share (tests),
    each platform with a holder token of its own, as each process has with Redis."""

    def __init__(self, table: HoldTable) -> None:
        self._table = table
        self._token = secrets.token_hex(8)

    def hold(self, keys: Sequence[tuple[str, str]], *, ttl_s: float) -> list[bool]:
        now = time.monotonic()
        held: list[bool] = []
        with self._table.lock:
            for entry in keys:
                token, until = self._table.holds.get(entry, (self._token, now))
                if token != self._token and until > now:
                    held.append(False)
                else:
                    self._table.holds[entry] = (self._token, now + ttl_s)
                    held.append(True)
        return held

    def let_go(self, keys: Sequence[tuple[str, str]]) -> None:
        with self._table.lock:
            for entry in keys:
                if self._table.holds.get(entry, ("", 0.0))[0] == self._token:
                    del self._table.holds[entry]
