"""The risk counters on Redis, shared by every API process.

Names are spread over ``shards`` hash slots (crc32 of the name), so a Redis
Cluster spreads them over its primaries; a batch of claims is one script
call per shard it touches, all sent in one pipeline per server: one round
trip per batch. Each script reads and writes whole hashes with one command
each (``HMGET``, ``HSET``, ``SMISMEMBER``, ``SADD``), never one command per
claim, so Redis does the per-claim work in C. The key layout (``<prefix>``
defaults to ``lq:``)::

    <prefix>{risk:<shard>}:c:<sub-window ms>:<index>   HASH name → events in that
                                                        sub-window (counted tallies)
    <prefix>{risk:<shard>}:d:<window ms>:<index>:n     HASH name → distinct members
    <prefix>{risk:<shard>}:d:<window ms>:<index>:m     SET  name<US>member seen

Every key expires once no figure reads it (a counted sub-window after the
window it closes, a distinct window at its end, plus a minute's slack): the
counters hold the last window's names and no more.

Distinct members are kept in exact sets rather than HyperLogLogs: the limits
that matter are small (two or three identities on one phone), where an
estimate's error would decide a person's claim, and a set of a few members
is smaller than a HyperLogLog's header.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import redis
from redis.cluster import RedisCluster

from lequan.adapters.redis_scripts import UNREACHABLE, ScriptCall, run_scripts
from lequan.ports.risk_counters import SUB_WINDOWS, RiskCountersUnavailable, Tallies

__all__ = ["RedisRiskCounters"]

SHARDS_MAX = 1024
# Keys outlive the last instant a figure reads them by this much (clock skew between
# the processes that stamp ``now_ms``).
SLACK_MS = 60_000
_SEP = "\x1f"

# KEYS[1] the shard's key prefix (``<prefix>{risk:<n>}:``). ARGV[1] the number of
# groups; then per group: kind ('c' counted, 'd' distinct), the current generation's key
# suffix, the suffixes of the SUB_WINDOWS - 1 generations before it ('c'; '' for 'd'), its
# ttl in ms, its names joined by newlines, its members so joined ('' for 'c') and its
# mirror ('' for none): not one argument a tally, which cost the caller ~3 ms a
# 1,000-claim batch to write (redis-py packs each argument in Python). Returns every
# tally's figure, group after group, in order (a mirrored group's mirror figures after
# its names'). A name given twice is counted twice (a member twice, once):
# ``HSET`` takes the last of a name's counts, its final one.
_COUNT_LUA = f"""
local argv, base = ARGV, KEYS[1]
local out, o = {{}}, 0
local p = 2
local function split(text)
  local parts, n = {{}}, 0
  for part in string.gmatch(text, '[^\\n]+') do
    n = n + 1
    parts[n] = part
  end
  return parts, n
