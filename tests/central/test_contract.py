"""The port's contract (``ports.central.CentralPlatform``), run against the in-process
fake and against a real central process over HTTP (SQLite and PostgreSQL stores)."""

from __future__ import annotations

import functools
import secrets
from datetime import UTC, datetime
from typing import Any

from lequan.ports.central import (
    BATCH_MAX,
    ConsumeOutcome,
    ConsumeRequest,
    EventOutcome,
    LockOutcome,
    LockRequest,
    SyncEvent,
)
from tests.central.conftest import Pair, code_of

FRIDGE = "refrigerator"


def _person() -> str:
    return secrets.token_hex(32)


def _lock(
    pair: Pair,
    name: str,
    person: str,
    *,
    category: str = FRIDGE,
    items_max: int = 1,
    hold_s: int = 600,
) -> LockRequest:
    return LockRequest(pair.id(name), person, category, items_max, hold_s)


def _consume(
    pair: Pair,
    name: str,
    *,
    serial: str | None = None,
    imei: str | None = None,
    category: str = FRIDGE,
) -> ConsumeRequest:
    return ConsumeRequest(
        lock_id=pair.id(name),
        voucher_id=pair.id("v-" + name),
        redemption_id=pair.id("r-" + name),
        category=category,
        serial=serial if serial is not None or imei is not None else pair.id("sn-" + name),
        imei=imei,
        invoice_no="INV-" + name,
        price_fen=300_000,
        subsidy_fen=45_000,
    )


def _event(
    pair: Pair, name: str, topic: str, payload: dict[str, object], voucher: str, seq: int | None
) -> SyncEvent:
    return SyncEvent(pair.id(name), topic, pair.now(), payload, pair.id(voucher), seq)


def test_pseudonyms_are_national_and_stable(pair: Pair) -> None:
    ids = ["110101199003077777", "44030119851201002X"]
    first = pair.a.pseudonyms(ids)
    assert first == pair.b.pseudonyms(ids) == pair.a.pseudonyms(ids)
    assert first[0] != first[1]
    assert all(len(p) == 64 for p in first)


def test_one_slot_per_person_nationwide(pair: Pair) -> None:
    person = _person()
    [mine] = pair.a.lock([_lock(pair, "a1", person)])
    assert mine.outcome is LockOutcome.LOCKED
    assert mine.expires_at is not None
    # The same lock again (a retry): the same slot, nothing more taken.
    [again] = pair.a.lock([_lock(pair, "a1", person)])
    assert again.outcome is LockOutcome.LOCKED
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.USED_ELSEWHERE
    [second] = pair.a.lock([_lock(pair, "a2", person)])
    assert second.outcome is LockOutcome.LIMIT_REACHED
    # Another category is another qualification.
    [phone] = pair.b.lock([_lock(pair, "b2", person, category="phone")])
    assert phone.outcome is LockOutcome.LOCKED


def test_a_category_with_three_slots(pair: Pair) -> None:
    person = _person()
    results = pair.a.lock(
        [_lock(pair, f"ac{n}", person, category="air_conditioner", items_max=3) for n in range(4)]
    )
    assert [r.outcome for r in results] == [LockOutcome.LOCKED] * 3 + [LockOutcome.LIMIT_REACHED]
    [elsewhere] = pair.b.lock([_lock(pair, "bc", person, category="air_conditioner", items_max=3)])
    assert elsewhere.outcome is LockOutcome.USED_ELSEWHERE


def test_a_released_hold_frees_the_slot(pair: Pair) -> None:
    person = _person()
    pair.a.lock([_lock(pair, "a1", person)])
    pair.a.release([(pair.id("a1"), "claim failed")])
    pair.a.release([(pair.id("a1"), "claim failed")])  # idempotent
    pair.a.release([(pair.id("unknown"), "never locked")])
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.LOCKED


def test_a_hold_never_confirmed_expires(pair: Pair) -> None:
    """A province that crashed between central's lock and its own commit: the hold
    passes, and the person may lock again (here, or elsewhere)."""
    person = _person()
    pair.a.lock([_lock(pair, "a1", person, hold_s=pair.hold_s)])
    pair.pass_hold()
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.LOCKED
    # The late voucher.issued of the crashed hold finds no free slot.
    [late] = pair.a.deliver(
        [_event(pair, "e1", "voucher.issued", {"lock_id": pair.id("a1")}, "va", 1)]
    )
    assert late.outcome is EventOutcome.REJECTED
    assert late.reason == "used_elsewhere"


def test_an_expired_hold_is_taken_again_when_free(pair: Pair) -> None:
    person = _person()
    pair.a.lock([_lock(pair, "a1", person, hold_s=pair.hold_s)])
    pair.pass_hold()
    [issued] = pair.a.deliver(
        [_event(pair, "e1", "voucher.issued", {"lock_id": pair.id("a1")}, "va", 1)]
    )
    assert issued.outcome is EventOutcome.APPLIED
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.USED_ELSEWHERE


