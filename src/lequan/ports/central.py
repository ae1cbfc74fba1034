"""The central (national) platform, as a province sees it.

Central is a separate service with its own store (``lequan.central``): the
national registry of trade-in qualifications, the national registry of
subsidised serial numbers and IMEIs, and the sink of every redemption
detail. A province talks to it through this port; the HTTP adapter
(``adapters/central_http.py``) speaks the signed API of docs/central.md and
an in-process fake serves unit tests.

Who a person is, at central, is a **national pseudonym**: an oblivious PRF
(RFC 9497, ristretto255) of the ID number, evaluated by central on a blinded
input, so central never sees the ID number and the province cannot compute
pseudonyms without central. ``pseudonyms`` hides the blinding.

A qualification is one (pseudonym, category) with ``items_max`` slots
nationwide (one refrigerator; up to three air conditioners). Each slot is
taken by a *lock*, named by the province's ``lock_id``::

    held ──voucher.issued──▶ locked ──consume / redeemed──▶ consumed
     │  (hold_s passes)        │                              │ refunded (voucher back)
     ▼                         │ expired / revoked / released ▼
    expired                    ▼                             locked
                            released                         (refunded, voucher void ▶ released)

Every call is idempotent: the same ``lock_id`` locks once, the same
``event_id`` applies once. Every call takes a batch. A call central cannot
answer raises ``CentralUnavailable`` and may or may not have happened:
the caller repeats it with the same ids.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

__all__ = [
    "CentralDay",
    "CentralPlatform",
    "CentralUnavailable",
    "ConsumeOutcome",
    "ConsumeRequest",
    "ConsumeResult",
    "EventOutcome",
    "EventResult",
    "LockOutcome",
    "LockRequest",
    "LockResult",
    "SyncEvent",
]

# The most items one call carries, in any batch form.
BATCH_MAX = 1000


class CentralUnavailable(Exception):
    """Central did not answer (refused, timed out, 5xx): the call may or may not have
    happened; repeat it with the same ids."""


class LockOutcome(enum.StrEnum):
    LOCKED = "locked"  # a slot is held for this lock_id (or already was)
    USED_ELSEWHERE = "used_elsewhere"  # another province holds the slots
    LIMIT_REACHED = "limit_reached"  # the person used every slot of the category
    REVOKED = "revoked"  # an operator revoked the qualification (fraud)


class ConsumeOutcome(enum.StrEnum):
    CONSUMED = "consumed"  # the slot is consumed by this redemption (or already was)
    SERIAL_USED = "serial_used"  # the serial or IMEI was subsidised before, anywhere
    NOT_LOCKED = "not_locked"  # no live lock by that id (expired, released, revoked)


class EventOutcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this event_id was received before: nothing changed
    WAITING = "waiting"  # kept; applies when the voucher's earlier events arrive
    REJECTED = "rejected"  # can never apply (see reason): for the dead-letter list


@dataclass(frozen=True, slots=True)
class LockRequest:
    lock_id: str  # chosen by the province, unique nationwide (province code inside)
    pseudonym: str
    category: str
    items_max: int  # the category's slots per person nationwide
    hold_s: int  # how long the slot waits for voucher.issued before it expires


@dataclass(frozen=True, slots=True)
class LockResult:
    lock_id: str
    outcome: LockOutcome
    expires_at: datetime | None = None  # the hold's end, when LOCKED and not yet issued


@dataclass(frozen=True, slots=True)
class ConsumeRequest:
    lock_id: str
    voucher_id: str
    redemption_id: str
    category: str
    serial: str | None  # at least one of serial and imei
    imei: str | None
    invoice_no: str
    price_fen: int
    subsidy_fen: int


@dataclass(frozen=True, slots=True)
class ConsumeResult:
    lock_id: str
    outcome: ConsumeOutcome


@dataclass(frozen=True, slots=True)
class SyncEvent:
    """One outbox row on the wire. ``seq`` orders the events of one voucher (1, 2, ...)."""

    event_id: str
    topic: str
    at: datetime
    payload: Mapping[str, Any]
    voucher_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    outcome: EventOutcome
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CentralDay:
    """What central recorded of one province on one day (for reconciliation).

    ``categories[category][fact] = (count, sum_fen)`` for the facts ``locked``,
    ``consumed``, ``released`` and ``subsidy`` (sum of subsidy_fen consumed);
    ``vouchers[voucher_id] = (category, state, subsidy_fen)``.
    """

    day: date
    province: str
    categories: Mapping[str, Mapping[str, tuple[int, int]]] = field(default_factory=dict)
    vouchers: Mapping[str, tuple[str, str, int]] = field(default_factory=dict)


class CentralPlatform(Protocol):
    """What a province asks of central. Every method may raise ``CentralUnavailable``."""

    def pseudonyms(self, id_numbers: Sequence[str]) -> list[str]:
        """The national pseudonym of each ID number, in order (OPRF; central sees none)."""
        ...

    def lock(self, requests: Sequence[LockRequest]) -> list[LockResult]:
        """Verify and lock a slot of each (pseudonym, category); one result per request."""
        ...

    def consume(self, requests: Sequence[ConsumeRequest]) -> list[ConsumeResult]:
        """Consume each lock for a redemption, checking the national serial registry."""
        ...

    def release(self, lock_ids: Sequence[tuple[str, str]]) -> None:
        """Give each (lock_id, reason) back: a held or locked slot becomes free again."""
        ...

    def deliver(self, events: Sequence[SyncEvent]) -> list[EventResult]:
        """Deliver outbox events; one result per event, in order."""
        ...

    def day(self, day: date) -> CentralDay:
        """What central recorded of this province on ``day`` (UTC+8 calendar day)."""
        ...

    def ready(self) -> bool:
        """Whether central answers now (one quick question; never raises): how a relay
        that backed off learns that central is back."""
        ...