end
for _ = 1, tonumber(argv[1]) do
  local kind, key, ttl = argv[p], base .. argv[p + 1], argv[p + {SUB_WINDOWS + 1}]
  local names, n = split(argv[p + {SUB_WINDOWS + 2}])
  local counts, sets, s = {{}}, {{}}, 0
  if kind == 'c' then
    local now = redis.call('HMGET', key, unpack(names))
    local before = {{}}
    for j = 1, n do
      local name = names[j]
      if counts[name] == nil then
        counts[name] = tonumber(now[j]) or 0
        before[name] = 0
      end
    end
    for k = 2, {SUB_WINDOWS} do
      local old = redis.call('HMGET', base .. argv[p + k], unpack(names))
      local added = {{}}
      for j = 1, n do
        if old[j] then
          local name = names[j]
          if not added[name] then
            added[name] = true
            before[name] = before[name] + tonumber(old[j])
          end
        end
      end
    end
    for j = 1, n do
      local name = names[j]
      local count = counts[name] + 1
      counts[name] = count
      sets[s + 1], sets[s + 2], s = name, count, s + 2
      o = o + 1
      out[o] = count + before[name]
    end
    redis.call('HSET', key, unpack(sets))
    redis.call('PEXPIRE', key, ttl)
  else
    -- A pair not seen in this window yet counts once for its name and, with a mirror,
    -- once for the mirror's name of its member: one record of the pairs for both sides.
    local members = split(argv[p + {SUB_WINDOWS + 3}])
    local mirror = argv[p + {SUB_WINDOWS + 4}]
    local mirrored = mirror ~= ''
    local pair_of, fresh, f = {{}}, {{}}, 0
    for j = 1, n do pair_of[j] = names[j] .. '{_SEP}' .. members[j] end
    local seen = redis.call('SMISMEMBER', key .. ':m', unpack(pair_of))
    local now = redis.call('HMGET', key .. ':n', unpack(names))
    local other = {{}}
    for j = 1, n do
      local name = names[j]
      if counts[name] == nil then counts[name] = tonumber(now[j]) or 0 end
    end
    if mirrored then
      for j = 1, n do other[j] = mirror .. members[j] end
      local then_ = redis.call('HMGET', key .. ':n', unpack(other))
      for j = 1, n do
        if counts[other[j]] == nil then counts[other[j]] = tonumber(then_[j]) or 0 end
      end
    end
    local known = {{}}
    for j = 1, n do
      if seen[j] == 1 then known[pair_of[j]] = true end
    end
    local mirror_out = {{}}
    for j = 1, n do
      local name, pair = names[j], pair_of[j]
      if not known[pair] then
        known[pair] = true
        f = f + 1
        fresh[f] = pair
        local count = counts[name] + 1
        counts[name] = count
        sets[s + 1], sets[s + 2], s = name, count, s + 2
        if mirrored then
          local back = counts[other[j]] + 1
          counts[other[j]] = back
          sets[s + 1], sets[s + 2], s = other[j], back, s + 2
        end
      end
      o = o + 1
      out[o] = counts[name]
      if mirrored then mirror_out[j] = counts[other[j]] end
    end
    for j = 1, #mirror_out do
      o = o + 1
      out[o] = mirror_out[j]
    end
    if f > 0 then
      redis.call('SADD', key .. ':m', unpack(fresh))
      redis.call('PEXPIRE', key .. ':m', ttl)
      redis.call('HSET', key .. ':n', unpack(sets))
      redis.call('PEXPIRE', key .. ':n', ttl)
    end
  end
  p = p + {SUB_WINDOWS + 5}
