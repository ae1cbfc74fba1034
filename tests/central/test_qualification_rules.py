"""The pure rules of a trade-in qualification at central (``domain/qualification.py``)."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from lequan.domain import qualification as q
from lequan.domain.errors import InvalidInput
from lequan.domain.qualification import Action, Order, SlotState, Step

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_every_state_and_action_pair_has_one_rule() -> None:
    assert set(q.TRANSITIONS) == set(itertools.product(SlotState, Action))


def test_a_move_changes_the_state_and_the_rest_keep_it() -> None:
    for (state, _action), (how, after) in q.TRANSITIONS.items():
        if how in (Step.SAME, Step.REFUSE):
            assert after is state
        else:
            assert after is not state


@pytest.mark.parametrize(
    ("state", "action", "expected"),
    [
        (SlotState.HELD, Action.ISSUE, (Step.MOVE, SlotState.LOCKED)),
        (SlotState.LOCKED, Action.CONSUME, (Step.MOVE, SlotState.CONSUMED)),
        (SlotState.CONSUMED, Action.RESTORE, (Step.MOVE, SlotState.LOCKED)),
        (SlotState.CONSUMED, Action.RELEASE, (Step.MOVE, SlotState.RELEASED)),
        (SlotState.CONSUMED, Action.REVOKE, (Step.SAME, SlotState.CONSUMED)),
        (SlotState.EXPIRED, Action.ISSUE, (Step.RETAKE, SlotState.LOCKED)),
        (SlotState.RELEASED, Action.CONSUME, (Step.RETAKE, SlotState.CONSUMED)),
        (SlotState.REVOKED, Action.ISSUE, (Step.REFUSE, SlotState.REVOKED)),
        (SlotState.REVOKED, Action.CONSUME, (Step.REFUSE, SlotState.REVOKED)),
        (SlotState.RELEASED, Action.RESTORE, (Step.REFUSE, SlotState.RELEASED)),
    ],
)
def test_the_rules_that_matter(
    state: SlotState, action: Action, expected: tuple[Step, SlotState]
) -> None:
    assert q.step(state, action, hold_passed=False) == expected


def test_a_hold_past_its_time_is_read_as_expired() -> None:
    assert q.step(SlotState.HELD, Action.ISSUE, hold_passed=True) == (Step.RETAKE, SlotState.LOCKED)
    assert q.step(SlotState.HELD, Action.EXPIRE, hold_passed=False) == (
        Step.MOVE,
        SlotState.EXPIRED,
    )


def test_live_slots() -> None:
    later = NOW + timedelta(seconds=1)
    assert q.is_live(SlotState.HELD, later, NOW)
    assert not q.is_live(SlotState.HELD, NOW, NOW)  # a hold ends at its expiry, exactly
    assert q.is_live(SlotState.LOCKED, None, NOW)
    assert q.is_live(SlotState.CONSUMED, None, NOW)
    for state in (SlotState.RELEASED, SlotState.EXPIRED, SlotState.REVOKED):
        assert not q.is_live(state, None, NOW)


def test_lock_refusals() -> None:
    def refusal(holders: list[str], items_max: int = 1, *, revoked: bool = False) -> str | None:
        return q.lock_refusal(
            live_provinces=holders, province="p1", items_max=items_max, revoked=revoked
        )

    assert refusal([]) is None
    assert refusal(["p1"]) == "limit_reached"
    assert refusal(["p2"]) == "used_elsewhere"
    assert refusal(["p1", "p1"], 3) is None
    assert refusal(["p1", "p1", "p1"], 3) == "limit_reached"
    assert refusal(["p1", "p2", "p1"], 3) == "used_elsewhere"
    assert refusal([], revoked=True) == "revoked"


def test_the_order_of_a_vouchers_events() -> None:
    assert q.order_of(None, 5) is Order.APPLY
    assert q.order_of(1, 0) is Order.APPLY
    assert q.order_of(2, 0) is Order.WAIT
    assert q.order_of(3, 2) is Order.APPLY
    assert q.order_of(2, 2) is Order.STALE
    assert q.order_of(1, 2) is Order.STALE


@pytest.mark.parametrize(
    ("topic", "payload", "action", "frees"),
    [
        ("voucher.issued", {}, Action.ISSUE, False),
        ("redemption.completed", {}, Action.CONSUME, False),
        ("redemption.refunded", {"voucher_state": "issued"}, Action.RESTORE, True),
        ("redemption.refunded", {"voucher_state": "void"}, Action.RELEASE, True),
        ("redemption.reversed", {"voucher_state": "issued"}, Action.RESTORE, True),
        ("redemption.reversed", {}, Action.RELEASE, True),
        ("voucher.expired", {}, Action.RELEASE, False),
        ("qualification.released", {}, Action.RELEASE, False),
        ("campaign.started", {}, None, False),
    ],
)
def test_what_each_topic_does(
    topic: str, payload: dict[str, str], action: Action | None, frees: bool
) -> None:
    effect = q.event_action(topic, payload)
    assert (effect.action, effect.frees_serial) == (action, frees)


def test_serial_numbers_are_keyed_without_their_separators_and_case() -> None:
    assert q.normalize_serial(" sn-0012 ab ") == "SN0012AB"
    assert q.normalize_serial("ＳＮ１２３") == "SN123"  # full-width, as typed on a phone
    assert q.normalize_serial("a/b.c_d") == "A/B.C_D"
    for bad in ("", "  ", "-", "#123", "x" * 65, "序列号"):
        with pytest.raises(InvalidInput) as caught:
            q.normalize_serial(bad)
        assert caught.value.code == "central_invalid_serial"


def test_an_imei_is_keyed_by_its_first_fourteen_digits() -> None:
    assert q.normalize_imei("490154203237518") == "49015420323751"
    assert q.normalize_imei("49-015420-323751-8") == "49015420323751"
    assert q.normalize_imei("4901542032375101") == "49015420323751"  # IMEISV
    for bad in (
        "4901542032375",
        "49015420323751801",
        "49015420323751x",
        "４９０１５４２０３２３７５１８"[:3],
    ):
        with pytest.raises(InvalidInput):
            q.normalize_imei(bad)


def test_a_product_needs_a_serial_or_an_imei() -> None:
    with pytest.raises(InvalidInput) as caught:
        q.serial_keys(None, None)
    assert caught.value.code == "central_invalid_serial"
    assert q.serial_keys("s1", "490154203237518") == [
        q.SerialKey("serial", "S1"),
        q.SerialKey("imei", "49015420323751"),
    ]


def test_the_day_of_a_fact_is_beijings() -> None:
    assert q.day_of(datetime(2025, 3, 1, 15, 59, 59, tzinfo=UTC)) == date(2025, 3, 1)
    assert q.day_of(datetime(2025, 3, 1, 16, 0, tzinfo=UTC)) == date(2025, 3, 2)
    start, end = q.day_bounds(date(2025, 3, 2))
    assert start == datetime(2025, 3, 1, 16, 0, tzinfo=UTC)
    assert end - start == timedelta(days=1)
    assert q.day_of(start) == date(2025, 3, 2)
    assert q.day_of(end - timedelta(microseconds=1)) == date(2025, 3, 2)
