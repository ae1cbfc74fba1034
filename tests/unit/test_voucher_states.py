"""The voucher state machine, pair by pair: what each (state, action) does or why it is refused.

``EXPECTED`` below is a second, independent statement of the rules written out by
hand; the module's ``TRANSITIONS`` table and refusal codes must agree with it on
all 77 pairs, so a change to either shows up here as a named pair.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lequan.domain.errors import Conflict
from lequan.domain.vouchers import (
    TERMINAL_STATES,
    TRANSITIONS,
    Action,
    VoucherState,
    check_usable,
    next_state,
)

S, A = VoucherState, Action

# Every action, per state: the state it leads to, or the refusal code the caller gets.
EXPECTED: dict[VoucherState, dict[Action, VoucherState | str]] = {
    S.ISSUED: {
        A.LOCK: S.LOCKED,
        A.CONFIRM: "voucher_not_locked",
        A.RELEASE: "voucher_not_locked",
        A.LOCK_TIMEOUT: "voucher_not_locked",
        A.REDEEM: S.REDEEMED,
        A.REVERSE: "voucher_not_redeemed",
        A.REFUND: "voucher_not_redeemed",
        A.RESTORE: "invalid_transition",
        A.VOID: "invalid_transition",
        A.EXPIRE: S.EXPIRED,
        A.REVOKE: S.REVOKED,
    },
    S.LOCKED: {
        A.LOCK: "voucher_locked",
        A.CONFIRM: S.REDEEMED,
        A.RELEASE: S.ISSUED,
        A.LOCK_TIMEOUT: S.ISSUED,
        A.REDEEM: "voucher_locked",
        A.REVERSE: "voucher_locked",
        A.REFUND: "voucher_locked",
        A.RESTORE: "voucher_locked",
        A.VOID: "voucher_locked",
        A.EXPIRE: "voucher_locked",
        A.REVOKE: "voucher_locked",
    },
    S.REDEEMED: {
        A.LOCK: "already_redeemed",
        A.CONFIRM: "already_redeemed",
        A.RELEASE: "already_redeemed",
        A.LOCK_TIMEOUT: "already_redeemed",
        A.REDEEM: "already_redeemed",
        A.REVERSE: S.ISSUED,
        A.REFUND: S.REFUNDED,
        A.RESTORE: "already_redeemed",
        A.VOID: "already_redeemed",
        A.EXPIRE: "already_redeemed",
        A.REVOKE: "already_redeemed",
    },
    S.REFUNDED: {
        A.LOCK: "invalid_transition",
        A.CONFIRM: "invalid_transition",
        A.RELEASE: "invalid_transition",
        A.LOCK_TIMEOUT: "invalid_transition",
        A.REDEEM: "invalid_transition",
        A.REVERSE: "invalid_transition",
        A.REFUND: "invalid_transition",
        A.RESTORE: S.ISSUED,
        A.VOID: S.VOID,
        A.EXPIRE: "invalid_transition",
        A.REVOKE: "invalid_transition",
    },
    S.EXPIRED: dict.fromkeys(A, "voucher_expired"),
    S.REVOKED: dict.fromkeys(A, "voucher_revoked"),
    S.VOID: dict.fromkeys(A, "voucher_void"),
}

ALL_PAIRS = list(itertools.product(VoucherState, Action))
ALLOWED_PAIRS = [(s, a) for s, a in ALL_PAIRS if isinstance(EXPECTED[s][a], VoucherState)]
REFUSED_PAIRS = [(s, a) for s, a in ALL_PAIRS if not isinstance(EXPECTED[s][a], VoucherState)]


def _pair_id(pair: tuple[VoucherState, Action]) -> str:
    return f"{pair[0].value}-{pair[1].value}"


# The expected table itself


def test_expected_table_states_every_pair_once() -> None:
    assert set(EXPECTED) == set(VoucherState)
    for state, row in EXPECTED.items():
        assert set(row) == set(Action), state
    assert len(ALLOWED_PAIRS) + len(REFUSED_PAIRS) == len(VoucherState) * len(Action) == 77


def test_module_table_allows_exactly_the_expected_pairs() -> None:
    assert {pair: EXPECTED[pair[0]][pair[1]] for pair in ALLOWED_PAIRS} == TRANSITIONS


# Every pair


@pytest.mark.parametrize(("state", "action"), ALL_PAIRS, ids=[_pair_id(p) for p in ALL_PAIRS])
def test_every_state_action_pair_moves_or_refuses_with_its_code(
    state: VoucherState, action: Action
) -> None:
    expected = EXPECTED[state][action]
    if isinstance(expected, VoucherState):
        assert next_state(state, action) is expected
        return
    with pytest.raises(Conflict) as refused:
        next_state(state, action)
    assert refused.value.code == expected
    assert refused.value.kind == "conflict"
    assert refused.value.message  # the caller is told why in words too


def test_second_redemption_is_refused_as_already_redeemed() -> None:
    redeemed = next_state(S.ISSUED, A.REDEEM)
    with pytest.raises(Conflict) as refused:
        next_state(redeemed, A.REDEEM)
    assert refused.value.code == "already_redeemed"


def test_confirming_twice_is_refused_as_already_redeemed() -> None:
    redeemed = next_state(next_state(S.ISSUED, A.LOCK), A.CONFIRM)
    with pytest.raises(Conflict) as refused:
        next_state(redeemed, A.CONFIRM)
    assert refused.value.code == "already_redeemed"


def test_locked_voucher_cannot_be_spent_by_a_second_payment() -> None:
    locked = next_state(S.ISSUED, A.LOCK)
    for action in (A.LOCK, A.REDEEM):
        with pytest.raises(Conflict) as refused:
            next_state(locked, action)
        assert refused.value.code == "voucher_locked"


def test_refund_before_redemption_is_refused_as_not_redeemed() -> None:
    with pytest.raises(Conflict) as refused:
        next_state(S.ISSUED, A.REFUND)
    assert refused.value.code == "voucher_not_redeemed"


def test_redeem_reverse_redeem_is_allowed() -> None:
    state = S.ISSUED
    for action in (A.REDEEM, A.REVERSE, A.REDEEM):
        state = next_state(state, action)
    assert state is S.REDEEMED


def test_refund_then_restore_gives_a_usable_voucher_and_void_ends_it() -> None:
    refunded = next_state(next_state(S.ISSUED, A.REDEEM), A.REFUND)
    assert next_state(refunded, A.RESTORE) is S.ISSUED
    assert next_state(refunded, A.VOID) is S.VOID


# Terminal states


def test_terminal_states_are_the_states_with_no_way_out() -> None:
    without_exit = {s for s in VoucherState if not any((s, a) in TRANSITIONS for a in Action)}
    assert without_exit == TERMINAL_STATES == {S.EXPIRED, S.REVOKED, S.VOID}


@pytest.mark.parametrize("state", sorted(TERMINAL_STATES))
@pytest.mark.parametrize("action", list(Action))
def test_terminal_state_accepts_no_action(state: VoucherState, action: Action) -> None:
    with pytest.raises(Conflict) as refused:
        next_state(state, action)
    assert refused.value.code == f"voucher_{state.value}"


def test_every_state_is_reachable_from_issued() -> None:
    seen = {S.ISSUED}
    frontier = [S.ISSUED]
    while frontier:
        state = frontier.pop()
        for action in Action:
            target = TRANSITIONS.get((state, action))
            if target is not None and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(VoucherState)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list(Action)), max_size=40))
def test_random_action_sequences_stay_in_the_state_space(actions: list[Action]) -> None:
    """Refused actions change nothing; terminal stays terminal; one redemption per undo."""
    state = S.ISSUED
    redemptions = 0
    undos = 0  # reverse or refund: what lets a voucher be redeemed again
    for action in actions:
        before = state
        expected = EXPECTED[before][action]
        if not isinstance(expected, VoucherState):
            with pytest.raises(Conflict) as refused:
                state = next_state(state, action)
            assert refused.value.code == expected
            assert state is before  # a refused action changes nothing
            continue
        state = next_state(state, action)
        assert state in VoucherState
        assert before not in TERMINAL_STATES, (before, action)
        if state is S.REDEEMED:
            redemptions += 1
            assert redemptions <= undos + 1, (redemptions, undos)
        if action in (A.REVERSE, A.REFUND):
            undos += 1


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_walk_of_allowed_actions_redeems_at_most_once_per_undo(data: st.DataObject) -> None:
    """Walk only allowed moves, so long lives (lock, release, redeem, refund, restore) happen."""
    state = S.ISSUED
    redeemed_without_undo = False
    for _ in range(60):
        allowed = [a for a in Action if (state, a) in TRANSITIONS]
        if not allowed:
            assert state in TERMINAL_STATES
            break
        action = data.draw(st.sampled_from(allowed))
        state = next_state(state, action)
        if state is S.REDEEMED:
            assert not redeemed_without_undo, "redeemed twice with no reverse or refund between"
            redeemed_without_undo = True
        if action in (A.REVERSE, A.REFUND):
            redeemed_without_undo = False
        assert state in VoucherState


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(sorted(TERMINAL_STATES)),
    st.lists(st.sampled_from(list(Action)), min_size=1, max_size=20),
)
def test_terminal_state_stays_terminal_under_any_actions(
    state: VoucherState, actions: list[Action]
) -> None:
    for action in actions:
        with pytest.raises(Conflict):
            next_state(state, action)


# Validity window: valid_from inclusive, valid_until exclusive

FROM = datetime(2024, 11, 30, 2, 0, tzinfo=UTC)
UNTIL = FROM + timedelta(days=10)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize("now", [FROM, FROM + TICK, UNTIL - TICK], ids=["from", "after", "last"])
def test_voucher_is_usable_from_valid_from_until_just_before_valid_until(now: datetime) -> None:
    check_usable(valid_from=FROM, valid_until=UNTIL, now=now)


def test_voucher_is_not_usable_a_microsecond_before_valid_from() -> None:
    with pytest.raises(Conflict) as refused:
        check_usable(valid_from=FROM, valid_until=UNTIL, now=FROM - TICK)
    assert refused.value.code == "voucher_not_yet_valid"


@pytest.mark.parametrize("now", [UNTIL, UNTIL + TICK, UNTIL + timedelta(days=365)])
def test_voucher_is_expired_from_valid_until_on(now: datetime) -> None:
    with pytest.raises(Conflict) as refused:
        check_usable(valid_from=FROM, valid_until=UNTIL, now=now)
    assert refused.value.code == "voucher_expired"


def test_validity_compares_instants_not_wall_clocks() -> None:
    shanghai = timezone(timedelta(hours=8))
    until_in_shanghai = UNTIL.astimezone(shanghai)
    with pytest.raises(Conflict) as refused:
        check_usable(valid_from=FROM, valid_until=until_in_shanghai, now=UNTIL)
    assert refused.value.code == "voucher_expired"
    check_usable(valid_from=FROM, valid_until=until_in_shanghai, now=UNTIL - TICK)
