"""The claim gate on Redis, for many API processes answering one flash sale.

Every script touches the keys of one hash slot only, so the same code runs on
a Redis Cluster. A pool is split into ``buckets`` (1 by default), each its own
slot, so one hot campaign spreads over the shards of a cluster. The key
layout (``<prefix>`` defaults to ``lq:``; ``<tag>`` is ``p:<pool>`` with one
bucket, ``p:<pool>#<n>`` with several)::

    <prefix>{<tag>}:stock              HASH template_id → stock left in the bucket
    <prefix>{<tag>}:claimed            HASH person_id → claims in the pool
    <prefix>{<tag>}:pending            HASH template<US>person<US>seq → reserved at (ms)
    <prefix>{c:<campaign_id>}:claimed  HASH person_id → claims in the campaign
    <prefix>{c:<campaign_id>}:taken    HASH person_id → when their campaign count
                                       was last taken (ms, the server's time)
    <prefix>{c:<campaign_id>}:loaded   the campaign's state is complete
    <prefix>{c:<campaign_id>}:rebuilding
                                       who is rebuilding it (expires)
    <prefix>{...}:reset:<hex>:...      a reset being written; renamed over the
                                       live keys when complete, expires if not
    <prefix>{d:<campaign>:<round>}:... a round's draw, the fair start (its own
                                       slot: ``adapters/redis_draws.py``)

A person belongs to one *home* bucket (crc32 of the person id): their pool
count and their pending reservations live there, so the de-duplication is
atomic with the decrement. A person at 0 claims has no field.

A batch is not one round trip per request: its requests are grouped, one
script call per bucket and one per campaign, all sent in one pipeline per
server per phase. A person's campaign count lives in another slot than the
pool, so a reservation takes up to three phases:

1. per campaign, for the requests that carry a campaign limit: check and
   increment the person's campaign count atomically, stamping when
   (refusal: ``CAMPAIGN_LIMIT``);
2. per home bucket, in input order: ``UNKNOWN_STOCK`` / ``ALREADY_CLAIMED``
   / ``SOLD_OUT`` / ``OK``, exactly as :class:`~lequan.adapters.memory_gate.MemoryGate`;
   an ``OK`` is journalled as pending until ``settle`` or ``release``;
3. per campaign: decrement the count again for the requests that phase 2
   refused.

**No false "sold out".** With several buckets, a request whose home bucket
has none of the template left *borrows*: every other bucket is asked for
units (one script call each, pipelined), the units taken are deposited in
the home bucket and the waiting requests reserved again, in the same script
that deposits, so they get the units first. ``SOLD_OUT`` is answered only
when a round found every other bucket empty. Each round either takes a unit
or ends the wait, and at most ``BORROW_ROUNDS_MAX`` rounds run; units taken
beyond the need stay in the home bucket as its stock. Between a lend and its
deposit the units are in no bucket: a claim of another process that looks
at that instant can be told ``SOLD_OUT`` while they travel, and a process
killed in between loses them until the next rebuild. That is the bound: at
most the units one borrowing round moves, per process, for one round trip.
With one bucket there is nothing to borrow and the answers are exactly the
memory gate's. With several, one request at a time is answered as the memory
gate would, but a batch's buckets are answered side by side: when the last
units go, which requests of one batch get them may differ from input order.

So a campaign-wide limit is never exceeded, but a concurrent claim may
transiently see ``CAMPAIGN_LIMIT`` for a claim of the same person that is
refused and compensated a moment later. A batch in which a (campaign,
person) pair comes twice is cut before the repeat and the pieces run one
after the other, so the second request sees the first one's compensation.

The gate is a cache of the store's truth. If a phase fails half-way (a
dropped connection, or a reply lost after Redis ran the script, which
redis-py's retry may then run again), the counts it took stay taken: the
claim is refused or errors, never oversold. A pending reservation left so
is found by ``stale`` (or ``pending_of``) and settled or released by the
claim service; a campaign count left with nothing behind it is lowered by
``recount`` once its stamp is older than a claim can be between phases.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Self

import redis
from redis.cluster import RedisCluster

from lequan.adapters.memory_gate import checked_reset
from lequan.adapters.redis_draws import RedisDraws
from lequan.adapters.redis_scripts import DELETE_IF_LUA, each_key, run_scripts
from lequan.adapters.redis_scripts import ScriptCall as _Call
from lequan.adapters.redis_scripts import reaching as _reaching
from lequan.ports import (
    DrawEntry,
    DrawnEntry,
    DrawProgress,
    DrawResult,
    EntryOutcome,
    PendingReservation,
    ReserveOutcome,
    ReserveRequest,
    ReserveResult,
)

__all__ = ["RedisGate"]

BATCH_SIZE_MAX_DEFAULT = 10_000
BUCKETS_MAX = 1024
# Each borrowing round takes at least one unit for a dry bucket or proves the
# pool empty; the cap only bounds a pathological race (documented above).
BORROW_ROUNDS_MAX = 8
_SEP = "\x1f"  # between the parts of a pending reservation's field
RESET_CHUNK_SIZE_DEFAULT = 10_000
CONNECTIONS_MAX_DEFAULT = 64
CONNECTION_WAIT_S_DEFAULT = 5.0
SOCKET_TIMEOUT_S_DEFAULT = 5.0
# A reset abandoned half-written (its process died) must not stay in memory
# forever; one hour is far longer than writing any pool takes.
RESET_TEMP_TTL_S = 3600

_OUTCOME_BY_CODE = {
    0: ReserveOutcome.OK,
    1: ReserveOutcome.SOLD_OUT,
    2: ReserveOutcome.ALREADY_CLAIMED,
    3: ReserveOutcome.CAMPAIGN_LIMIT,
    4: ReserveOutcome.UNKNOWN_STOCK,
}

# Phase 1. KEYS[1] the campaign's claimed hash, KEYS[2] its taken hash; ARGV
# (person_id, campaign_limit) per request. Returns 1 (counted) or 0 (refused)
# per request, in order; a count taken is stamped with the server's time (ms).
_CAMPAIGN_TAKE_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #ARGV, 2 do
  local person = ARGV[i]
  local count = tonumber(redis.call('HGET', KEYS[1], person) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], person, count + 1)
    redis.call('HSET', KEYS[2], person, now_ms)
    out[#out + 1] = 1
  end
end
return out
"""

