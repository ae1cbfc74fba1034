"""The outbox relay: every fact written to the outbox reaches central once in effect.

Each round leases up to ``relay_batch_max`` due events (oldest first; a
lease keeps another relay off them), delivers them in one call, and settles
each by central's answer::

    applied · duplicate · waiting   delivered (central keeps a waiting one until
                                    the voucher's earlier events arrive)
    rejected                        dead: listed for an operator, replayed by hand
    central unavailable             pending again after a backoff that doubles per
                                    attempt; dead after ``relay_attempts_max``

A relay that dies mid-round loses nothing: its leased events fall due again
when the lease ends and are delivered again, which central answers as
duplicates. Any number of relays (one per API process) may run at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog

from lequan.metrics import RELAY_ROUND_OUTCOMES
from lequan.ports.central import (
    CentralPlatform,
    CentralUnavailable,
    EventOutcome,
    SyncEvent,
)
from lequan.rows import OutboxRow
from lequan.services.background import Loop
from lequan.services.runtime import Runtime

__all__ = [
    "Backlog",
    "Relay",
    "RelayRound",
    "backlog",
    "backoff_s",
    "dead_letters",
    "relay_round",
    "replay",
    "sync_event",
    "wake_backoffs",
]

log = structlog.get_logger(__name__)

_DELIVERED = frozenset({EventOutcome.APPLIED, EventOutcome.DUPLICATE, EventOutcome.WAITING})


@dataclass(frozen=True, slots=True)
class RelayRound:
    leased: int
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    central_down: bool = False


def backoff_s(attempts: int, *, first_s: float, max_s: float) -> float:
    """The pause after the ``attempts``-th failed attempt: first_s, 2·first_s, ... ≤ max_s."""
    assert attempts >= 1, attempts
    return float(min(max_s, first_s * 2 ** min(attempts - 1, 32)))


def sync_event(row: OutboxRow) -> SyncEvent:
    """An outbox row as central receives it."""
    return SyncEvent(
        event_id=row.id,
        topic=row.topic,
        at=row.created_at,
        payload=json.loads(row.payload_json),
        voucher_id=row.voucher_id,
        seq=row.seq,
    )


def relay_round(rt: Runtime, central: CentralPlatform) -> RelayRound:
    """Lease, deliver and settle one batch of due events."""
    settings = rt.settings
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        leased = uow.outbox.lease_due(
            now=now,
            lease_until=now + timedelta(seconds=settings.relay_lease_s),
            limit=settings.relay_batch_max,
        )
        uow.commit()
    if not leased:
        return RelayRound(leased=0)
    try:
        results = central.deliver([sync_event(row) for row in leased])
        if [r.event_id for r in results] != [row.id for row in leased]:
            # Central answered for other events than were sent: trust none of it.
            log.error("relay_answer_mismatch", sent=len(leased), answered=len(results))
            raise CentralUnavailable("central answered for other events than were sent")
    except CentralUnavailable as error:
        return _later(rt, leased, str(error) or "central unavailable")
    delivered = [r.event_id for r in results if r.outcome in _DELIVERED]
    dead = [
        (r.event_id, f"rejected: {r.reason or 'no reason given'}")
        for r in results
        if r.outcome not in _DELIVERED
    ]
    settled_at = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        uow.outbox.mark_delivered(delivered, now=settled_at)
        uow.outbox.mark_dead(dead, now=settled_at)
        uow.commit()
    if dead:
        log.warning("relay_dead_letters", events=[event_id for event_id, _ in dead])
    return RelayRound(leased=len(leased), delivered=len(delivered), dead=len(dead))


def _later(rt: Runtime, leased: list[OutboxRow], error: str) -> RelayRound:
    """Every leased event pending again after its backoff, or dead past the last attempt."""
    settings = rt.settings
    now = rt.clock.now()
    retries = []
    dead = []
    for row in leased:
        if row.attempts >= settings.relay_attempts_max:
            dead.append((row.id, f"{row.attempts} attempts: {error}"))
            continue
        pause_s = backoff_s(
            row.attempts,
            first_s=settings.relay_backoff_first_s,
            max_s=settings.relay_backoff_max_s,
        )
        retries.append((row.id, now + timedelta(seconds=pause_s)))
    with rt.store.unit_of_work() as uow:
        uow.outbox.retry_later(retries, error=error)
        uow.outbox.mark_dead(dead, now=now)
        uow.commit()
    log.warning("relay_central_unavailable", events=len(leased), dead=len(dead), error=error)
    return RelayRound(leased=len(leased), retried=len(retries), dead=len(dead), central_down=True)


# Events made due at once per statement when central is back.
WAKE_BATCH = 10_000


def wake_backoffs(rt: Runtime) -> int:
    """Central is back: every event waiting out a backoff is due now, not when its
    backoff (up to ``relay_backoff_max_s``) ends. How many."""
    woken = 0
    while True:
        with rt.store.unit_of_work() as uow:
            done = uow.outbox.wake(now=rt.clock.now(), limit=WAKE_BATCH)
            uow.commit()
        woken += done
        if done < WAKE_BATCH:
            break
    if woken:
        log.info("relay_central_back", events_due_now=woken)
    return woken


class Relay(Loop):
    """Runs ``relay_round`` in a background thread: at once again after a full batch,
    after ``relay_idle_s`` otherwise (a failed round, too: the leases run out). Once
    central failed, each idle pause asks whether it is back (``ready``); when it is,
    whatever backed off goes at once."""

    def __init__(self, rt: Runtime, central: CentralPlatform) -> None:
        self._rt = rt
        self._central = central
        self.central_down = False
        rounds, events = rt.metrics.relay_rounds, rt.metrics.relay_events
        self._rounds = {outcome: rounds.labels(outcome) for outcome in RELAY_ROUND_OUTCOMES}
        self._delivered = events.labels("delivered")
        self._retried = events.labels("retried")
        self._dead = events.labels("dead")
        super().__init__(
            "lequan-relay",
            self.step,
            first_pause_s=0.0,
            retry_pause_s=rt.settings.relay_idle_s,
        )

    def step(self) -> float:
        """One round; the pause before the next. Counted by outcome, its events too."""
        rt = self._rt
        try:
            done = relay_round(rt, self._central)
        except Exception:
            self._rounds["failed"].inc()
            raise  # logged by the loop, which tries again
        self._count(done)
        if done.central_down:
            self.central_down = True
        elif self.central_down and (done.delivered or self._central.ready()):
            self.central_down = False
            wake_backoffs(rt)
            return 0.0
        full = done.leased == rt.settings.relay_batch_max and not done.central_down
        return 0.0 if full else rt.settings.relay_idle_s

    def _count(self, done: RelayRound) -> None:
        if done.central_down:
            outcome = "central_down"
        elif done.leased:
            outcome = "delivered"
        else:
            outcome = "idle"
        self._rounds[outcome].inc()
        self._delivered.inc(done.delivered)
        self._retried.inc(done.retried)
        self._dead.inc(done.dead)


# -- what operators see and do --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    dead: int
    delivered: int


def backlog(rt: Runtime) -> Backlog:
    with rt.store.unit_of_work(readonly=True) as uow:
        counts = uow.outbox.backlog()
    return Backlog(
        pending=counts.get("pending", 0),
        dead=counts.get("dead", 0),
        delivered=counts.get("delivered", 0),
    )


def dead_letters(rt: Runtime, *, after_id: str | None, limit: int) -> list[OutboxRow]:
    with rt.store.unit_of_work(readonly=True) as uow:
        return uow.outbox.dead_letters(after_id=after_id, limit=limit)


def replay(rt: Runtime, event_ids: Sequence[str] | None, *, actor: str, limit: int) -> int:
    """Dead events back to the relay (all of them, up to ``limit``, when ``event_ids`` is
    None), audited with the operator's name."""
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        moved = uow.outbox.replay(event_ids, now=now, limit=limit)
        uow.ledger.append_audit(
            actor=actor,
            action="outbox.replay",
            target="outbox",
            details={
                "event_ids": list(event_ids) if event_ids is not None else "all",
                "moved": moved,
            },
            now=now,
        )
        uow.commit()
    return moved
