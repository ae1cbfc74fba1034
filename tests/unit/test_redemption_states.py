"""The redemption lifecycle, pair by pair: what each (status, action) does or why
it is refused. ``EXPECTED`` is a second statement of the rules written out by
hand; the module's table must agree with it on all 30 pairs."""

from __future__ import annotations

import itertools

import pytest

from lequan.domain.errors import Conflict
from lequan.domain.redemption_states import (
    TRANSITIONS,
    RedemptionAction,
    RedemptionStatus,
    next_status,
    opening_status,
)

S, A = RedemptionStatus, RedemptionAction
_STATE = "redemption_state"

EXPECTED: dict[RedemptionStatus, dict[RedemptionAction, RedemptionStatus | str]] = {
    S.LOCKED: {
        A.CONFIRM: S.REDEEMED,
        A.VOID: S.VOIDED,
        A.LOCK_TIMEOUT: S.LOCK_EXPIRED,
        A.REVERSE: _STATE,
        A.REFUND: _STATE,
    },
    S.REDEEMED: {
        A.CONFIRM: _STATE,
        A.VOID: _STATE,
        A.LOCK_TIMEOUT: _STATE,
        A.REVERSE: S.REVERSED,
        A.REFUND: S.REFUNDED,
    },
    # Once a lock timed out the acquirer must redeem again: every action says so.
    S.LOCK_EXPIRED: dict.fromkeys(A, "lock_expired"),
    S.VOIDED: dict.fromkeys(A, _STATE),
    S.REVERSED: dict.fromkeys(A, _STATE),
    S.REFUNDED: dict.fromkeys(A, _STATE),
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(S, A)))
def test_every_pair_does_what_the_rules_say(
    status: RedemptionStatus, action: RedemptionAction
) -> None:
    expected = EXPECTED[status][action]
    if isinstance(expected, RedemptionStatus):
        assert next_status(status, action) is expected
        return
    with pytest.raises(Conflict) as refused:
        next_status(status, action)
    assert refused.value.code == expected
    assert status.value in refused.value.message  # the caller hears where it stands


def test_the_table_holds_exactly_the_allowed_pairs() -> None:
    allowed = {
        (status, action)
        for status, actions in EXPECTED.items()
        for action, outcome in actions.items()
        if isinstance(outcome, RedemptionStatus)
    }
    assert set(TRANSITIONS) == allowed


def test_a_redemption_opens_locked_for_two_phase_and_redeemed_for_one_step() -> None:
    assert opening_status(two_phase=True) is S.LOCKED
    assert opening_status(two_phase=False) is S.REDEEMED


def test_only_a_lock_or_a_redemption_can_move() -> None:
    """Voided, reversed, refunded and expired redemptions are final."""
    movable = {status for status, _ in TRANSITIONS}
    assert movable == {S.LOCKED, S.REDEEMED}
