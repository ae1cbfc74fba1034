"""The claim gate held in this process, for the embedded mode and the unit tests.

One process answers every claim in the embedded mode, so a dictionary behind
one lock is all the atomicity a flash sale needs there; the Redis gate gives
the same answers to many processes. Both pass ``tests/integration/
test_gate_contract.py``, which is the definition of the rules below.

The rules of one reservation, checked in this order:

1. no stock registered for (pool, template)        → ``UNKNOWN_STOCK``
2. ``campaign_limit > 0`` and the person's campaign
   count has reached it                             → ``CAMPAIGN_LIMIT``
3. the person's count in the pool has reached
   ``limit`` (whatever the template)                → ``ALREADY_CLAIMED``
4. the template's stock is 0                        → ``SOLD_OUT``
5. otherwise take one: stock - 1, pool count + 1,
   campaign count + 1 (only when the request
   carries a campaign limit), and journal the
   reservation as pending                           → ``OK``

The reservation's ``claim_seq`` is the person's count + 1 or, when that one
is still pending (an earlier one was released meanwhile), the lowest seq
not pending.

A release gives back a reservation only while it is pending (once: a second
release, or one after ``settle`` or a reset, gives back nothing).

A campaign count is taken (and the time of it kept, for ``recount``) only for
requests that carry a campaign limit: a
campaign without one would otherwise hold one counter per person that
nothing ever reads (and the Redis gate would pay a round trip to keep it).

A round's fair start (``enter``, ``draw``): entries are taken until the first
``draw`` call closes the draw and sorts them by (score, ticket); each later
call serves the next chunk in that order with the rules above, under the
same lock, and keeps what each entry was answered. One process: no other
drawer to take over from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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

__all__ = ["MemoryGate", "checked_reset"]

BATCH_SIZE_MAX_DEFAULT = 10_000


@dataclass(slots=True)
class _Draw:
    """One round's fair start: its entries, then (closed) their order and results."""

    entries: dict[str, DrawEntry] = field(default_factory=dict)  # by ticket
    people: dict[tuple[str, str], int] = field(default_factory=dict)  # (pool, person) -> n
    order: list[str] | None = None  # the tickets by (score, ticket), once closed
    pools: frozenset[str] = frozenset()
    served: int = 0
    results: dict[str, tuple[ReserveOutcome, int, float]] = field(default_factory=dict)

    def progress(self, *, finished_now: bool = False) -> DrawProgress:
        last = None
        if self.order and self.served:
            ticket = self.order[self.served - 1]
            last = (self.entries[ticket].score, ticket)
        return DrawProgress(
            closed=self.order is not None,
            entries=len(self.entries),
            served=self.served,
            last=last,
            finished_now=finished_now,
        )