end
return out
"""

# Tallies of a group one script call carries at most: Lua's ``unpack`` takes ~8,000
# values, and a mirrored group's ``HSET`` four a tally (two names, two counts). Names and members
# hold no newline: channels' ids are checked for it (``http/schemas.py``).
_TALLIES_PER_CALL_MAX = 1_000


class RedisRiskCounters:
    """The RiskCounters port on Redis or a Redis Cluster."""

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        key_prefix: str = "lq:",
        shards: int = 1,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix must not contain braces, got {key_prefix!r}")
        if not 1 <= shards <= SHARDS_MAX:
            raise ValueError(f"shards must be 1..{SHARDS_MAX}, got {shards}")
        self._client = client
        self._prefix = key_prefix
        self._shards = shards
        self._script = client.register_script(_COUNT_LUA)

    def count(self, groups: Sequence[Tallies], *, now_ms: int) -> list[list[int | None]]:
        if self._shards > 1 and any(g.mirror is not None for g in groups):
            # A name and its mirror live in different slots: count the sides apart.
            return _rejoined(groups, self._count([s for g in groups for s in _sides(g)], now_ms))
        return self._count(groups, now_ms)

    def _count(self, groups: Sequence[Tallies], now_ms: int) -> list[list[int | None]]:
        # Each group cut by shard (and to the size of a call): (group, its positions) per cut.
        cuts: list[list[tuple[int, Tallies, list[int] | None]]] = [[] for _ in range(self._shards)]
        for g, group in enumerate(groups):
            for shard, positions in self._sharded(group):
                cuts[shard].append((g, group, positions))
        calls: list[ScriptCall] = []
        plans: list[list[tuple[int, list[int] | None, int]]] = []
        for shard, pieces in enumerate(cuts):
            key = f"{self._prefix}{{risk:{shard}}}:"
            args: list[str | int] = []
            plan: list[tuple[int, list[int] | None, int]] = []
            tallies = 0
            for g, group, positions in pieces:
                names, members = _pick(group, positions)
                if plan and tallies + len(names) > _TALLIES_PER_CALL_MAX:
                    calls.append(ScriptCall(self._script, (key,), (len(plan), *args)))
                    plans.append(plan)
                    args, plan, tallies = [], [], 0
                args.extend(_header(group, now_ms))
                args.append("\n".join(names))
                args.append("" if members is None else "\n".join(members))
                args.append(group.mirror or "")
                plan.append((g, positions, len(names)))
                tallies += len(names)
            if plan:
                calls.append(ScriptCall(self._script, (key,), (len(plan), *args)))
                plans.append(plan)
        try:
            replies = run_scripts(self._client, calls)
        except UNREACHABLE as error:
            raise RiskCountersUnavailable(type(error).__name__) from error
        figures: list[list[int | None]] = [
            [None] * (len(group.names) * (1 if group.mirror is None else 2)) for group in groups
        ]
        for plan, reply in zip(plans, replies, strict=True):
            at = 0
            for g, positions, n in plan:
                sides = 1 if groups[g].mirror is None else 2
                got = [int(figure) for figure in reply[at : at + sides * n]]
                at += sides * n
                size = len(groups[g].names)
                for side in range(sides):
                    part = got[side * n : (side + 1) * n]
                    if positions is None:
                        figures[g][side * size : (side + 1) * size] = part
                    else:
                        for position, figure in zip(positions, part, strict=True):
                            figures[g][side * size + position] = figure
        return figures

    def _sharded(self, group: Tallies) -> list[tuple[int, list[int] | None]]:
        """(shard, positions of the group's tallies there; None: all of them), each piece
        at most a call's size."""
        size = len(group.names)
        if self._shards == 1:
            if size <= _TALLIES_PER_CALL_MAX:
                return [(0, None)]
            whole = list(range(size))
            return [
                (0, whole[i : i + _TALLIES_PER_CALL_MAX])
                for i in range(0, size, _TALLIES_PER_CALL_MAX)
            ]
        by_shard: dict[int, list[int]] = {}
        for position, name in enumerate(group.names):
            by_shard.setdefault(zlib.crc32(name.encode()) % self._shards, []).append(position)
        return [
            (shard, positions[i : i + _TALLIES_PER_CALL_MAX])
            for shard, positions in by_shard.items()
            for i in range(0, len(positions), _TALLIES_PER_CALL_MAX)
        ]

    def close(self) -> None:
        self._client.close()


def _sides(group: Tallies) -> list[Tallies]:
    """A mirrored group as the two groups it stands for (names first, then the mirror)."""
    if group.mirror is None:
        return [group]
    assert group.members is not None, "only distinct tallies have a mirror"
    mirrored = [group.mirror + member for member in group.members]
    return [
        Tallies(group.window_s, group.names, group.members),
        Tallies(group.window_s, mirrored, group.names),
    ]


def _rejoined(groups: Sequence[Tallies], figures: list[list[int | None]]) -> list[list[int | None]]:
    """The figures of ``_sides`` of each group, back as one list per group."""
    out: list[list[int | None]] = []
    at = 0
    for group in groups:
        if group.mirror is None:
            out.append(figures[at])
            at += 1
        else:
            out.append(figures[at] + figures[at + 1])
            at += 2
    return out


def _pick(
    group: Tallies, positions: list[int] | None
) -> tuple[Sequence[str], Sequence[str] | None]:
    if positions is None:
        return group.names, group.members
    names = [group.names[i] for i in positions]
    members = None if group.members is None else [group.members[i] for i in positions]
    return names, members


def _header(group: Tallies, now_ms: int) -> tuple[str | int, ...]:
    """A group's arguments before its names: kind, the current generation's key suffix,
    the earlier ones' and the ttl (ms)."""
    window_ms = group.window_s * 1000
    if group.members is None:
        span_ms = window_ms // SUB_WINDOWS
        index = now_ms // span_ms
        earlier = tuple(f"c:{span_ms}:{index - k}" for k in range(1, SUB_WINDOWS))
        # Read until the last sub-window whose figure counts this one has passed.
        ttl_ms = (index + SUB_WINDOWS) * span_ms - now_ms + SLACK_MS
        return ("c", f"c:{span_ms}:{index}", *earlier, ttl_ms)
    index = now_ms // window_ms
    ttl_ms = (index + 1) * window_ms - now_ms + SLACK_MS
    return ("d", f"d:{window_ms}:{index}", *([""] * (SUB_WINDOWS - 1)), ttl_ms)