# Recount. KEYS[1] a campaign's claimed hash, KEYS[2] its taken hash; ARGV[1]
# a quiet time in ms, then (person_id, count) pairs. Lowers each person's
# count to that count where it is higher, unless it was taken less than the
# quiet time ago. Returns 1 per person left alone so, else 0, in order.
_CAMPAIGN_RECOUNT_LUA = """
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local person, target = ARGV[i], tonumber(ARGV[i + 1])
  local count = tonumber(redis.call('HGET', KEYS[1], person) or '0')
  local left = 0
  if count > target then
    if tonumber(redis.call('HGET', KEYS[2], person) or '0') > cutoff then
      left = 1
    elseif target > 0 then
      redis.call('HSET', KEYS[1], person, target)
    else
      redis.call('HDEL', KEYS[1], person)
    end
  end
  out[#out + 1] = left
end
return out
"""

# Phase 2. KEYS[1] the bucket's stock hash, KEYS[2] its claimed hash, KEYS[3]
# its pending hash; ARGV[1] the number n of deposits, then n (template_id,
# units) pairs of stock borrowed from other buckets, added first; then
# (template_id, person_id, limit, campaign_ok) per request, campaign_ok '1'
# unless phase 1 refused it. Returns (outcome code, claim_seq, remaining) per
# request, in order; code 1 means this bucket has none of the template left.
# A reservation is journalled in the pending hash, field
# template<US>person<US>seq, value the server's time in ms; its seq is the
# person's count + 1, or when that one is still pending (an earlier one was
# released meanwhile) the lowest seq not pending. Stock is read and
# checked for every template before anything is written, so an impossible
# state fails the call without a half-applied batch.
_POOL_RESERVE_LUA = """
local deposits = tonumber(ARGV[1])
for i = 2, 2 * deposits, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1]))
  end
end
local first = 2 + 2 * deposits
local stock = {}
for i = first, #ARGV, 4 do
  local template = ARGV[i]
  if stock[template] == nil then
    local left = redis.call('HGET', KEYS[1], template)
    if left then
      left = tonumber(left)
      if left == nil or left < 0 then
        return redis.error_reply('lequan: bad stock for ' .. template .. ' in ' .. KEYS[1])
      end
      stock[template] = left
    else
      stock[template] = false
    end
  end
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = first, #ARGV, 4 do
  local template, person = ARGV[i], ARGV[i + 1]
  local left = stock[template]
  local code, seq, remaining = 0, 0, 0
  if left == false then
    code = 4
  elseif ARGV[i + 3] ~= '1' then
    code, remaining = 3, left
  else
    local count = tonumber(redis.call('HGET', KEYS[2], person) or '0')
    if count >= tonumber(ARGV[i + 2]) then
      code, remaining = 2, left
    elseif left == 0 then
      code = 1
    else
      left = left - 1
      stock[template] = left
      seq = count + 1
      if redis.call('HEXISTS', KEYS[3], template .. '\\31' .. person .. '\\31' .. seq) == 1 then
        for n = 1, tonumber(ARGV[i + 2]) do
          if redis.call('HEXISTS', KEYS[3], template .. '\\31' .. person .. '\\31' .. n) == 0 then
            seq = n
            break
          end
        end
      end
      redis.call('HSET', KEYS[1], template, left)
      redis.call('HSET', KEYS[2], person, count + 1)
      redis.call('HSET', KEYS[3], template .. '\\31' .. person .. '\\31' .. seq, now_ms)
      remaining = left
    end
  end
  out[#out + 1] = code
  out[#out + 1] = seq
  out[#out + 1] = remaining
end
return out
"""

