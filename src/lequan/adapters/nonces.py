"""Nonce stores: remember each signed request's nonce for its window, so a replay is refused.

Two implementations of ``lequan.ports.NonceStore``:

* ``MemoryNonceStore`` for the embedded mode, the demo and unit tests: one
  process, bounded, and it refuses new requests (``throttled``) rather than
  forget a live nonce, since forgetting one would let a captured request be
  replayed.
* ``RedisNonceStore`` for a fleet of API processes: one ``SET NX GET EX``
  per request, atomic on the server, forgotten by Redis when the window ends.

The caller passes nonces that ``lequan.signing.parse_headers`` accepted
(8-64 characters of ``[A-Za-z0-9_-]``) and a ttl at least as long as the
accepted clock skew on both sides (2 x ``max_skew_s``), since a timestamp
may be that far ahead of the server and still be accepted later.

Each store has an *epoch*, the second since which it holds every nonce it
was given: a store that forgot (a restarted process, a Redis that lost its
data) would otherwise take a captured request for a new one for the rest of
its window. The memory store's is its start; the Redis store's is a key set
once, with ``SET NX``, by the first call that finds it missing, so a Redis
that lost its keys lost that one too and gets a new epoch.
"""

from __future__ import annotations

import heapq
import math
import secrets
import threading
from collections.abc import Sequence

import redis
import structlog
from redis.cluster import RedisCluster

from lequan.adapters.clock import SystemClock
from lequan.domain.errors import Unavailable
from lequan.ports import Clock

__all__ = ["MemoryNonceStore", "RedisNonceStore"]

log = structlog.get_logger(__name__)


class MemoryNonceStore:
    """An in-process NonceStore holding at most ``max_entries`` live nonces."""

    in_process = True

    def __init__(self, max_entries: int, *, clock: Clock) -> None:
        assert max_entries >= 1
        self._max_entries = max_entries
        self._clock = clock
        # Whatever an earlier process was told is not in this memory.
        self._epoch_s = math.floor(clock.now().timestamp())
        self._lock = threading.Lock()
        # (app_id, nonce) -> expiry in unix seconds; the heap orders the same
        # entries by expiry so the expired ones are dropped in O(log n) each.
        self._expiry_s: dict[tuple[str, str], float] = {}
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []

    def remember(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        """Record the nonce; True if new, False if seen within its ttl.

        Raises ``Unavailable("throttled")`` when the store is full of live
        nonces: refusing the request is safe, forgetting a nonce is not.
        """
        return self.remember_many([(app_id, nonce)], ttl_s)[0]

    def remember_many(self, nonces: Sequence[tuple[str, str]], ttl_s: int) -> list[bool]:
        """Each nonce, under one lock; refused whole (``throttled``) when the new ones
        would not fit, so none of them is recorded then."""
        assert ttl_s >= 1
        now_s = self._clock.now().timestamp()
        with self._lock:
            self._drop_expired(now_s)
            new = {key for key in nonces if key not in self._expiry_s}
            if len(self._expiry_s) + len(new) > self._max_entries:
                next_expiry_s = self._by_expiry[0][0] if self._by_expiry else now_s + ttl_s
                raise Unavailable(
                    "throttled",
                    "too many signed requests in the signature window; retry shortly",
                    retry_after_s=max(1, math.ceil(next_expiry_s - now_s)),
                )
            expiry_s = now_s + ttl_s
            fresh: list[bool] = []
            for key in nonces:
                if key in self._expiry_s:
                    fresh.append(False)
                    continue
                self._expiry_s[key] = expiry_s
                heapq.heappush(self._by_expiry, (expiry_s, key))
                fresh.append(True)
            return fresh

    @property
    def epoch_s(self) -> int:
        """The store's start: it holds every nonce given to it since."""
        return self._epoch_s

    def __len__(self) -> int:
        """The nonces held, live or expired but not yet dropped."""
        with self._lock:
            return len(self._expiry_s)

    def _drop_expired(self, now_s: float) -> None:
        # Expired entries are dropped before anything is looked up, so a key
        # is never in the heap twice and the dict and the heap stay one to one.
        while self._by_expiry and self._by_expiry[0][0] <= now_s:
            _, key = heapq.heappop(self._by_expiry)
            del self._expiry_s[key]


class RedisNonceStore:
    """A NonceStore in Redis: one key per nonce, set only if absent, expiring with the window."""

    in_process = False

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        key_prefix: str = "lq:",
        *,
        clock: Clock | None = None,
    ) -> None:
        """``clock``: where a new epoch's time is read; the wall clock, as signatures'."""
        self._client = client
        self._key_prefix = key_prefix
        self._clock = clock or SystemClock()
        self._epoch_key = f"{key_prefix}nonce-epoch"
        self._epoch_s = 0  # read with every call; only ever moves forward

    @property
    def epoch_s(self) -> int:
        """The epoch the latest call read: the second the Redis first held a nonce of
        lequan's since it last lost its data."""
        return self._epoch_s

    def open_epoch(self) -> None:
        """Start the epoch now if the Redis has none (a new deployment, or one that lost
        its data), before the process takes its first call: otherwise a new store's
        first call, signed in the second before it arrived, would start the epoch
        after its own timestamp and be refused ``stale_timestamp``. An unreachable
        Redis is left for the first call to report."""
        try:
            self._client.set(self._epoch_key, math.floor(self._clock.now().timestamp()), nx=True)
        except redis.RedisError as error:
            log.warning("nonce_store_unavailable", error_type=type(error).__name__)

    def key(self, app_id: str, nonce: str) -> str:
        """The Redis key of one nonce; the nonce has no ':', so the last ':' splits it off."""
        assert ":" not in nonce, "nonces are checked by parse_headers before they are stored"
        return f"{self._key_prefix}nonce:{app_id}:{nonce}"

    def remember(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        """Record the nonce; True if it was new (see ``remember_many``)."""
        return self.remember_many([(app_id, nonce)], ttl_s)[0]

    def remember_many(self, nonces: Sequence[tuple[str, str]], ttl_s: int) -> list[bool]:
        """One ``SET key token NX GET EX ttl`` per nonce, all in one pipeline (one round
        trip per node).

        Each nonce is stored with a token of this call's own: a nonce is new if
        no value was there, or if the value is its own token. A client that
        sends a command again after a lost reply (the cluster pipeline does,
        on a timeout) so finds its own write rather than a replay. Needs Redis 7.

        The same pipeline reads the epoch, setting it to now if it is missing
        (``SET NX GET``, no expiry): a Redis that lost its data lost the epoch
        with the nonces, and the first call after starts a new one.
        """
        assert ttl_s >= 1
        if not nonces:
            return []
        call = secrets.token_hex(8)
        tokens = [f"{call}:{n}".encode() for n in range(len(nonces))]
        now_s = math.floor(self._clock.now().timestamp())
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self._epoch_key, now_s, nx=True, get=True)
            for (app_id, nonce), token in zip(nonces, tokens, strict=True):
                pipe.set(self.key(app_id, nonce), token, nx=True, ex=ttl_s, get=True)
            epoch, *replies = pipe.execute()
        except redis.RedisError as error:
            log.warning("nonce_store_unavailable", error_type=type(error).__name__)
            raise Unavailable(
                "nonce_store_unavailable",
                "the nonce store does not answer; nothing was done, retry shortly",
            ) from error
        # Concurrent calls may finish out of order: the epoch never moves back.
        self._epoch_s = max(self._epoch_s, now_s if epoch is None else int(epoch))
        return [
            reply is None or reply == token for reply, token in zip(replies, tokens, strict=True)
        ]
