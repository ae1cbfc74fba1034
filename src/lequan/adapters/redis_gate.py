"""The claim gate on Redis, for many API processes answering one flash sale.

Every script touches the keys of one hash slot only, so the same code runs on
a Redis Cluster. The key layout (``<prefix>`` defaults to ``lq:``)::

    <prefix>{p:<pool>}:stock             HASH template_id → stock left
    <prefix>{p:<pool>}:claimed           HASH person_id → claims in the pool
    <prefix>{c:<campaign_id>}:claimed    HASH person_id → claims in the campaign
    <prefix>{p:<pool>}:reset:<hex>:stock|claimed
    <prefix>{c:<campaign_id>}:reset:<hex>:claimed
                                         a reset being written; renamed over the
                                         live keys when complete, expires if not

The ``p:``/``c:`` tags keep pool and campaign keys apart whatever the ids
are; a person at 0 claims has no field.

A batch is not one round trip per request: its requests are grouped, one
script call per pool and one per campaign, all sent in one pipeline per
phase. A person's campaign count lives in another slot than the pool, so a
reservation takes up to three phases:

1. per campaign, for the requests that carry a campaign limit: check and
   increment the person's campaign count atomically (refusal:
   ``CAMPAIGN_LIMIT``);
2. per pool, in input order: ``UNKNOWN_STOCK`` / ``ALREADY_CLAIMED`` /
   ``SOLD_OUT`` / ``OK``, exactly as :class:`~lequan.adapters.memory_gate.MemoryGate`;
3. per campaign: decrement the count again for the requests that phase 2
   refused.

So a campaign-wide limit is never exceeded, but a concurrent claim may
transiently see ``CAMPAIGN_LIMIT`` for a claim of the same person that is
refused and compensated a moment later. Within one batch the answers are
exactly the memory gate's: a batch in which a (campaign, person) pair comes
twice is cut before the repeat and the pieces run one after the other, so
the second request sees the first one's compensation. A batch without such
repeats (the common case) costs one round trip per phase: two, or three when
some request carrying a campaign limit was refused, or one when none
carries a campaign limit.

The gate is a cache of the store's truth. If a phase fails half-way (a
dropped connection, or a reply lost after Redis ran the script, which
redis-py's retry may then run again), the counts it took stay taken: the
claim is refused or errors, never oversold, and the next ``reset_pool`` /
``reset_campaign`` rebuilds the counts from the store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Self

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from lequan.adapters.memory_gate import checked_reset
from lequan.ports import ReserveOutcome, ReserveRequest, ReserveResult

__all__ = ["RedisGate"]

BATCH_SIZE_MAX_DEFAULT = 10_000
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

# Phase 1. KEYS[1] the campaign's claimed hash; ARGV (person_id, campaign_limit)
# per request. Returns 1 (counted) or 0 (refused) per request, in order.
_CAMPAIGN_TAKE_LUA = """
local out = {}
for i = 1, #ARGV, 2 do
  local person = ARGV[i]
  local count = tonumber(redis.call('HGET', KEYS[1], person) or '0')
  if count >= tonumber(ARGV[i + 1]) then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], person, count + 1)
    out[#out + 1] = 1
  end
end
return out
"""

# Phase 2. KEYS[1] the pool's stock hash, KEYS[2] its claimed hash; ARGV
# (template_id, person_id, limit, campaign_ok) per request, campaign_ok '1'
# unless phase 1 refused it. Returns (outcome code, claim_seq, remaining) per
# request, in order. Stock is read and checked for every template before
# anything is written, so an impossible state fails the call without a
# half-applied batch.
_POOL_RESERVE_LUA = """
local stock = {}
for i = 1, #ARGV, 4 do
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
local out = {}
for i = 1, #ARGV, 4 do
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
      redis.call('HSET', KEYS[1], template, left)
      redis.call('HSET', KEYS[2], person, count + 1)
      seq, remaining = count + 1, left
    end
  end
  out[#out + 1] = code
  out[#out + 1] = seq
  out[#out + 1] = remaining
end
return out
"""

# Phase 3 and release. KEYS[1] a claimed hash; ARGV person ids. A count never
# goes below zero, so compensating or releasing something unknown is harmless.
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

# Release. KEYS[1] the pool's stock hash, KEYS[2] its claimed hash; ARGV
# (template_id, person_id) per reservation. Stock comes back only while the
# person holds a claim in the pool, and only to a template the gate holds: a
# release never reserved, or made before a reset rebuilt the pool, gives
# back nothing.
_POOL_RELEASE_LUA = """
for i = 1, #ARGV, 2 do
  local template, person = ARGV[i], ARGV[i + 1]
  local count = tonumber(redis.call('HGET', KEYS[2], person) or '0')
  if count > 0 then
    if count > 1 then
      redis.call('HSET', KEYS[2], person, count - 1)
    else
      redis.call('HDEL', KEYS[2], person)
    end
    if redis.call('HEXISTS', KEYS[1], template) == 1 then
      redis.call('HINCRBY', KEYS[1], template, 1)
    end
  end
end
return #ARGV / 2
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


@dataclass(frozen=True, slots=True)
class _Call:
    """One script call of a phase's pipeline."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


class RedisGate:
    """A ClaimGate on Redis: Lua scripts of one hash slot each, batched per phase."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        key_prefix: str = "lq:",
        reset_chunk_size: int = RESET_CHUNK_SIZE_DEFAULT,
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            # A brace in the prefix would become the hash tag and put every
            # key in one slot, or split a pool's keys across slots.
            raise ValueError(f"key_prefix must not contain braces, got {key_prefix!r}")
        if reset_chunk_size < 1:
            raise ValueError(f"reset_chunk_size must be at least 1, got {reset_chunk_size}")
        if batch_size_max < 1:
            raise ValueError(f"batch_size_max must be at least 1, got {batch_size_max}")
        self._client = client
        self._prefix = key_prefix
        self._reset_chunk_size = reset_chunk_size
        self._batch_size_max = batch_size_max
        self._owns_client = False
        self._campaign_take = client.register_script(_CAMPAIGN_TAKE_LUA)
        self._pool_reserve = client.register_script(_POOL_RESERVE_LUA)
        self._count_give_back = client.register_script(_COUNT_GIVE_BACK_LUA)
        self._pool_release = client.register_script(_POOL_RELEASE_LUA)
        self._swap_in = client.register_script(_SWAP_IN_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "lq:",
        reset_chunk_size: int = RESET_CHUNK_SIZE_DEFAULT,
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
        connections_max: int = CONNECTIONS_MAX_DEFAULT,
        connection_wait_s: float = CONNECTION_WAIT_S_DEFAULT,
        socket_timeout_s: float = SOCKET_TIMEOUT_S_DEFAULT,
    ) -> Self:
        """A gate with a client of its own, which ``close`` closes.

        Its pool blocks for up to ``connection_wait_s`` when all
        ``connections_max`` connections are busy: a burst of claims queues
        for a connection instead of failing with "Too many connections", as
        redis-py's default pool does beyond its size.
        """
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=connections_max,
            timeout=connection_wait_s,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        gate = cls(
            redis.Redis.from_pool(pool),
            key_prefix=key_prefix,
            reset_chunk_size=reset_chunk_size,
            batch_size_max=batch_size_max,
        )
        gate._owns_client = True
        return gate

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        """Answer each request in order, as the memory gate would, in a few round trips."""
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
                (self._campaign_claimed_key(campaign_id),),
                tuple(_flat((requests[i].person_id, requests[i].campaign_limit) for i in members)),
            )
            for campaign_id, members in by_campaign.items()
        ]
        for members, reply in zip(by_campaign.values(), self._run(calls), strict=True):
            for i, flag in zip(members, reply, strict=True):
                counted[i] = campaign_ok[i] = flag == 1

        # Phase 2: the pool's own checks and the decrement, in input order per pool.
        by_pool = _group((i, request.pool) for i, request in enumerate(requests))
        calls = [
            _Call(
                self._pool_reserve,
                (self._stock_key(pool), self._pool_claimed_key(pool)),
                tuple(
                    _flat(
                        (
                            requests[i].template_id,
                            requests[i].person_id,
                            requests[i].limit,
                            1 if campaign_ok[i] else 0,
                        )
                        for i in members
                    )
                ),
            )
            for pool, members in by_pool.items()
        ]
        answers: list[ReserveResult | None] = [None] * len(requests)
        for members, reply in zip(by_pool.values(), self._run(calls), strict=True):
            assert len(reply) == 3 * len(members), f"pool script answered {len(reply)} values"
            for n, i in enumerate(members):
                code, seq, left = reply[3 * n : 3 * n + 3]
                answers[i] = ReserveResult(_OUTCOME_BY_CODE[code], claim_seq=seq, remaining=left)

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

    def release(self, requests: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Hand back reservations whose commit failed, in one round trip.

        A release the gate cannot match must not corrupt it: stock comes
        back only while the person holds a claim in the pool, and counts
        never go below zero (see ``_POOL_RELEASE_LUA``).
        """
        self._check_batch_size(len(requests))
        reservations = [request for request, _claim_seq in requests]
        by_pool = _group((i, request.pool) for i, request in enumerate(reservations))
        by_campaign = _group(
            (i, request.campaign_id)
            for i, request in enumerate(reservations)
            if request.campaign_limit > 0
        )
        calls = [
            _Call(
                self._pool_release,
                (self._stock_key(pool), self._pool_claimed_key(pool)),
                tuple(
                    _flat((reservations[i].template_id, reservations[i].person_id) for i in members)
                ),
            )
            for pool, members in by_pool.items()
        ]
        calls.extend(
            _Call(
                self._count_give_back,
                (self._campaign_claimed_key(campaign_id),),
                tuple(reservations[i].person_id for i in members),
            )
            for campaign_id, members in by_campaign.items()
        )
        self._run(calls)

    def remaining(self, pool: str, template_id: str) -> int | None:
        left = self._client.hget(self._stock_key(pool), template_id)
        return None if left is None else int(left)

    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        """Replace the pool with the store's truth; empty ``stock`` forgets the pool.

        The new state is written aside in chunks, so no single command
        blocks Redis for long, then swapped in by one script, so no claim
        ever sees half of it.
        """
        new_stock = checked_reset(stock, what="stock", keep_zero=True)
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        staged = f"{self._prefix}{{p:{pool}}}:reset:{uuid.uuid4().hex}"
        pairs = [
            (self._stock_key(pool), f"{staged}:stock", new_stock),
            (self._pool_claimed_key(pool), f"{staged}:claimed", new_claimed),
        ]
        self._swap(pairs)

    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        """Replace a campaign's per-person counts with the store's, atomically for readers."""
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        live = self._campaign_claimed_key(campaign_id)
        staged = f"{self._prefix}{{c:{campaign_id}}}:reset:{uuid.uuid4().hex}:claimed"
        self._swap([(live, staged, new_claimed)])

    def close(self) -> None:
        """Close the connections if this gate opened them (``from_url``)."""
        if self._owns_client:
            self._client.close()

    def _swap(self, pairs: Sequence[tuple[str, str, dict[str, int]]]) -> None:
        for _live, staged, values in pairs:
            for chunk in _chunks(values, self._reset_chunk_size):
                pipe = self._client.pipeline(transaction=False)
                pipe.hset(staged, items=chunk)
                pipe.expire(staged, RESET_TEMP_TTL_S)
                pipe.execute()
        keys = tuple(key for live, staged, _values in pairs for key in (live, staged))
        expected = tuple("1" if values else "0" for _live, _staged, values in pairs)
        self._run([_Call(self._swap_in, keys, expected)])

    def _run(self, calls: Sequence[_Call]) -> list[Any]:
        """Run script calls in one pipeline; reload scripts the server forgot.

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
            for node, indexes in self._by_node(calls, pending):
                pipe = node.pipeline(transaction=False)
                for i in indexes:
                    call = calls[i]
                    pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
                for i, reply in zip(indexes, pipe.execute(raise_on_error=False), strict=True):
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
                raise errors[0]
            pending = missing
        if pending:
            raise NoScriptError(f"scripts still unknown to the server after loading: {pending}")
        return replies

    def _by_node(
        self, calls: Sequence[_Call], indexes: Sequence[int]
    ) -> list[tuple[Any, list[int]]]:
        """The calls grouped by the server that holds their keys' slot.

        On one Redis that is the one client. On a Redis Cluster each script's
        keys share one hash slot, so each call goes whole to one primary; the
        cluster client's own pipeline refuses EVALSHA, so each primary gets a
        plain pipeline of its own.
        """
        if not isinstance(self._client, RedisCluster):
            return [(self._client, list(indexes))]
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i in indexes:
            node = self._client.get_node_from_key(calls[i].keys[0])  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            entry = groups.get(node.name)
            if entry is None:
                entry = groups[node.name] = (self._client.get_redis_connection(node), [])
            entry[1].append(i)
        return list(groups.values())

    def _check_batch_size(self, size: int) -> None:
        if size > self._batch_size_max:
            raise ValueError(f"batch of {size} exceeds batch_size_max {self._batch_size_max}")

    def _stock_key(self, pool: str) -> str:
        return f"{self._prefix}{{p:{pool}}}:stock"

    def _pool_claimed_key(self, pool: str) -> str:
        return f"{self._prefix}{{p:{pool}}}:claimed"

    def _campaign_claimed_key(self, campaign_id: str) -> str:
        return f"{self._prefix}{{c:{campaign_id}}}:claimed"


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
