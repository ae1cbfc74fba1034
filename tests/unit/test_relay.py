"""The outbox relay: what central is sent, and what becomes of each event when
central applies it, rejects it, or does not answer.

Central here is a scripted fake of the port (it records what it was sent and
answers as told); the relay against the real central process is tested in
tests/central.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lequan.adapters.memory_store import MemoryStore
from lequan.ports.central import (
    CentralDay,
    CentralUnavailable,
    ConsumeRequest,
    ConsumeResult,
    EventOutcome,
    EventResult,
    LockRequest,
    LockResult,
    SyncEvent,
)
from lequan.services.relay import Relay, backoff_s, relay_round
from tests.factories import World, make_world

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


class ScriptedCentral:
    """Answers ``deliver`` as told: every event applied, unless it is down or told
    to reject some ids; remembers every event it was sent."""

    def __init__(self) -> None:
        self.down = False
        self.reject: set[str] = set()
        self.sent: list[SyncEvent] = []
        self.applied: dict[str, SyncEvent] = {}

    def deliver(self, events: Sequence[SyncEvent]) -> list[EventResult]:
        if self.down:
            raise CentralUnavailable("connection refused")
        self.sent.extend(events)
        results = []
        for e in events:
            if e.event_id in self.reject:
                results.append(EventResult(e.event_id, EventOutcome.REJECTED, "unknown lock"))
            elif e.event_id in self.applied:
                results.append(EventResult(e.event_id, EventOutcome.DUPLICATE))
            else:
                self.applied[e.event_id] = e
                results.append(EventResult(e.event_id, EventOutcome.APPLIED))
        return results

    def pseudonyms(self, id_numbers: Sequence[str]) -> list[str]:
        raise AssertionError("the relay only delivers")

    def lock(self, requests: Sequence[LockRequest]) -> list[LockResult]:
        raise AssertionError("the relay only delivers")

    def consume(self, requests: Sequence[ConsumeRequest]) -> list[ConsumeResult]:
        raise AssertionError("the relay only delivers")

    def release(self, lock_ids: Sequence[tuple[str, str]]) -> None:
        raise AssertionError("the relay only delivers")

    def day(self, day: object) -> CentralDay:
        raise AssertionError("the relay only delivers")

    def ready(self) -> bool:
        return not self.down


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(
        store=MemoryStore(),
        tmp_path=tmp_path,
        clock_at=T0,
        relay_batch_max=3,
        relay_attempts_max=3,
        relay_backoff_first_s=1.0,
        relay_backoff_max_s=4.0,
    ) as world:
        yield world


def _write(world: World, n: int, *, voucher: str | None = None) -> list[str]:
    ids = [f"e{world.clock.now():%H%M%S}-{i:02}" for i in range(n)]
    with world.rt.store.unit_of_work() as uow:
        for event_id in ids:
            payload = {"voucher_id": voucher} if voucher else {"n": event_id}
            uow.ledger.add_outbox(
                event_id=event_id, topic="redemption.completed", payload=payload, now=T0
            )
        uow.commit()
    return ids


def _backlog(world: World) -> dict[str, int]:
    with world.rt.store.unit_of_work(readonly=True) as uow:
        return {k: v for k, v in uow.outbox.backlog().items() if k != "delivered"}


def test_every_event_is_delivered_once_oldest_first_in_batches(world: World) -> None:
    central = ScriptedCentral()
    ids = _write(world, 7)
    rounds = [relay_round(world.rt, central) for _ in range(4)]
    assert [r.delivered for r in rounds] == [3, 3, 1, 0]
    assert [e.event_id for e in central.sent] == ids
    assert _backlog(world) == {}


def test_one_vouchers_events_go_in_seq_order_with_their_payload(world: World) -> None:
    central = ScriptedCentral()
    with world.rt.store.unit_of_work() as uow:
        for n, topic in enumerate(
            ["voucher.issued", "redemption.completed", "redemption.refunded"]
        ):
            uow.ledger.add_outbox(
                event_id=f"e{n}", topic=topic, payload={"voucher_id": "v1", "n": n}, now=T0
            )
        uow.commit()
    relay_round(world.rt, central)
    assert [(e.topic, e.voucher_id, e.seq, e.payload["n"]) for e in central.sent] == [
        ("voucher.issued", "v1", 1, 0),
        ("redemption.completed", "v1", 2, 1),
        ("redemption.refunded", "v1", 3, 2),
    ]


def test_central_down_backs_off_then_catches_up_losing_nothing(world: World) -> None:
    central = ScriptedCentral()
    ids = _write(world, 3)
    central.down = True
    first = relay_round(world.rt, central)
    assert (first.central_down, first.retried, first.dead) == (True, 3, 0)
    # Not due again before the backoff (1 s after the first attempt).
    assert relay_round(world.rt, central).leased == 0
    world.clock.advance(timedelta(seconds=1))
    assert relay_round(world.rt, central).retried == 3  # second attempt, down still
    world.clock.advance(timedelta(seconds=1))
    assert relay_round(world.rt, central).leased == 0  # now 2 s of backoff
    central.down = False
    world.clock.advance(timedelta(seconds=1))
    assert relay_round(world.rt, central).delivered == 3
    assert sorted(central.applied) == ids
    assert _backlog(world) == {}


def test_an_event_is_dead_after_its_last_attempt_and_replayed_by_hand(world: World) -> None:
    central = ScriptedCentral()
    (event_id,) = _write(world, 1)
    central.down = True
    for _ in range(3):
        relay_round(world.rt, central)
        world.clock.advance(timedelta(seconds=10))
    assert _backlog(world) == {"dead": 1}
    with world.rt.store.unit_of_work(readonly=True) as uow:
        (dead,) = uow.outbox.dead_letters(after_id=None, limit=10)
    assert (dead.id, dead.attempts) == (event_id, 3)
    assert dead.last_error is not None
    assert "connection refused" in dead.last_error
    central.down = False
    with world.rt.store.unit_of_work() as uow:
        assert uow.outbox.replay([event_id], now=world.clock.now(), limit=10) == 1
        uow.commit()
    assert relay_round(world.rt, central).delivered == 1
    assert list(central.applied) == [event_id]


def test_a_rejected_event_is_dead_at_once_and_the_rest_delivered(world: World) -> None:
    central = ScriptedCentral()
    ids = _write(world, 3)
    central.reject = {ids[1]}
    done = relay_round(world.rt, central)
    assert (done.delivered, done.dead) == (2, 1)
    with world.rt.store.unit_of_work(readonly=True) as uow:
        (dead,) = uow.outbox.dead_letters(after_id=None, limit=10)
    assert (dead.id, dead.last_error) == (ids[1], "rejected: unknown lock")


def test_a_relay_that_died_after_sending_sends_again_and_central_dedupes(world: World) -> None:
    central = ScriptedCentral()
    ids = _write(world, 2)
    # The relay leased and sent, then died before settling: simulate by delivering the
    # batch by hand and letting the lease run out.
    with world.rt.store.unit_of_work() as uow:
        leased = uow.outbox.lease_due(
            now=world.clock.now(), lease_until=world.clock.now() + timedelta(seconds=60), limit=5
        )
        uow.commit()
    central.deliver(
        [SyncEvent(r.id, r.topic, r.created_at, {}, r.voucher_id, r.seq) for r in leased]
    )
    assert relay_round(world.rt, central).leased == 0  # still leased
    world.clock.advance(timedelta(seconds=61))
    assert relay_round(world.rt, central).delivered == 2
    assert sorted(central.applied) == ids
    assert len(central.sent) == 4  # sent twice, applied once


def test_backoff_doubles_up_to_its_max() -> None:
    assert [backoff_s(n, first_s=0.5, max_s=60) for n in (1, 2, 3, 8, 9, 1000)] == [
        0.5,
        1.0,
        2.0,
        60.0,
        60.0,
        60.0,
    ]


def test_central_back_makes_what_backed_off_due_at_once(world: World) -> None:
    central = ScriptedCentral()
    ids = _write(world, 3)
    relay = Relay(world.rt, central)  # its rounds run here, not in its thread
    central.down = True
    relay.step()
    world.clock.advance(timedelta(seconds=1))
    relay.step()  # second attempt: each event now waits 2 s
    assert relay.central_down
    central.down = False
    # Nothing is due, yet central answers: everything waiting goes now, not in 2 s.
    assert relay.step() == 0.0
    assert not relay.central_down
    relay.step()
    assert sorted(central.applied) == ids
    assert _backlog(world) == {}


def test_rounds_and_their_events_are_counted_by_outcome(world: World) -> None:
    central = ScriptedCentral()
    relay = Relay(world.rt, central)  # its rounds run here, not in its thread
    ids = _write(world, 3)
    central.down = True
    relay.step()
    central.down = False
    central.reject = {ids[0]}
    world.clock.advance(timedelta(seconds=1))
    relay.step()
    relay.step()  # nothing due

    def counted(name: str, outcome: str) -> float | None:
        value: float | None = world.rt.metrics.registry.get_sample_value(name, {"outcome": outcome})
        return value

    rounds = {o: counted("lequan_relay_rounds_total", o) for o in ("central_down", "delivered")}
    assert rounds == {"central_down": 1, "delivered": 1}
    assert counted("lequan_relay_rounds_total", "idle") == 1
    events = {o: counted("lequan_relay_events_total", o) for o in ("retried", "delivered", "dead")}
    assert events == {"retried": 3, "delivered": 2, "dead": 1}
