"""The store contract, continued: the relay's side of the outbox and the trade-in
qualification locks, on SQLite, PostgreSQL and the in-memory store alike.

What the relay relies on: one voucher's events are numbered 1, 2, ... in the
statement that writes them; a leased event is not leased again before its
lease ends, nor by a second relay at the same time; a dead event stays dead
until replayed; the backlog counts what is left.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from lequan.ports import DuplicateKey, Store
from lequan.rows import QualificationLockRow

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
LEASE_S = 30


def _add(store: Store, events: list[tuple[str, str, dict[str, object]]], at: datetime) -> None:
    with store.unit_of_work() as uow:
        uow.ledger.add_outbox_many(events, now=at)
        uow.commit()


def _lease(store: Store, at: datetime, limit: int = 100) -> list[str]:
    with store.unit_of_work() as uow:
        leased = uow.outbox.lease_due(
            now=at, lease_until=at + timedelta(seconds=LEASE_S), limit=limit
        )
        uow.commit()
    return [row.id for row in leased]


def test_events_of_one_voucher_are_numbered_in_order(store: Store) -> None:
    _add(store, [("e1", "voucher.issued", {"voucher_id": "v1"}), ("e2", "x", {})], T0)
    with store.unit_of_work() as uow:
        uow.ledger.add_outbox(
            event_id="e3", topic="redemption.completed", payload={"voucher_id": "v1"}, now=T0
        )
        uow.commit()
    _add(store, [("e4", "redemption.refunded", {"voucher_id": "v1"})], T0 + timedelta(seconds=1))
    with store.unit_of_work() as uow:
        rows = {
            r.id: r
            for r in uow.outbox.lease_due(now=T0 + timedelta(seconds=5), lease_until=T0, limit=10)
        }
    assert [(rows[e].voucher_id, rows[e].seq) for e in ("e1", "e2", "e3", "e4")] == [
        ("v1", 1),
        (None, None),
        ("v1", 2),
        ("v1", 3),
    ]


def test_lease_takes_due_events_oldest_first_and_not_twice(store: Store) -> None:
    _add(store, [(f"e{n}", "t", {}) for n in range(3)], T0)
    _add(store, [("late", "t", {})], T0 + timedelta(seconds=60))
    assert _lease(store, T0 + timedelta(seconds=1), limit=2) == ["e0", "e1"]
    assert _lease(store, T0 + timedelta(seconds=2)) == ["e2"]
    # Leased ones are not due again before their lease ends; the late one is not due yet.
    assert _lease(store, T0 + timedelta(seconds=3)) == []
    again = _lease(store, T0 + timedelta(seconds=LEASE_S + 3))
    assert again == ["e0", "e1", "e2"]
    with store.unit_of_work(readonly=True) as uow:
        assert uow.outbox.backlog() == {"pending": 4}


def test_delivered_retried_dead_and_replayed(store: Store) -> None:
    _add(store, [(f"e{n}", "t", {}) for n in range(4)], T0)
    now = T0 + timedelta(seconds=1)
    assert len(_lease(store, now)) == 4
    with store.unit_of_work() as uow:
        uow.outbox.mark_delivered(["e0"], now=now)
        uow.outbox.retry_later([("e1", now + timedelta(seconds=5))], error="central down")
        uow.outbox.mark_dead([("e2", "rejected: unknown lock")], now=now)
        uow.commit()
    assert _lease(store, now + timedelta(seconds=6)) == ["e1"]
    with store.unit_of_work(readonly=True) as uow:
        assert uow.outbox.backlog() == {"delivered": 1, "pending": 2, "dead": 1}
        dead = uow.outbox.dead_letters(after_id=None, limit=10)
    assert [(d.id, d.last_error, d.attempts) for d in dead] == [("e2", "rejected: unknown lock", 1)]
    with store.unit_of_work() as uow:
        assert uow.outbox.replay(["e0", "e2"], now=now, limit=10) == 1  # e0 is not dead
        assert uow.outbox.replay(None, now=now, limit=10) == 0
        uow.commit()
    with store.unit_of_work(readonly=True) as uow:
        assert uow.outbox.backlog() == {"delivered": 1, "pending": 3}
        assert uow.outbox.dead_letters(after_id=None, limit=10) == []


def test_a_rolled_back_lease_leaves_the_events_due(store: Store) -> None:
    _add(store, [("e0", "t", {})], T0)
    with store.unit_of_work() as uow:
        assert len(uow.outbox.lease_due(now=T0, lease_until=T0 + timedelta(hours=1), limit=5))
    assert _lease(store, T0) == ["e0"]


@pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_two_relays_never_lease_one_event(store: Store) -> None:
    _add(store, [(f"e{n:03}", "t", {}) for n in range(200)], T0)
    taken: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def relay(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            taken[i].extend(_lease(store, T0, limit=10))

    threads = [threading.Thread(target=relay, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(taken[0] + taken[1]) == [f"e{n:03}" for n in range(200)]


def _lock(
    lock_id: str, *, person: str = "p1", category: str = "refrigerator"
) -> QualificationLockRow:
    return QualificationLockRow(
        id=lock_id,
        person_id=person,
        campaign_id="gd-trade-in",
        template_id=category,
        category=category,
        state="held",
        voucher_id=None,
        created_at=T0,
        updated_at=T0,
    )


def test_qualification_locks_move_conditionally(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.qualifications.add_lock(_lock("q1"))
        uow.qualifications.add_lock(_lock("q2", category="tv"))
        uow.commit()
    later = T0 + timedelta(minutes=1)
    with store.unit_of_work() as uow:
        assert uow.qualifications.live_locks("p1", "refrigerator") == 1
        assert uow.qualifications.move_lock(
            "q1", from_states=["held"], to="issued", now=later, voucher_id="v1"
        )
        assert not uow.qualifications.move_lock("q1", from_states=["held"], to="refused", now=later)
        assert uow.qualifications.move_lock("q2", from_states=["held"], to="refused", now=later)
        uow.commit()
    with store.unit_of_work(readonly=True) as uow:
        q1 = uow.qualifications.get_lock("q1")
        assert q1 is not None
        assert (q1.state, q1.voucher_id, q1.updated_at) == ("issued", "v1", later)
        assert uow.qualifications.lock_of_voucher("v1") == q1
        assert uow.qualifications.live_locks("p1", "refrigerator") == 1
        assert uow.qualifications.live_locks("p1", "tv") == 0
        assert uow.qualifications.get_lock("nope") is None


def test_a_lock_id_and_a_voucher_are_taken_once(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.qualifications.add_lock(_lock("q1"))
        uow.qualifications.add_lock(_lock("q2"))
        uow.qualifications.move_lock(
            "q1", from_states=["held"], to="issued", now=T0, voucher_id="v1"
        )
        uow.commit()
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.qualifications.add_lock(_lock("q1"))
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.qualifications.move_lock(
            "q2", from_states=["held"], to="issued", now=T0, voucher_id="v1"
        )


def test_held_locks_are_found_oldest_first_and_by_day(store: Store) -> None:
    with store.unit_of_work() as uow:
        for n in range(3):
            uow.qualifications.add_lock(_at(_lock(f"q{n}"), T0 + timedelta(minutes=n)))
        uow.qualifications.move_lock("q1", from_states=["held"], to="issued", now=T0)
        uow.commit()
    with store.unit_of_work(readonly=True) as uow:
        held = uow.qualifications.locks_held_since(T0 + timedelta(minutes=5), 10)
        assert [q.id for q in held] == ["q0", "q2"]
        assert uow.qualifications.locks_held_since(T0 + timedelta(seconds=30), 10)[0].id == "q0"
        day = uow.qualifications.locks_between(
            T0, T0 + timedelta(minutes=2), after_id=None, limit=10
        )
        assert [q.id for q in day] == ["q0", "q1"]
        assert [
            q.id
            for q in uow.qualifications.locks_between(
                T0, T0 + timedelta(hours=1), after_id="q0", limit=1
            )
        ] == ["q1"]


def _at(row: QualificationLockRow, at: datetime) -> QualificationLockRow:
    return replace(row, created_at=at, updated_at=at)


def test_a_person_keeps_the_pseudonym_central_gave(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.people.insert_person(
            {
                "id": "p1",
                "id_number_bidx": "b" * 64,
                "id_number_enc": b"sealed",
                "key_id": "k1",
                "consent_version": "v1",
                "consent_at": T0,
                "created_at": T0,
            }
        )
        uow.commit()
    with store.unit_of_work() as uow:
        person = uow.people.get_person("p1")
        assert person is not None
        assert person.pseudonym is None
        uow.people.set_pseudonym("p1", "n" * 64)
        uow.commit()
    with store.unit_of_work(readonly=True) as uow:
        person = uow.people.get_person("p1")
        assert person is not None
        assert person.pseudonym == "n" * 64
        assert uow.people.get_person("p2") is None


def test_events_of_a_day_are_listed_by_id_with_a_cursor(store: Store) -> None:
    _add(store, [("e1", "t", {}), ("e2", "t", {"voucher_id": "v1"})], T0)
    _add(store, [("e3", "t", {})], T0 + timedelta(hours=1))
    with store.unit_of_work(readonly=True) as uow:
        day = uow.outbox.events_between(T0, T0 + timedelta(hours=1), after_id=None, limit=10)
        assert [(r.id, r.voucher_id, r.seq) for r in day] == [("e1", None, None), ("e2", "v1", 1)]
        rest = uow.outbox.events_between(T0, T0 + timedelta(days=1), after_id="e1", limit=1)
        assert [r.id for r in rest] == ["e2"]


def test_a_vouchers_pending_events_in_seq_order(store: Store) -> None:
    _add(
        store,
        [("a1", "voucher.issued", {"voucher_id": "v1"}), ("b1", "t", {"voucher_id": "v2"})],
        T0,
    )
    _add(store, [("a2", "redemption.completed", {"voucher_id": "v1"})], T0)
    _add(store, [("a3", "redemption.refunded", {"voucher_id": "v1"})], T0)
    with store.unit_of_work() as uow:
        uow.outbox.mark_delivered(["a1"], now=T0)
        uow.commit()
    with store.unit_of_work(readonly=True) as uow:
        pending = uow.outbox.pending_of_voucher("v1", 10)
        assert [(r.id, r.seq) for r in pending] == [("a2", 2), ("a3", 3)]
        assert [r.id for r in uow.outbox.pending_of_voucher("v1", 1)] == ["a2"]
        assert uow.outbox.pending_of_voucher("v9", 10) == []


def test_events_backing_off_are_woken_and_no_other(store: Store) -> None:
    _add(store, [(f"e{n}", "t", {}) for n in range(4)], T0)
    now = T0 + timedelta(seconds=1)
    _lease(store, now)  # all four leased
    with store.unit_of_work() as uow:
        uow.outbox.retry_later(
            [("e0", now + timedelta(seconds=30)), ("e1", now + timedelta(seconds=60))],
            error="central down",
        )
        uow.outbox.mark_delivered(["e2"], now=now)
        uow.commit()
    with store.unit_of_work() as uow:
        # e3 is leased without an error: another relay's, left alone.
        assert uow.outbox.wake(now=now, limit=1) == 1
        assert uow.outbox.wake(now=now, limit=10) == 1
        assert uow.outbox.wake(now=now, limit=10) == 0
        uow.commit()
    assert _lease(store, now) == ["e0", "e1"]