# Borrowing. KEYS[1] a bucket's stock hash; ARGV (template_id, wanted) pairs.
# Takes up to ``wanted`` of each template for another bucket; returns the
# units taken per pair, in order.
_POOL_LEND_LUA = """
local out = {}
for i = 1, #ARGV, 2 do
  local left = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local taken = math.min(left, tonumber(ARGV[i + 1]))
  if taken > 0 then
    redis.call('HSET', KEYS[1], ARGV[i], left - taken)
  end
  out[#out + 1] = taken
end
return out
"""

# Phase 3. KEYS[1] a campaign's claimed hash; ARGV person ids. A count never
# goes below zero.
_COUNT_GIVE_BACK_LUA = """
for i = 1, #ARGV do
  local count = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if count > 1 then
    redis.call('HSET', KEYS[1], ARGV[i], count - 1)
  elseif count == 1 then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return #ARGV
"""

# Release. KEYS[1..3] the bucket's stock, claimed and pending hashes; ARGV
# (template_id, person_id, claim_seq) per reservation. Only a pending
# reservation comes back, once: its journal entry is removed, the person's
# count goes down and the stock up. Returns 1 per reservation given back,
# else 0, in order.
_POOL_RELEASE_LUA = """
local out = {}
for i = 1, #ARGV, 3 do
  local template, person = ARGV[i], ARGV[i + 1]
  local given = 0
  if redis.call('HDEL', KEYS[3], template .. '\\31' .. person .. '\\31' .. ARGV[i + 2]) == 1 then
    given = 1
    local count = tonumber(redis.call('HGET', KEYS[2], person) or '0')
    if count > 1 then
      redis.call('HSET', KEYS[2], person, count - 1)
    elseif count == 1 then
      redis.call('HDEL', KEYS[2], person)
    end
    if redis.call('HEXISTS', KEYS[1], template) == 1 then
      redis.call('HINCRBY', KEYS[1], template, 1)
    end
  end
  out[#out + 1] = given
end
return out
"""

# Stale. KEYS[1] a pending hash; ARGV[1] an age in ms, ARGV[2] at most how
# many. Returns the fields of reservations pending at least that long.
_POOL_STALE_LUA = """
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local out = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  if #out >= limit then break end
  if tonumber(entries[i + 1]) <= cutoff then
    out[#out + 1] = entries[i]
  end
end
return out
"""

# Pending of. KEYS[1] a pending hash; ARGV person ids. Returns (field, age in
# ms) pairs of their reservations pending there.
_POOL_PENDING_OF_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wanted = {}
for i = 1, #ARGV do
  wanted[ARGV[i]] = true
