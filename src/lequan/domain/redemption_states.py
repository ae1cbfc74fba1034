"""The redemption lifecycle: every transition a pure function that returns the
new status or raises a Conflict with a stable code, like the voucher's.

    locked ──confirm──▶ redeemed ──reverse──▶ reversed
      │                    └─────refund────▶ refunded
      ├──void──────────▶ voided
      └──lock_timeout──▶ lock_expired

A redemption opens ``locked`` (two-phase: the acquirer authorised a payment)
or ``redeemed`` (one step). ``TRANSITIONS`` is the whole table; any other
(status, action) pair is refused: ``lock_expired`` once a lock has timed
out (the acquirer must redeem again), ``redemption_state`` otherwise.
"""

from __future__ import annotations

import enum

from lequan.domain.errors import Conflict

__all__ = [
    "TRANSITIONS",
    "RedemptionAction",
    "RedemptionStatus",
    "next_status",
    "opening_status",
]


class RedemptionStatus(enum.StrEnum):
    LOCKED = "locked"
    REDEEMED = "redeemed"
    VOIDED = "voided"
    REVERSED = "reversed"
    REFUNDED = "refunded"
    LOCK_EXPIRED = "lock_expired"


class RedemptionAction(enum.StrEnum):
    CONFIRM = "confirm"
    VOID = "void"
    LOCK_TIMEOUT = "lock_timeout"
    REVERSE = "reverse"
    REFUND = "refund"


S, A = RedemptionStatus, RedemptionAction

TRANSITIONS: dict[tuple[RedemptionStatus, RedemptionAction], RedemptionStatus] = {
    (S.LOCKED, A.CONFIRM): S.REDEEMED,
    (S.LOCKED, A.VOID): S.VOIDED,
    (S.LOCKED, A.LOCK_TIMEOUT): S.LOCK_EXPIRED,
    (S.REDEEMED, A.REVERSE): S.REVERSED,
    (S.REDEEMED, A.REFUND): S.REFUNDED,
}


def opening_status(*, two_phase: bool) -> RedemptionStatus:
    """A new redemption's status: a lock awaiting capture, or redeemed at once."""
    return S.LOCKED if two_phase else S.REDEEMED


def next_status(status: RedemptionStatus, action: RedemptionAction) -> RedemptionStatus:
    """The status after ``action``; raises Conflict when the table forbids it."""
    try:
        return TRANSITIONS[(status, action)]
    except KeyError:
        pass
    code = "lock_expired" if status is S.LOCK_EXPIRED else "redemption_state"
    raise Conflict(code, f"the redemption is {status.value}")