def test_consume_is_idempotent_and_checks_the_serial_registry(pair: Pair) -> None:
    one, two = _person(), _person()
    pair.a.lock([_lock(pair, "a1", one), _lock(pair, "a2", two)])
    serial = pair.id("SN-77")
    first = _consume(pair, "a1", serial=serial)
    assert pair.a.consume([first])[0].outcome is ConsumeOutcome.CONSUMED
    assert pair.a.consume([first])[0].outcome is ConsumeOutcome.CONSUMED  # a retry
    # The same fridge for another person, its serial written another way.
    reused = _consume(pair, "a2", serial=serial.lower().replace("-", " "))
    assert pair.a.consume([reused])[0].outcome is ConsumeOutcome.SERIAL_USED
    # ... and from another province too.
    three = _person()
    pair.b.lock([_lock(pair, "b1", three)])
    assert (
        pair.b.consume([_consume(pair, "b1", serial=serial)])[0].outcome
        is ConsumeOutcome.SERIAL_USED
    )
    # Not this province's lock, or no lock at all.
    assert pair.b.consume([_consume(pair, "a2")])[0].outcome is ConsumeOutcome.NOT_LOCKED
    assert pair.a.consume([_consume(pair, "nolock")])[0].outcome is ConsumeOutcome.NOT_LOCKED


def test_one_imei_twice_in_a_batch(pair: Pair) -> None:
    one, two = _person(), _person()
    pair.a.lock(
        [_lock(pair, "a1", one, category="phone"), _lock(pair, "a2", two, category="phone")]
    )
    imei = "35" + str(secrets.randbelow(10**13)).zfill(13)
    results = pair.a.consume(
        [
            _consume(pair, "a1", imei=imei, category="phone"),
            _consume(pair, "a2", imei=imei[:14] + "0", category="phone"),  # another check digit
        ]
    )
    assert [r.outcome for r in results] == [ConsumeOutcome.CONSUMED, ConsumeOutcome.SERIAL_USED]


def test_events_apply_once_and_in_each_vouchers_order(pair: Pair) -> None:
    person = _person()
    lock_id = pair.id("a1")
    pair.a.lock([_lock(pair, "a1", person)])
    issued = _event(pair, "e1", "voucher.issued", {"lock_id": lock_id, "category": FRIDGE}, "v1", 1)
    product = {
        "category": FRIDGE,
        "serial": pair.id("SN1"),
        "invoice_no": "I-1",
        "price_fen": 500_000,
        "brand": "海尔",
    }
    redeemed = _event(
        pair,
        "e2",
        "redemption.completed",
        {"lock_id": lock_id, "discount_fen": 75_000, "product": product},
        "v1",
        2,
    )
    refunded = _event(
        pair, "e3", "redemption.refunded", {"lock_id": lock_id, "voucher_state": "issued"}, "v1", 3
    )
    # Reordered: the refund and the redemption arrive before the issue.
    early = pair.a.deliver([refunded, redeemed])
    assert [r.outcome for r in early] == [EventOutcome.WAITING, EventOutcome.WAITING]
    # The gap is filled: all three apply, in order.
    assert pair.a.deliver([issued])[0].outcome is EventOutcome.APPLIED
    # Duplicated deliveries change nothing.
    again = pair.a.deliver([issued, redeemed, refunded])
    assert [r.outcome for r in again] == [EventOutcome.DUPLICATE] * 3
    # After the refund the voucher is usable again and its serial free: the same
    # fridge may be bought again, by this person, once.
    [consumed] = pair.a.consume([_consume(pair, "a1", serial=pair.id("SN1"))])
    assert consumed.outcome is ConsumeOutcome.CONSUMED
    [elsewhere] = pair.b.lock([_lock(pair, "b1", person)])
    assert elsewhere.outcome is LockOutcome.USED_ELSEWHERE


def test_a_void_refund_gives_the_qualification_back(pair: Pair) -> None:
    person = _person()
    lock_id = pair.id("a1")
    pair.a.lock([_lock(pair, "a1", person)])
    pair.a.consume([_consume(pair, "a1")])
    events = [
        _event(pair, "e1", "voucher.issued", {"lock_id": lock_id}, "v1", 1),
        _event(
            pair,
            "e2",
            "redemption.refunded",
            {"lock_id": lock_id, "voucher_state": "void"},
            "v1",
            2,
        ),
    ]
    assert [r.outcome for r in pair.a.deliver(events)] == [EventOutcome.APPLIED] * 2
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.LOCKED


def test_an_expired_voucher_gives_the_qualification_back(pair: Pair) -> None:
    person = _person()
    lock_id = pair.id("a1")
    pair.a.lock([_lock(pair, "a1", person)])
    events = [
        _event(pair, "e1", "voucher.issued", {"lock_id": lock_id}, "v1", 1),
        _event(pair, "e2", "voucher.expired", {}, "v1", 2),  # found by its voucher
    ]
    assert [r.outcome for r in pair.a.deliver(events)] == [EventOutcome.APPLIED] * 2
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.LOCKED


