"""The voucher state machine: every transition a pure function that returns
the new state or raises a Conflict with a stable code.

    issued ──lock──▶ locked ──confirm──▶ redeemed ──refund──▶ refunded
      │  ▲             │ release / lock_timeout   │  reverse      │ restore → issued
      │  └─────────────┘                          └──▶ issued     └ void    → void
      ├──redeem──▶ redeemed
      ├──expire──▶ expired
      └──revoke──▶ revoked

``TRANSITIONS`` is the whole table; any (state, action) pair not in it is
refused, with the code that tells the caller why (``already_redeemed`` for a
second redemption, ``voucher_expired`` for a late one, and so on).
"""

from __future__ import annotations

import enum
from datetime import datetime

from lequan.domain.errors import Conflict

__all__ = [
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Action",
    "VoucherState",
    "check_usable",
    "next_state",
]


class VoucherState(enum.StrEnum):
    ISSUED = "issued"
    LOCKED = "locked"
    REDEEMED = "redeemed"
    REFUNDED = "refunded"
    EXPIRED = "expired"
    REVOKED = "revoked"
    VOID = "void"


class Action(enum.StrEnum):
    LOCK = "lock"
    CONFIRM = "confirm"
    RELEASE = "release"
    LOCK_TIMEOUT = "lock_timeout"
    REDEEM = "redeem"
    REVERSE = "reverse"
    REFUND = "refund"
    RESTORE = "restore"
    VOID = "void"
    EXPIRE = "expire"
    REVOKE = "revoke"


S, A = VoucherState, Action

TRANSITIONS: dict[tuple[VoucherState, Action], VoucherState] = {
    (S.ISSUED, A.LOCK): S.LOCKED,
    (S.ISSUED, A.REDEEM): S.REDEEMED,
    (S.ISSUED, A.EXPIRE): S.EXPIRED,
    (S.ISSUED, A.REVOKE): S.REVOKED,
    (S.LOCKED, A.CONFIRM): S.REDEEMED,
    (S.LOCKED, A.RELEASE): S.ISSUED,
    (S.LOCKED, A.LOCK_TIMEOUT): S.ISSUED,
    (S.REDEEMED, A.REVERSE): S.ISSUED,
    (S.REDEEMED, A.REFUND): S.REFUNDED,
    (S.REFUNDED, A.RESTORE): S.ISSUED,
    (S.REFUNDED, A.VOID): S.VOID,
}

TERMINAL_STATES = frozenset({S.EXPIRED, S.REVOKED, S.VOID})

# Why a voucher in a given state refuses an action, when the table has no entry.
_REFUSAL_BY_STATE: dict[VoucherState, tuple[str, str]] = {
    S.ISSUED: ("voucher_not_locked", "the voucher is not locked by a redemption"),
    S.LOCKED: ("voucher_locked", "the voucher is locked by a pending redemption"),
    S.REDEEMED: ("already_redeemed", "the voucher has already been redeemed"),
    S.REFUNDED: ("invalid_transition", "the voucher is being refunded"),
    S.EXPIRED: ("voucher_expired", "the voucher has expired"),
    S.REVOKED: ("voucher_revoked", "the voucher was revoked"),
    S.VOID: ("voucher_void", "the voucher is void"),
}


def next_state(state: VoucherState, action: Action) -> VoucherState:
    """The state after ``action``; raises Conflict when the table forbids it."""
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        pass
    if state is S.ISSUED and action in (A.REVERSE, A.REFUND):
        raise Conflict("voucher_not_redeemed", "the voucher has not been redeemed") from None
    if state is S.ISSUED and action in (A.RESTORE, A.VOID):
        raise Conflict("invalid_transition", "the voucher is not being refunded") from None
    code, message = _REFUSAL_BY_STATE[state]
    raise Conflict(code, f"{message}; cannot {action.value}")


def check_usable(*, valid_from: datetime, valid_until: datetime, now: datetime) -> None:
    """Refuse a voucher outside its validity window, whatever its stored state.

    The expiry job may lag; redemption re-checks validity itself so that a
    voucher is never spent a second past its window.
    """
    if now < valid_from:
        raise Conflict("voucher_not_yet_valid", "the voucher is not valid yet")
    if now >= valid_until:
        raise Conflict("voucher_expired", "the voucher has expired")