class MemoryGate:
    """A ClaimGate in a dictionary; every call holds one lock from start to end."""

    def __init__(self, *, batch_size_max: int = BATCH_SIZE_MAX_DEFAULT) -> None:
        if batch_size_max < 1:
            raise ValueError(f"batch_size_max must be at least 1, got {batch_size_max}")
        self._batch_size_max = batch_size_max
        self._lock = threading.Lock()
        # pool → template_id → stock left
        self._stock: dict[str, dict[str, int]] = {}
        # pool → person_id → claims in the pool; a person at 0 has no entry
        self._pool_claimed: dict[str, dict[str, int]] = {}
        # campaign_id → person_id → claims in the campaign; a person at 0 has no entry
        self._campaign_claimed: dict[str, dict[str, int]] = {}
        # campaign_id → person_id → when their campaign count was last taken (monotonic s)
        self._campaign_taken_at: dict[str, dict[str, float]] = {}
        # pool → (template_id, person_id, claim_seq) → when reserved (monotonic s)
        self._pending: dict[str, dict[tuple[str, str, int], float]] = {}
        self._draws: dict[str, _Draw] = {}

    @property
    def shared(self) -> bool:
        """One process: its reservations die with it, and so does this state."""
        return False

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        """Answer each request in order, as if each had come alone.

        The lock is held for the whole batch so a request sees every earlier
        one of its batch, as the Redis gate's scripts do.
        """
        self._check_batch_size(len(requests))
        now = time.monotonic()
        with self._lock:
            return [self._reserve_one(request, now) for request in requests]

    def _reserve_one(self, request: ReserveRequest, now: float) -> ReserveResult:
        pool_stock = self._stock.get(request.pool)
        if pool_stock is None or request.template_id not in pool_stock:
            return ReserveResult(ReserveOutcome.UNKNOWN_STOCK, claim_seq=0, remaining=0)
        left = pool_stock[request.template_id]
        assert left >= 0, f"negative stock {left} in {request.pool}/{request.template_id}"

        campaign_claimed = self._campaign_claimed.get(request.campaign_id, {})
        if (
            request.campaign_limit > 0
            and campaign_claimed.get(request.person_id, 0) >= request.campaign_limit
        ):
            return ReserveResult(ReserveOutcome.CAMPAIGN_LIMIT, claim_seq=0, remaining=left)

        pool_claimed = self._pool_claimed.setdefault(request.pool, {})
        count = pool_claimed.get(request.person_id, 0)
        if count >= request.limit:
            return ReserveResult(ReserveOutcome.ALREADY_CLAIMED, claim_seq=0, remaining=left)
        if left == 0:
            return ReserveResult(ReserveOutcome.SOLD_OUT, claim_seq=0, remaining=0)

        pool_stock[request.template_id] = left - 1
        pool_claimed[request.person_id] = count + 1
        if request.campaign_limit > 0:
            campaign_claimed = self._campaign_claimed.setdefault(request.campaign_id, {})
            campaign_claimed[request.person_id] = campaign_claimed.get(request.person_id, 0) + 1
            self._campaign_taken_at.setdefault(request.campaign_id, {})[request.person_id] = now
        pending = self._pending.setdefault(request.pool, {})
        seq = count + 1
        if (request.template_id, request.person_id, seq) in pending:
            # An earlier reservation was released while this one is pending.
            seq = next(
                n
                for n in range(1, request.limit + 1)
                if (request.template_id, request.person_id, n) not in pending
            )
        pending[(request.template_id, request.person_id, seq)] = now
        return ReserveResult(ReserveOutcome.OK, claim_seq=seq, remaining=left - 1)

    def settle(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        self._check_batch_size(len(reservations))
        with self._lock:
            for request, claim_seq in reservations:
                pending = self._pending.get(request.pool)
                if pending is not None:
                    pending.pop((request.template_id, request.person_id, claim_seq), None)

    def release(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Hand back pending reservations whose commit failed, so the stock is sold again.

        Only a pending reservation comes back, once: a release never
        reserved, repeated, or made after a reset rebuilt the pool from the
        store (which never saw the failed commit) gives back nothing.
        """
        self._check_batch_size(len(reservations))
        with self._lock:
            for request, claim_seq in reservations:
                pending = self._pending.get(request.pool)
                slot = (request.template_id, request.person_id, claim_seq)
                if pending is None or pending.pop(slot, None) is None:
                    continue
                _decrement(self._pool_claimed.get(request.pool), request.person_id)
                pool_stock = self._stock.get(request.pool)
                if pool_stock is not None and request.template_id in pool_stock:
                    pool_stock[request.template_id] += 1
                if request.campaign_limit > 0:
                    _decrement(self._campaign_claimed.get(request.campaign_id), request.person_id)

    def stale(self, pool: str, *, older_than_s: float, limit: int) -> list[tuple[str, str, int]]:
        cutoff = time.monotonic() - older_than_s
        with self._lock:
            pending = self._pending.get(pool, {})
            return [slot for slot, at in pending.items() if at <= cutoff][:limit]

    def pending_of(
        self, pools: Sequence[str], person_ids: Sequence[str]
    ) -> list[PendingReservation]:
        now = time.monotonic()
        people = set(person_ids)
        with self._lock:
            return [
                PendingReservation(pool, template_id, person_id, seq, now - at)
                for pool in pools
                for (template_id, person_id, seq), at in self._pending.get(pool, {}).items()
                if person_id in people
            ]

    def recount(self, campaign_id: str, counts: Mapping[str, int], *, quiet_s: float) -> set[str]:
        cutoff = time.monotonic() - quiet_s
        left: set[str] = set()
        with self._lock:
            claimed = self._campaign_claimed.get(campaign_id, {})
            taken_at = self._campaign_taken_at.get(campaign_id, {})
            for person_id, count in counts.items():
                assert count >= 0
                if claimed.get(person_id, 0) <= count:
                    continue
                if taken_at.get(person_id, cutoff) > cutoff:
                    left.add(person_id)
                elif count:
                    claimed[person_id] = count
                else:
                    del claimed[person_id]
        return left

    def remaining(self, pool: str, template_id: str) -> int | None:
        with self._lock:
            pool_stock = self._stock.get(pool)
            return None if pool_stock is None else pool_stock.get(template_id)

    def loaded(self, campaign_id: str, pools: Sequence[str]) -> bool:
        with self._lock:
            return campaign_id in self._campaign_claimed and all(p in self._stock for p in pools)

    def begin_rebuild(self, campaign_id: str, *, ttl_s: float) -> str | None:
        """Always granted: one process, and ``ensure_gate`` runs under its own lock."""
        return campaign_id

    def end_rebuild(self, campaign_id: str, token: str) -> None:
        """Nothing held; see ``begin_rebuild``."""

    def forget(self, campaign_id: str, pools: Sequence[str]) -> None:
        with self._lock:
            self._campaign_claimed.pop(campaign_id, None)
            self._campaign_taken_at.pop(campaign_id, None)
            for pool in pools:
                self._stock.pop(pool, None)
                self._pool_claimed.pop(pool, None)
                self._pending.pop(pool, None)

    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        """Replace the pool with the store's truth; empty ``stock`` forgets the pool."""
        new_stock = checked_reset(stock, what="stock", keep_zero=True)
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        with self._lock:
            if new_stock:
                self._stock[pool] = new_stock
            else:
                self._stock.pop(pool, None)
            self._pool_claimed[pool] = new_claimed
            self._pending.pop(pool, None)

    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        with self._lock:
            self._campaign_claimed[campaign_id] = new_claimed

    def enter(
        self, draw: str, entries: Sequence[DrawEntry], *, entries_max: int
    ) -> list[EntryOutcome]:
        self._check_batch_size(len(entries))
        with self._lock:
            held = self._draws.setdefault(draw, _Draw())
            return [self._enter_one(held, entry, entries_max) for entry in entries]

    @staticmethod
    def _enter_one(held: _Draw, entry: DrawEntry, entries_max: int) -> EntryOutcome:
        if held.order is not None:
            return EntryOutcome.CLOSED
        before = held.entries.get(entry.ticket)
        if before is not None:
            return (
                EntryOutcome.REJOINED
                if before.owner == entry.owner
                else EntryOutcome.HELD_ELSEWHERE
            )
        if len(held.entries) >= entries_max:
            return EntryOutcome.OVER
        who = (entry.request.pool, entry.request.person_id)
        count = held.people.get(who, 0)
        if count >= entry.request.limit:
            return EntryOutcome.FULL
        held.entries[entry.ticket] = entry
        held.people[who] = count + 1
        return EntryOutcome.ENTERED

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        """Serve the next chunk under the gate's lock; ``lock_ttl_s`` has nothing to
        guard here (one process, one lock)."""
        assert chunk_size >= 1
        assert pending_max >= 1
        now = time.monotonic()
        with self._lock:
            held = self._draws.setdefault(draw, _Draw())
            if held.order is None:
                held.order = sorted(held.entries, key=lambda t: (held.entries[t].score, t))
                held.pools = frozenset(e.request.pool for e in held.entries.values())
                if not held.order:
                    return held.progress(finished_now=True)
            if held.served == len(held.order):
                return held.progress()
            pending = sum(len(self._pending.get(pool, {})) for pool in held.pools)
            if pending >= pending_max:
                return held.progress()
            chunk = held.order[held.served : held.served + chunk_size]
            for ticket in chunk:
                got = self._reserve_one(held.entries[ticket].request, now)
                held.results[ticket] = (got.outcome, got.claim_seq, now)
            held.served += len(chunk)
            return held.progress(finished_now=held.served == len(held.order))

    def draw_results(self, draw: str, tickets: Sequence[str]) -> list[DrawResult | None]:
        now = time.monotonic()
        with self._lock:
            held = self._draws.get(draw)
            found = {} if held is None else held.results
            return [
                None
                if (got := found.get(ticket)) is None
                else DrawResult(got[0], claim_seq=got[1], age_s=now - got[2])
                for ticket in tickets
            ]

    def drawn(self, draw: str, *, start: int, limit: int) -> list[DrawnEntry]:
        now = time.monotonic()
        with self._lock:
            held = self._draws.get(draw)
            if held is None or held.order is None:
                return []
            tickets = held.order[start : min(start + limit, held.served)]
            return [
                DrawnEntry(
                    rank=start + n + 1,
                    ticket=ticket,
                    request=held.entries[ticket].request,
                    result=DrawResult(
                        held.results[ticket][0],
                        claim_seq=held.results[ticket][1],
                        age_s=now - held.results[ticket][2],
                    ),
                )
                for n, ticket in enumerate(tickets)
            ]

    def forget_draw(self, draw: str) -> None:
        with self._lock:
            self._draws.pop(draw, None)

    def close(self) -> None:
        """Nothing to close; here so the embedded mode shuts down like the others."""

    def _check_batch_size(self, size: int) -> None:
        if size > self._batch_size_max:
            raise ValueError(f"batch of {size} exceeds batch_size_max {self._batch_size_max}")


def checked_reset(values: Mapping[str, int], *, what: str, keep_zero: bool) -> dict[str, int]:
    """Copy a reset's map, refusing negatives.

    A stock of 0 is kept (sold out is not unknown); a claim count of 0 is
    dropped, because an absent person already counts as 0.
    """
    copied: dict[str, int] = {}
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{what} for {key!r} must not be negative, got {value}")
        if value > 0 or keep_zero:
            copied[key] = value
    return copied


def _decrement(counts: dict[str, int] | None, person_id: str) -> bool:
    """Take one from the person's count if there is one to take; True if taken."""
    count = 0 if counts is None else counts.get(person_id, 0)
    if counts is None or count == 0:
        return False
    if count > 1:
        counts[person_id] = count - 1
    else:
        del counts[person_id]
    return True