def test_releasing_a_lock_central_never_took_is_no_error(pair: Pair) -> None:
    """The province recorded a lock, then its lock call never reached central; when it
    gives the lock back, central has nothing to release and says so without a
    rejection (which would be a dead letter for an operator). Another province's
    lock is still not this one's to name."""

    def released(name: str, lock: str) -> SyncEvent:
        payload = {"lock_id": pair.id(lock), "reason": "abandoned"}
        return SyncEvent(pair.id(name), "qualification.released", pair.now(), payload)

    never = released("e1", "gone")
    assert pair.a.deliver([never])[0].outcome is EventOutcome.APPLIED
    assert pair.a.deliver([never])[0].outcome is EventOutcome.DUPLICATE
    pair.b.lock([_lock(pair, "b1", _person())])
    theirs = released("e2", "b1")
    [answer] = pair.a.deliver([theirs])
    assert (answer.outcome, answer.reason) == (EventOutcome.REJECTED, "unknown_lock")


def test_events_of_consumption_vouchers_are_recorded_and_counted(pair: Pair) -> None:
    before = pair.a.day(pair.today()).categories.get("consumption", {}).get("subsidy", (0, 0))
    event = _event(
        pair,
        "e1",
        "redemption.completed",
        {"discount_fen": 2_000, "order_amount_fen": 10_000},
        "cv1",
        1,
    )
    assert pair.a.deliver([event])[0].outcome is EventOutcome.APPLIED
    day = pair.a.day(pair.today())
    assert day.categories["consumption"]["subsidy"] == (before[0] + 1, before[1] + 2_000)
    assert day.vouchers[pair.id("cv1")] == ("consumption", "consumed", 2_000)


def test_the_days_record(pair: Pair) -> None:
    person = _person()
    pair.a.lock([_lock(pair, "a1", person, category="washing_machine")])
    pair.a.deliver([_event(pair, "e1", "voucher.issued", {"lock_id": pair.id("a1")}, "v-a1", 1)])
    pair.a.consume([_consume(pair, "a1", category="washing_machine")])
    day = pair.a.day(pair.today())
    assert day.vouchers[pair.id("v-a1")] == ("washing_machine", "consumed", 45_000)
    facts = day.categories["washing_machine"]
    assert facts["locked"][0] >= 1
    assert facts["subsidy"][1] >= 45_000
    other = pair.b.day(pair.today())
    assert pair.id("v-a1") not in other.vouchers


def test_bad_input_is_refused_with_its_code_and_changes_nothing(pair: Pair) -> None:
    person = _person()
    good = _lock(pair, "a1", person)
    assert (
        code_of(lambda: pair.a.lock([good, LockRequest(pair.id("a2"), "not-hex", FRIDGE, 1, 60)]))
        == "central_invalid_pseudonym"
    )
    assert (
        code_of(lambda: pair.a.lock([good, _lock(pair, "a3", person, category="Fridge!")]))
        == "central_invalid_category"
    )
    assert (
        code_of(lambda: pair.a.lock([good, _lock(pair, "a4", person, items_max=0)]))
        == "central_invalid_lock"
    )
    assert code_of(lambda: pair.a.lock([good, good])) == "central_duplicate_item"
    # Nothing was locked by the refused batches: the other province gets the slot.
    [other] = pair.b.lock([_lock(pair, "b1", person)])
    assert other.outcome is LockOutcome.LOCKED
    # A lock id reused for someone else.
    assert (
        code_of(lambda: pair.b.lock([_lock(pair, "b1", _person())])) == "central_lock_id_mismatch"
    )
    # Products: no serial nor IMEI, an absurd price, a subsidy above the price, a
    # category that is not the lock's.
    base = _consume(pair, "b1")
    for changes, code in (
        ({"serial": None, "imei": None}, "central_invalid_serial"),
        ({"imei": "12"}, "central_invalid_serial"),
        ({"price_fen": -1}, "central_invalid_amount"),
        ({"price_fen": 10**12}, "central_invalid_amount"),
        ({"subsidy_fen": 400_000}, "central_invalid_amount"),
        ({"invoice_no": ""}, "central_invalid_product"),
        ({"category": "phone"}, "central_category_mismatch"),
    ):
        request = ConsumeRequest(**{**_fields(base), **changes})
        assert code_of(functools.partial(pair.b.consume, [request])) == code, changes
    # None of them consumed the lock.
    assert pair.b.consume([base])[0].outcome is ConsumeOutcome.CONSUMED
    assert code_of(lambda: pair.a.release([(pair.id("x"), "")])) == "central_invalid_reason"
    bad_seq = SyncEvent(pair.id("e9"), "voucher.issued", datetime.now(UTC), {}, None, 3)
    assert code_of(lambda: pair.a.deliver([bad_seq])) == "central_invalid_event"


def test_batches_are_bounded(pair: Pair) -> None:
    if pair.kind != "memory":
        return  # the HTTP adapter splits a long call into batches itself
    person = _person()
    requests = [_lock(pair, f"n{n}", person) for n in range(BATCH_MAX + 1)]
    assert code_of(lambda: pair.a.lock(requests)) == "central_batch_too_large"


def _fields(request: ConsumeRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in ConsumeRequest.__slots__}
