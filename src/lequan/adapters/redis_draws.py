"""A round's fair start on Redis: the entries of every API process in one sorted set,
served in one global order by whichever process holds the draw's lock.

Every key of a draw shares one hash tag, ``{d:<draw>}``, so its scripts run on
one slot of a Redis Cluster::

    <prefix>{d:<draw>}:entries   ZSET ticket, scored by its 52-bit score: the order
    <prefix>{d:<draw>}:entry     HASH ticket -> owner<US>pool<US>template<US>person
                                 <US>limit<US>campaign<US>campaign_limit
    <prefix>{d:<draw>}:people    HASH pool<US>person -> entries (at most the pool's limit)
    <prefix>{d:<draw>}:pools     SET the pools the entries reserve from
    <prefix>{d:<draw>}:state     HASH closed, entries, served, marked, last_score,
                                 last_ticket, stamp_ms
    <prefix>{d:<draw>}:results   HASH ticket -> code<US>claim_seq<US>stamp_ms
    <prefix>{d:<draw>}:lock      the drawer's token (expires)

Entries are taken by one script (``_ENTER_LUA``), which refuses them once the
draw is closed. A drawer (``draw``) takes the lock, closes the draw (the entry
count is final from then on), marks the next chunk as being served and stamps
it with the server's time, reserves its entries through the gate's own
``reserve`` in rank order, records what each got and moves ``served`` on —
each step checking that it still holds the lock. The reservations happen in
the pools' slots, the record in the draw's: a drawer that dies in between
leaves the chunk marked and not served. The next drawer answers that chunk's
entries ``interrupted`` (code 9) and goes on; a reservation the dead drawer
made is pending with no owner, and the gatekeeper reaps it after the fence,
as it reaps any claim of a process that died.

The order is one per draw whatever the number of processes; reserving in it
is exact only when each pool's stock is in one bucket: with several, a
batch's buckets are answered side by side and borrow from each other
(``redis_gate``), so the last units could go out of order. A campaign with a
start window is refused on a bucketed gate (``fair_start_unavailable``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster

from lequan.adapters.redis_scripts import DELETE_IF_LUA, ScriptCall, each_key, run_scripts
from lequan.ports import (
    DrawEntry,
    DrawnEntry,
    DrawProgress,
    DrawResult,
    EntryOutcome,
    ReserveOutcome,
    ReserveRequest,
    ReserveResult,
)

__all__ = ["RedisDraws"]

_US = "\x1f"
_ENTRY_CODES = {
    0: EntryOutcome.ENTERED,
    1: EntryOutcome.REJOINED,
    2: EntryOutcome.HELD_ELSEWHERE,
    3: EntryOutcome.FULL,
    4: EntryOutcome.CLOSED,
    5: EntryOutcome.OVER,
}
_RESERVE_CODES = {
    ReserveOutcome.OK: 0,
    ReserveOutcome.SOLD_OUT: 1,
    ReserveOutcome.ALREADY_CLAIMED: 2,
    ReserveOutcome.CAMPAIGN_LIMIT: 3,
    ReserveOutcome.UNKNOWN_STOCK: 4,
}
_OUTCOME_OF_CODE = {code: outcome for outcome, code in _RESERVE_CODES.items()}
_INTERRUPTED = 9

# Enter. KEYS entries, entry, people, state, pools; ARGV[1] entries_max, then
# (ticket, score, pool, person, limit, payload) per entry, the payload starting
# with its owner. Returns one code per entry (_ENTRY_CODES).
_ENTER_LUA = """
local closed = redis.call('HGET', KEYS[4], 'closed')
local entries_max = tonumber(ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
local out = {}
for i = 2, #ARGV, 6 do
  local ticket, payload = ARGV[i], ARGV[i + 5]
  local code
  if closed then
    code = 4
  else
    local before = redis.call('HGET', KEYS[2], ticket)
    if before then
      if string.match(before, '^[^\\31]*') == string.match(payload, '^[^\\31]*') then
        code = 1
      else
        code = 2
      end
    elseif count >= entries_max then
      code = 5
    else
      local who = ARGV[i + 2] .. '\\31' .. ARGV[i + 3]
      local n = tonumber(redis.call('HGET', KEYS[3], who) or '0')
      if n >= tonumber(ARGV[i + 4]) then
        code = 3
      else
        redis.call('ZADD', KEYS[1], ARGV[i + 1], ticket)
        redis.call('HSET', KEYS[2], ticket, payload)
        redis.call('HSET', KEYS[3], who, n + 1)
        redis.call('SADD', KEYS[5], ARGV[i + 2])
        count = count + 1
        code = 0
      end
    end
  end
  out[#out + 1] = code
end
return out
"""

# Open a turn. KEYS state, entries, results, lock; ARGV[1] the drawer's token.
# Closes the draw if it is open; answers the entries of a chunk a dead drawer
# marked and never recorded ``interrupted``. Returns {entries, served, just
# closed and empty (1/0)}, or {-1} when the token does not hold the lock.
_OPEN_TURN_LUA = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return {-1}
end
local empty_now = 0
if not redis.call('HGET', KEYS[1], 'closed') then
  local n = redis.call('ZCARD', KEYS[2])
  redis.call('HSET', KEYS[1], 'closed', 1, 'entries', n, 'served', 0, 'marked', 0)
  if n == 0 then
    empty_now = 1
  end
end
local served = tonumber(redis.call('HGET', KEYS[1], 'served'))
local marked = tonumber(redis.call('HGET', KEYS[1], 'marked'))
if marked > served then
  local stamp = redis.call('HGET', KEYS[1], 'stamp_ms') or '0'
  local lost = redis.call('ZRANGE', KEYS[2], served, marked - 1, 'WITHSCORES')
  for i = 1, #lost, 2 do
    redis.call('HSETNX', KEYS[3], lost[i], '9\\31' .. '0\\31' .. stamp)
  end
  redis.call('HSET', KEYS[1], 'served', marked, 'last_ticket', lost[#lost - 1],
             'last_score', lost[#lost])
  served = marked
end
return {tonumber(redis.call('HGET', KEYS[1], 'entries')), served, empty_now}
"""

# Mark a chunk. KEYS state, entries, entry, lock; ARGV token, chunk size. Returns
# {stamp_ms, ticket, score, payload, ...} of the next chunk, now marked as being
# served, or {-1} without the lock.
_MARK_LUA = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return {-1}
end
local served = tonumber(redis.call('HGET', KEYS[1], 'served'))
local chunk = redis.call('ZRANGE', KEYS[2], served, served + tonumber(ARGV[2]) - 1, 'WITHSCORES')
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now_ms}
for i = 1, #chunk, 2 do
  out[#out + 1] = chunk[i]
  out[#out + 1] = chunk[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[3], chunk[i])
end
redis.call('HSET', KEYS[1], 'marked', served + (#chunk / 2), 'stamp_ms', now_ms)
return out
"""

# Record a chunk. KEYS state, results, lock; ARGV token, stamp_ms, last score,
# last ticket, then (ticket, code, claim_seq) per entry. Returns {served,
# entries, finished now (1/0)}, or {-1} without the lock.
_RECORD_LUA = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return {-1}
end
for i = 5, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. '\\31' .. ARGV[i + 2] .. '\\31' .. ARGV[2])
end
local marked = tonumber(redis.call('HGET', KEYS[1], 'marked'))
redis.call('HSET', KEYS[1], 'served', marked, 'last_score', ARGV[3], 'last_ticket', ARGV[4])
local entries = tonumber(redis.call('HGET', KEYS[1], 'entries'))
local finished = 0
if marked == entries then
  finished = 1
end
return {marked, entries, finished}
"""

# Progress. KEYS state, entries. Returns {closed (1/0), entries, served,
# last_score or false, last_ticket or false}.
_PROGRESS_LUA = """
local s = redis.call('HMGET', KEYS[1], 'closed', 'entries', 'served', 'last_score', 'last_ticket')
local closed, entries = 0, redis.call('ZCARD', KEYS[2])
if s[1] then
  closed, entries = 1, tonumber(s[2])
end
return {closed, entries, tonumber(s[3] or '0'), s[4], s[5]}
"""

# Results. KEYS results; ARGV tickets. Returns {now_ms, value or false, ...}.
_RESULTS_LUA = """
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for i = 1, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return out
"""

# Drawn. KEYS state, entries, entry, results; ARGV start, limit. Returns {now_ms,
# ticket, payload, result, ...} of the served entries from rank start + 1.
_DRAWN_LUA = """
local served = tonumber(redis.call('HGET', KEYS[1], 'served') or '0')
local start = tonumber(ARGV[1])
local stop = math.min(start + tonumber(ARGV[2]), served) - 1
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
if stop < start then
  return out
end
local tickets = redis.call('ZRANGE', KEYS[2], start, stop)
for i = 1, #tickets do
  out[#out + 1] = tickets[i]
  out[#out + 1] = redis.call('HGET', KEYS[3], tickets[i])
  out[#out + 1] = redis.call('HGET', KEYS[4], tickets[i])
end
return out
"""


class RedisDraws:
    """The fair start's operations of ``RedisGate`` (see the module's notes)."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        key_prefix: str,
        reserve: Callable[[Sequence[ReserveRequest]], list[ReserveResult]],
        pending_keys: Callable[[str], list[str]],
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._reserve = reserve
        self._pending_keys = pending_keys
        self._enter = client.register_script(_ENTER_LUA)
        self._open_turn = client.register_script(_OPEN_TURN_LUA)
        self._mark = client.register_script(_MARK_LUA)
        self._record = client.register_script(_RECORD_LUA)
        self._results = client.register_script(_RESULTS_LUA)
        self._progress_of = client.register_script(_PROGRESS_LUA)
        self._drawn = client.register_script(_DRAWN_LUA)
        self._delete_if = client.register_script(DELETE_IF_LUA)

    def enter(
        self, draw: str, entries: Sequence[DrawEntry], *, entries_max: int
    ) -> list[EntryOutcome]:
        if not entries:
            return []
        k = self._keys(draw)
        args: list[str | int] = [entries_max]
        for e in entries:
            r = e.request
            assert _US not in e.owner
            fields = (r.pool, r.template_id, r.person_id, str(r.limit), r.campaign_id)
            payload = _US.join((e.owner, *fields, str(r.campaign_limit)))
            args += [e.ticket, str(e.score), r.pool, r.person_id, r.limit, payload]
        [reply] = self._run(
            [
                ScriptCall(
                    self._enter,
                    (k["entries"], k["entry"], k["people"], k["state"], k["pools"]),
                    tuple(args),
                )
            ]
        )
        return [_ENTRY_CODES[int(code)] for code in reply]

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        assert chunk_size >= 1
        assert pending_max >= 1
        k = self._keys(draw)
        token = uuid.uuid4().hex
        if not self._client.set(k["lock"], token, nx=True, px=max(1, int(lock_ttl_s * 1000))):
            return self._progress(draw)
        progress = self._turn(draw, k, token, chunk_size=chunk_size, pending_max=pending_max)
        # Let go only after a turn that ended well: a turn that raised leaves the lock
        # to expire, and its chunk (marked, perhaps reserved) to the next drawer.
        self._run([ScriptCall(self._delete_if, (k["lock"],), (token,))])
        return progress

    def _turn(
        self, draw: str, k: dict[str, str], token: str, *, chunk_size: int, pending_max: int
    ) -> DrawProgress:
        [opened] = self._run(
            [
                ScriptCall(
                    self._open_turn,
                    (k["state"], k["entries"], k["results"], k["lock"]),
                    (token,),
                )
            ]
        )
        if int(opened[0]) < 0:
            return self._progress(draw)
        entries, served, empty_now = (int(v) for v in opened)
        if served >= entries:
            return self._progress(draw, finished_now=empty_now == 1)
        if self._pending(draw) >= pending_max:
            return self._progress(draw)
        [marked] = self._run(
            [
                ScriptCall(
                    self._mark,
                    (k["state"], k["entries"], k["entry"], k["lock"]),
                    (token, chunk_size),
                )
            ]
        )
        if int(marked[0]) < 0 or len(marked) == 1:
            return self._progress(draw)
        stamp_ms = int(marked[0])
        chunk = [
            (_text(marked[n]), int(float(marked[n + 1])), _request(_text(marked[n + 2])))
            for n in range(1, len(marked), 3)
        ]
        got = self._reserve([request for _t, _s, request in chunk])
        last_ticket, last_score = chunk[-1][0], chunk[-1][1]
        args: list[str | int] = [token, stamp_ms, last_score, last_ticket]
        for (ticket, _score, _asked), result in zip(chunk, got, strict=True):
            args += [ticket, _RESERVE_CODES[result.outcome], result.claim_seq]
        [recorded] = self._run(
            [ScriptCall(self._record, (k["state"], k["results"], k["lock"]), tuple(args))]
        )
        if int(recorded[0]) < 0:
            # The lock ran out while the gate reserved: the next drawer answers this
            # chunk ``interrupted``; what was reserved is reaped after the fence.
            return self._progress(draw)
        return self._progress(draw, finished_now=int(recorded[2]) == 1)

    def _pending(self, draw: str) -> int:
        pools = sorted(_text(p) for p in self._client.smembers(self._keys(draw)["pools"]))
        keys = [key for pool in pools for key in self._pending_keys(pool)]
        return sum(int(n) for n in each_key(self._client, keys, lambda pipe, key: pipe.hlen(key)))

    def _progress(self, draw: str, *, finished_now: bool = False) -> DrawProgress:
        k = self._keys(draw)
        [reply] = self._run([ScriptCall(self._progress_of, (k["state"], k["entries"]), ())])
        closed, entries, served, last_score, last_ticket = reply
        last = None
        if last_ticket is not None and last_score is not None:
            last = (int(float(_text(last_score))), _text(last_ticket))
        return DrawProgress(
            closed=int(closed) == 1,
            entries=int(entries),
            served=int(served),
            last=last,
            finished_now=finished_now,
        )

    def draw_results(self, draw: str, tickets: Sequence[str]) -> list[DrawResult | None]:
        if not tickets:
            return []
        [reply] = self._run(
            [ScriptCall(self._results, (self._keys(draw)["results"],), tuple(tickets))]
        )
        now_ms = int(reply[0])
        return [_result(raw, now_ms) for raw in reply[1:]]

    def drawn(self, draw: str, *, start: int, limit: int) -> list[DrawnEntry]:
        k = self._keys(draw)
        [reply] = self._run(
            [
                ScriptCall(
                    self._drawn,
                    (k["state"], k["entries"], k["entry"], k["results"]),
                    (start, limit),
                )
            ]
        )
        now_ms = int(reply[0])
        found: list[DrawnEntry] = []
        for n in range(1, len(reply), 3):
            result = _result(reply[n + 2], now_ms)
            assert result is not None, "a served entry has its result"
            found.append(
                DrawnEntry(
                    rank=start + len(found) + 1,
                    ticket=_text(reply[n]),
                    request=_request(_text(reply[n + 1])),
                    result=result,
                )
            )
        return found

    def forget_draw(self, draw: str) -> None:
        self._client.delete(*self._keys(draw).values())

    def _keys(self, draw: str) -> dict[str, str]:
        base = f"{self._prefix}{{d:{draw}}}"
        return {
            name: f"{base}:{name}"
            for name in ("entries", "entry", "people", "pools", "state", "results", "lock")
        }

    def _run(self, calls: Sequence[ScriptCall]) -> list[Any]:
        return run_scripts(self._client, calls)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _request(payload: str) -> ReserveRequest:
    _owner, pool, template_id, person_id, limit, campaign_id, campaign_limit = payload.split(_US)
    return ReserveRequest(
        pool=pool,
        template_id=template_id,
        person_id=person_id,
        limit=int(limit),
        campaign_id=campaign_id,
        campaign_limit=int(campaign_limit),
    )


def _result(raw: bytes | str | None, now_ms: int) -> DrawResult | None:
    if raw is None:
        return None
    code, seq, stamp_ms = (int(part) for part in _text(raw).split(_US))
    return DrawResult(
        None if code == _INTERRUPTED else _OUTCOME_OF_CODE[code],
        claim_seq=seq,
        age_s=max(0.0, (now_ms - stamp_ms) / 1000),
    )