end
local out = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local person = string.match(entries[i], '^[^\\31]*\\31([^\\31]*)\\31')
  if wanted[person] then
    out[#out + 1] = entries[i]
    out[#out + 1] = now_ms - tonumber(entries[i + 1])
  end
end
return out
"""


# Reset. KEYS (live, staged) pairs of one slot; ARGV[n] '1' when the n-th
# staged key must exist. Renames every staged key over its live one at once,
# so a reader sees the old state or the new one, never a mix; an empty new
# state deletes the live key. RENAME keeps the staged key's expiry, hence
# PERSIST.
_SWAP_IN_LUA = """
for n = 1, #ARGV do
  local live, staged = KEYS[2 * n - 1], KEYS[2 * n]
  if redis.call('EXISTS', staged) == 1 then
    redis.call('RENAME', staged, live)
    redis.call('PERSIST', live)
  elseif ARGV[n] == '1' then
    return redis.error_reply('lequan: staged reset ' .. staged .. ' expired before swap')
  else
    redis.call('DEL', live)
  end
end
return #ARGV
"""


class RedisGate:
    """A ClaimGate on Redis: Lua scripts of one hash slot each, batched per phase."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        key_prefix: str = "lq:",
        buckets: int = 1,
        reset_chunk_size: int = RESET_CHUNK_SIZE_DEFAULT,
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            # A brace in the prefix would become the hash tag and put every
            # key in one slot, or split a pool's keys across slots.
            raise ValueError(f"key_prefix must not contain braces, got {key_prefix!r}")
        if not 1 <= buckets <= BUCKETS_MAX:
            raise ValueError(f"buckets must be between 1 and {BUCKETS_MAX}, got {buckets}")
        if reset_chunk_size < 1:
            raise ValueError(f"reset_chunk_size must be at least 1, got {reset_chunk_size}")
        if batch_size_max < 1:
            raise ValueError(f"batch_size_max must be at least 1, got {batch_size_max}")
        self._client = client
        self._prefix = key_prefix
        self._buckets = buckets
        self._reset_chunk_size = reset_chunk_size
        self._batch_size_max = batch_size_max
        self._owns_client = False
        self._campaign_take = client.register_script(_CAMPAIGN_TAKE_LUA)
        self._campaign_recount = client.register_script(_CAMPAIGN_RECOUNT_LUA)
        self._pool_pending_of = client.register_script(_POOL_PENDING_OF_LUA)
        self._pool_reserve = client.register_script(_POOL_RESERVE_LUA)
        self._pool_lend = client.register_script(_POOL_LEND_LUA)
        self._count_give_back = client.register_script(_COUNT_GIVE_BACK_LUA)
        self._pool_release = client.register_script(_POOL_RELEASE_LUA)
        self._pool_stale = client.register_script(_POOL_STALE_LUA)
        self._swap_in = client.register_script(_SWAP_IN_LUA)
        self._delete_if = client.register_script(DELETE_IF_LUA)
        self._draws = RedisDraws(
            client,
            key_prefix=key_prefix,
            reserve=self.reserve,
            pending_keys=lambda pool: [self._bucket_keys(pool, b)[2] for b in range(buckets)],
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "lq:",
        buckets: int = 1,
        cluster: bool = False,
        reset_chunk_size: int = RESET_CHUNK_SIZE_DEFAULT,
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        connection_wait_s: float = CONNECTION_WAIT_S_DEFAULT,
        socket_timeout_s: float = SOCKET_TIMEOUT_S_DEFAULT,
    ) -> Self:
        """A gate with a client of its own, which ``close`` closes.

        Its pool (one per node on a cluster) blocks for up to
        ``connection_wait_s`` when all ``connections_max`` connections are
        busy: a burst of claims queues for a connection instead of failing
        with "Too many connections", as redis-py's default pool does beyond
        its size. With ``cluster`` the URL names any node of a Redis
        Cluster; the client discovers the rest.
        """
        client: redis.Redis | RedisCluster
        if cluster:
            # The same blocking pool, one per node.
            client = RedisCluster.from_url(
                url,
                connection_pool_class=redis.BlockingConnectionPool,
                max_connections=connections_max,
                timeout=connection_wait_s,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
            )
        else:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=connections_max,
                timeout=connection_wait_s,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
            )
            client = redis.Redis.from_pool(pool)
        gate = cls(
            client,
            key_prefix=key_prefix,
            buckets=buckets,
            reset_chunk_size=reset_chunk_size,
            batch_size_max=batch_size_max,
        )
        gate._owns_client = True
        return gate

    @property
    def shared(self) -> bool:
        return True

    @property
    def buckets(self) -> int:
        return self._buckets

    def bucket_of(self, person_id: str) -> int:
        """The person's home bucket: where their counts and reservations live."""
        if self._buckets == 1:
            return 0
        return zlib.crc32(person_id.encode()) % self._buckets

    @_reaching
    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        """Answer each request in order, in a few round trips (see the module's notes)."""
        self._check_batch_size(len(requests))
        results: list[ReserveResult] = []
        for piece in _pieces_without_repeats(requests):
            results.extend(self._reserve_piece(piece))
        return results

    def _reserve_piece(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        # Phase 1: take a campaign count for every request that carries a limit.
        by_campaign = _group(
            (i, request.campaign_id)
            for i, request in enumerate(requests)
            if request.campaign_limit > 0
        )
        counted = [False] * len(requests)
        campaign_ok = [True] * len(requests)
        calls = [
            _Call(
                self._campaign_take,
                (self._campaign_claimed_key(campaign_id), self._campaign_taken_key(campaign_id)),
                tuple(_flat((requests[i].person_id, requests[i].campaign_limit) for i in members)),
            )
            for campaign_id, members in by_campaign.items()
        ]
        for members, reply in zip(by_campaign.values(), self._run(calls), strict=True):
            for i, flag in zip(members, reply, strict=True):
                counted[i] = campaign_ok[i] = flag == 1

        # Phase 2: the pool's own checks and the decrement, in input order per bucket.
        homes = [(request.pool, self.bucket_of(request.person_id)) for request in requests]
        answers: list[ReserveResult | None] = [None] * len(requests)
        waiting = self._reserve_in_homes(
            requests, homes, campaign_ok, answers, _group_pairs(enumerate(homes)), deposits={}
        )
        # Buckets that ran dry borrow from the others before anyone hears "sold out".
        rounds = 0
        while waiting:
            rounds += 1
            deposits, dry = self._borrow(requests, homes, waiting, first=rounds == 1)
            for i in dry:
                answers[i] = ReserveResult(ReserveOutcome.SOLD_OUT, claim_seq=0, remaining=0)
            retry = [i for i in waiting if i not in dry]
            if rounds >= BORROW_ROUNDS_MAX:
                for i in retry:
                    answers[i] = ReserveResult(ReserveOutcome.SOLD_OUT, claim_seq=0, remaining=0)
                break
            waiting = self._reserve_in_homes(
                requests,
                homes,
                campaign_ok,
                answers,
                _group_pairs((i, homes[i]) for i in retry),
                deposits=deposits,
            )

        results = [answer for answer in answers if answer is not None]
        assert len(results) == len(requests), "a request got no answer"

        # Phase 3: give back the campaign counts of requests the pool refused.
        to_give_back = _group(
            (i, requests[i].campaign_id)
            for i, result in enumerate(results)
            if counted[i] and result.outcome is not ReserveOutcome.OK
        )
        self._run(
            [
                _Call(
                    self._count_give_back,
                    (self._campaign_claimed_key(campaign_id),),
                    tuple(requests[i].person_id for i in members),
                )
                for campaign_id, members in to_give_back.items()
            ]
        )
        return results

    def _reserve_in_homes(
        self,
        requests: Sequence[ReserveRequest],
        homes: Sequence[tuple[str, int]],
        campaign_ok: Sequence[bool],
        answers: list[ReserveResult | None],
        by_home: dict[tuple[str, int], list[int]],
        *,
        deposits: Mapping[tuple[str, int], Mapping[str, int]],
    ) -> list[int]:
        """One script call per home bucket; the indexes its bucket had none for."""
        homes_called = list(by_home) + [home for home in deposits if home not in by_home]
        calls = []
        for home in homes_called:
            members = by_home.get(home, [])
            given = deposits.get(home, {})
            calls.append(
                _Call(
                    self._pool_reserve,
                    self._bucket_keys(*home),
                    (
                        len(given),
                        *_flat(iter(given.items())),
                        *_flat(
                            (
                                requests[i].template_id,
                                requests[i].person_id,
                                requests[i].limit,
                                1 if campaign_ok[i] else 0,
                            )
                            for i in members
                        ),
                    ),
                )
            )
        waiting: list[int] = []
        for home, reply in zip(homes_called, self._run(calls), strict=True):
            members = by_home.get(home, [])
            assert len(reply) == 3 * len(members), f"pool script answered {len(reply)} values"
            for n, i in enumerate(members):
                code, seq, left = reply[3 * n : 3 * n + 3]
                if code == 1 and self._buckets > 1:
                    waiting.append(i)
                else:
                    answers[i] = ReserveResult(_OUTCOME_BY_CODE[code], seq, left)
        waiting.sort()
        return waiting

    def _borrow(
        self,
        requests: Sequence[ReserveRequest],
        homes: Sequence[tuple[str, int]],
        waiting: Sequence[int],
        *,
        first: bool,
    ) -> tuple[dict[tuple[str, int], dict[str, int]], set[int]]:
        """Take stock from the other buckets for the requests whose home ran dry.

        Returns the units to deposit per home bucket and template, and the
        requests for which every other bucket was empty too: those are sold
        out. The first round asks each bucket for a share, later ones for
        the whole need; what is taken beyond the need stays in the home
        bucket as its stock.
        """
        need: dict[tuple[str, int, str], list[int]] = {}
        for i in waiting:
            pool, home = homes[i]
            need.setdefault((pool, home, requests[i].template_id), []).append(i)
        asks: dict[tuple[str, int], list[tuple[tuple[str, int, str], int]]] = {}
        for (pool, home, template), members in need.items():
            wanted = len(members)
            if first:
                wanted = -(-wanted // (self._buckets - 1))
            for donor in range(self._buckets):
                if donor != home:
                    asks.setdefault((pool, donor), []).append(((pool, home, template), wanted))
        calls = [
            _Call(
                self._pool_lend,
                (self._bucket_keys(pool, donor)[0],),
                tuple(_flat((what[2], wanted) for what, wanted in entries)),
            )
            for (pool, donor), entries in asks.items()
        ]
        taken: dict[tuple[str, int, str], int] = dict.fromkeys(need, 0)
        for entries, reply in zip(asks.values(), self._run(calls), strict=True):
            for (what, _wanted), units in zip(entries, reply, strict=True):
                taken[what] += int(units)
        deposits: dict[tuple[str, int], dict[str, int]] = {}
        dry: set[int] = set()
        for (pool, home, template), units in taken.items():
            if units:
                deposits.setdefault((pool, home), {})[template] = units
            else:
                dry.update(need[(pool, home, template)])
        return deposits, dry

    @_reaching
    def settle(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Drop the journal entries of committed reservations, one HDEL per bucket."""
        self._check_batch_size(len(reservations))
        fields: dict[str, list[str]] = {}
        for request, seq in reservations:
            pending = self._bucket_keys(request.pool, self.bucket_of(request.person_id))[2]
            fields.setdefault(pending, []).append(
                _pending_field(request.template_id, request.person_id, seq)
            )
        self._each_key(list(fields), lambda pipe, key: pipe.hdel(key, *fields[key]))

    @_reaching
    def release(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Hand back pending reservations whose commit failed.

        Only a reservation still pending comes back, once (see
        ``_POOL_RELEASE_LUA``); the campaign counts of exactly those are
        given back after, so a repeated or stray release changes nothing.
        """
        self._check_batch_size(len(reservations))
        by_home = _group_pairs(
            (i, (request.pool, self.bucket_of(request.person_id)))
            for i, (request, _seq) in enumerate(reservations)
        )
        calls = [
            _Call(
                self._pool_release,
                self._bucket_keys(pool, bucket),
                tuple(
                    _flat(
                        (
                            reservations[i][0].template_id,
                            reservations[i][0].person_id,
                            reservations[i][1],
                        )
                        for i in members
                    )
                ),
            )
            for (pool, bucket), members in by_home.items()
        ]
        given: list[int] = []
        for members, reply in zip(by_home.values(), self._run(calls), strict=True):
            given.extend(i for i, flag in zip(members, reply, strict=True) if flag == 1)
        by_campaign = _group(
            (i, reservations[i][0].campaign_id)
            for i in sorted(given)
            if reservations[i][0].campaign_limit > 0
        )
        self._run(
            [
                _Call(
                    self._count_give_back,
                    (self._campaign_claimed_key(campaign_id),),
                    tuple(reservations[i][0].person_id for i in members),
                )
                for campaign_id, members in by_campaign.items()
            ]
        )

    @_reaching
    def stale(self, pool: str, *, older_than_s: float, limit: int) -> list[tuple[str, str, int]]:
        calls = [
            _Call(
                self._pool_stale,
                (self._bucket_keys(pool, bucket)[2],),
                (int(older_than_s * 1000), limit),
            )
            for bucket in range(self._buckets)
        ]
        found: list[tuple[str, str, int]] = []
        for reply in self._run(calls):
            for raw in reply:
                template_id, person_id, seq = _text(raw).split(_SEP)
                found.append((template_id, person_id, int(seq)))
        return found[:limit]

    @_reaching
    def pending_of(
        self, pools: Sequence[str], person_ids: Sequence[str]
    ) -> list[PendingReservation]:
        """One script per home bucket of these people in each pool, pipelined."""
        homes: dict[int, list[str]] = {}
        for person_id in dict.fromkeys(person_ids):
            homes.setdefault(self.bucket_of(person_id), []).append(person_id)
        where = [(pool, bucket) for pool in pools for bucket in homes]
        calls = [
            _Call(
                self._pool_pending_of, (self._bucket_keys(pool, bucket)[2],), tuple(homes[bucket])
            )
            for pool, bucket in where
        ]
        found: list[PendingReservation] = []
        for (pool, _bucket), reply in zip(where, self._run(calls), strict=True):
            for n in range(0, len(reply), 2):
                template_id, person_id, seq = _text(reply[n]).split(_SEP)
                found.append(
                    PendingReservation(pool, template_id, person_id, int(seq), reply[n + 1] / 1000)
                )
        return found

    @_reaching
    def recount(self, campaign_id: str, counts: Mapping[str, int], *, quiet_s: float) -> set[str]:
        people = list(counts)
        assert all(counts[p] >= 0 for p in people)
        [reply] = self._run(
            [
                _Call(
                    self._campaign_recount,
                    (
                        self._campaign_claimed_key(campaign_id),
                        self._campaign_taken_key(campaign_id),
                    ),
                    (int(quiet_s * 1000), *_flat((p, counts[p]) for p in people)),
                )
            ]
        )
        return {person for person, left in zip(people, reply, strict=True) if left == 1}

    @_reaching
    def remaining(self, pool: str, template_id: str) -> int | None:
        values = self._each_key(
            [self._bucket_keys(pool, b)[0] for b in range(self._buckets)],
            lambda node, key: node.hget(key, template_id),
        )
        present = [int(value) for value in values if value is not None]
        return sum(present) if present else None

    @_reaching
    def loaded(self, campaign_id: str, pools: Sequence[str]) -> bool:
        keys = [self._campaign_loaded_key(campaign_id)] + [
            self._bucket_keys(pool, b)[0] for pool in pools for b in range(self._buckets)
        ]
        return all(self._each_key(keys, lambda node, key: node.exists(key)))

    @_reaching
    def begin_rebuild(self, campaign_id: str, *, ttl_s: float) -> str | None:
        token = uuid.uuid4().hex
        taken = self._client.set(
            self._campaign_rebuild_key(campaign_id), token, nx=True, px=int(ttl_s * 1000)
        )
        return token if taken else None

    @_reaching
    def end_rebuild(self, campaign_id: str, token: str) -> None:
        """Let go of the rebuild right, only if this token still holds it."""
        self._run([_Call(self._delete_if, (self._campaign_rebuild_key(campaign_id),), (token,))])

    @_reaching
    def forget(self, campaign_id: str, pools: Sequence[str]) -> None:
        """Drop the campaign's marker first, then its counts and every bucket of its pools."""
        self._client.delete(self._campaign_loaded_key(campaign_id))
        keys = [
            self._campaign_claimed_key(campaign_id),
            self._campaign_taken_key(campaign_id),
            *(
                key
                for pool in pools
                for b in range(self._buckets)
                for key in self._bucket_keys(pool, b)
            ),
        ]
        self._each_key(keys, lambda pipe, key: pipe.delete(key))

    @_reaching
    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        """Replace the pool with the store's truth; empty ``stock`` forgets the pool.

        The stock is split evenly over the buckets, each person's count goes
        to their home bucket, and the journal is emptied. Each bucket's new
        state is written aside in chunks, so no single command blocks Redis
        for long, then swapped in by one script, so no claim ever sees half
        of a bucket.
        """
        new_stock = checked_reset(stock, what="stock", keep_zero=True)
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        shares: list[dict[str, int]] = [{} for _ in range(self._buckets)]
        for template_id, left in new_stock.items():
            each, extra = divmod(left, self._buckets)
            for bucket in range(self._buckets):
                shares[bucket][template_id] = each + (1 if bucket < extra else 0)
        counts: list[dict[str, int]] = [{} for _ in range(self._buckets)]
        for person_id, count in new_claimed.items():
            counts[self.bucket_of(person_id)][person_id] = count
        swaps: list[list[tuple[str, str, dict[str, int]]]] = []
        for bucket in range(self._buckets):
            stock_key, claimed_key, pending_key = self._bucket_keys(pool, bucket)
            staged = f"{self._prefix}{{{self._bucket_tag(pool, bucket)}}}:reset:{uuid.uuid4().hex}"
            swaps.append(
                [
                    (stock_key, f"{staged}:stock", shares[bucket]),
                    (claimed_key, f"{staged}:claimed", counts[bucket]),
                    (pending_key, f"{staged}:pending", {}),
                ]
            )
        self._swap(swaps)

    @_reaching
    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        """Replace a campaign's per-person counts with the store's, then mark it loaded."""
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        live = self._campaign_claimed_key(campaign_id)
        staged = f"{self._prefix}{{c:{campaign_id}}}:reset:{uuid.uuid4().hex}:claimed"
        self._swap([[(live, staged, new_claimed)]])
        self._client.set(self._campaign_loaded_key(campaign_id), 1)

    @_reaching
    def enter(
        self, draw: str, entries: Sequence[DrawEntry], *, entries_max: int
    ) -> list[EntryOutcome]:
        """One script on the draw's slot (``adapters/redis_draws.py``)."""
        self._check_batch_size(len(entries))
        return self._draws.enter(draw, entries, entries_max=entries_max)

    @_reaching
    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        self._check_batch_size(chunk_size)
        return self._draws.draw(
            draw, chunk_size=chunk_size, pending_max=pending_max, lock_ttl_s=lock_ttl_s
        )

    @_reaching
    def draw_results(self, draw: str, tickets: Sequence[str]) -> list[DrawResult | None]:
        self._check_batch_size(len(tickets))
        return self._draws.draw_results(draw, tickets)

    @_reaching
    def drawn(self, draw: str, *, start: int, limit: int) -> list[DrawnEntry]:
        self._check_batch_size(limit)
        return self._draws.drawn(draw, start=start, limit=limit)

    @_reaching
    def forget_draw(self, draw: str) -> None:
        self._draws.forget_draw(draw)

    def close(self) -> None:
        """Close the connections if this gate opened them (``from_url``)."""
        if self._owns_client:
            self._client.close()

    def _swap(self, groups: Sequence[Sequence[tuple[str, str, dict[str, int]]]]) -> None:
        """Write each group's staged hashes, then swap every group in, one script per slot."""
        for pairs in groups:
            for _live, staged, values in pairs:
                for chunk in _chunks(values, self._reset_chunk_size):
                    pipe = self._client.pipeline(transaction=False)
                    pipe.hset(staged, items=chunk)
                    pipe.expire(staged, RESET_TEMP_TTL_S)
                    pipe.execute()
        calls = [
            _Call(
                self._swap_in,
                tuple(key for live, staged, _values in pairs for key in (live, staged)),
                tuple("1" if values else "0" for _live, _staged, values in pairs),
            )
            for pairs in groups
        ]
        self._run(calls)

    def _each_key(self, keys: Sequence[str], command: Any) -> list[Any]:
        return each_key(self._client, keys, command)

    def _run(self, calls: Sequence[_Call]) -> list[Any]:
        return run_scripts(self._client, calls)

    def _check_batch_size(self, size: int) -> None:
        if size > self._batch_size_max:
            raise ValueError(f"batch of {size} exceeds batch_size_max {self._batch_size_max}")

    def _bucket_tag(self, pool: str, bucket: int) -> str:
        return f"p:{pool}" if self._buckets == 1 else f"p:{pool}#{bucket}"

    def _bucket_keys(self, pool: str, bucket: int) -> tuple[str, str, str]:
        """The stock, claimed and pending hashes of one bucket: one hash slot."""
        base = f"{self._prefix}{{{self._bucket_tag(pool, bucket)}}}"
        return (f"{base}:stock", f"{base}:claimed", f"{base}:pending")

    def _campaign_claimed_key(self, campaign_id: str) -> str:
        return f"{self._prefix}{{c:{campaign_id}}}:claimed"

    def _campaign_taken_key(self, campaign_id: str) -> str:
        return f"{self._prefix}{{c:{campaign_id}}}:taken"

    def _campaign_loaded_key(self, campaign_id: str) -> str:
        return f"{self._prefix}{{c:{campaign_id}}}:loaded"

    def _campaign_rebuild_key(self, campaign_id: str) -> str:
        return f"{self._prefix}{{c:{campaign_id}}}:rebuilding"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _pending_field(template_id: str, person_id: str, claim_seq: int) -> str:
    return f"{template_id}{_SEP}{person_id}{_SEP}{claim_seq}"


def _group_pairs(
    indexed: Iterable[tuple[int, tuple[str, int]]],
) -> dict[tuple[str, int], list[int]]:
    """Indexes by (pool, bucket), each list in input order."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, key in indexed:
        groups.setdefault(key, []).append(i)
    return groups


def _pieces_without_repeats(
    requests: Sequence[ReserveRequest],
) -> Iterator[Sequence[ReserveRequest]]:
    """Cut the batch before each repeat of a (campaign, person) pair under a campaign limit.

    Phase 1 of a piece counts a request before phase 3 may give the count
    back; a later request of the same pair in the same piece would see a
    count that is about to vanish and be refused where the memory gate
    accepts it.
    """
    start = 0
    seen: set[tuple[str, str]] = set()
    for i, request in enumerate(requests):
        if request.campaign_limit <= 0:
            continue
        pair = (request.campaign_id, request.person_id)
        if pair in seen:
            yield requests[start:i]
            start = i
            seen.clear()
        seen.add(pair)
    if start < len(requests):
        yield requests[start:]


def _group(indexed: Iterator[tuple[int, str]]) -> dict[str, list[int]]:
    """Indexes by key, each list in input order (dicts keep first-seen key order)."""
    groups: dict[str, list[int]] = {}
    for i, key in indexed:
        groups.setdefault(key, []).append(i)
    return groups


def _flat(rows: Iterator[tuple[str | int, ...]]) -> Iterator[str | int]:
    for row in rows:
        yield from row


def _chunks(values: dict[str, int], size: int) -> Iterator[list[str | int]]:
    """Up to ``size`` fields at a time, flattened (field, value, ...) as HSET takes them."""
    pairs = iter(values.items())
    while chunk := list(_flat(islice(pairs, size))):
        yield chunk
