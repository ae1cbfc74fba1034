"""A trade-in qualification at central: its slots, what each event does to one, in
which order a voucher's events apply, and how serial numbers and IMEIs are keyed.

Pure: no clock (the caller passes ``now``), no store. Central's services
(``lequan.central.services``) and the in-process fake of the port
(``lequan.central.in_process``) both decide through these functions,
so the fake cannot drift from the real thing.

A qualification is one (pseudonym, category) with ``items_max`` slots
nationwide. A *lock* takes one slot and moves through ``TRANSITIONS``::

    held ──issue──▶ locked ──consume──▶ consumed
     │               │  ▲                 │
     │ expire        │  └────restore──────┤ (refund, voucher usable again)
     ▼               ▼                    ▼ release (refund, voucher void)
    expired      released / revoked    released

A lock is *live* (it occupies its slot) while it is locked or consumed, or
held with its hold not yet past. An expired or released lock is not live;
``issue`` and ``consume`` may re-take its slot (``RETAKE``) if one is free.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from lequan.domain.errors import InvalidInput

__all__ = [
    "CATEGORY_PATTERN",
    "ITEMS_MAX",
    "LIVE_STATES",
    "PSEUDONYM_PATTERN",
    "TRANSITIONS",
    "Action",
    "EventEffect",
    "Order",
    "SerialKey",
    "SlotState",
    "Step",
    "day_bounds",
    "day_of",
    "event_action",
    "is_live",
    "lock_refusal",
    "normalize_imei",
    "normalize_serial",
    "order_of",
    "serial_keys",
    "step",
]

# The most slots a category gives one person nationwide (air conditioners: three).
ITEMS_MAX = 100
# A national pseudonym: 64 lowercase hex characters (the first 32 bytes of the OPRF output).
PSEUDONYM_PATTERN = re.compile(r"[0-9a-f]{64}")
# A category code as campaigns name them: refrigerator, air_conditioner, phone, ...
CATEGORY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
SERIAL_CHARS_MAX = 64
_SERIAL_PATTERN = re.compile(r"[A-Z0-9][A-Z0-9./_-]{0,63}")
# Separators people and scanners put inside serial numbers and IMEIs.
_SEPARATORS = re.compile(r"[\s-]+")


class SlotState(enum.StrEnum):
    HELD = "held"
    LOCKED = "locked"
    CONSUMED = "consumed"
    RELEASED = "released"
    EXPIRED = "expired"
    REVOKED = "revoked"


LIVE_STATES = frozenset({SlotState.HELD, SlotState.LOCKED, SlotState.CONSUMED})


class Action(enum.StrEnum):
    ISSUE = "issue"  # voucher.issued: the province committed the voucher
    CONSUME = "consume"  # a consume call or redemption.completed
    RESTORE = "restore"  # refunded or reversed, the voucher usable again
    RELEASE = "release"  # a release call, voucher.expired, qualification.released, void refund
    EXPIRE = "expire"  # the hold passed without voucher.issued
    REVOKE = "revoke"  # an operator revoked the qualification (fraud)


class Step(enum.StrEnum):
    """What an action does to a lock in a state."""

    MOVE = "move"  # to the state in TRANSITIONS
    SAME = "same"  # already there: idempotent, nothing changes
    RETAKE = "retake"  # the slot was given up: take it again if one is free, then move
    REFUSE = "refuse"  # cannot: the caller's refusal (not locked, revoked)


_S, _A = SlotState, Action

# (state, action) -> (step, state after). Every pair is listed; tests walk them all.
TRANSITIONS: Mapping[tuple[SlotState, Action], tuple[Step, SlotState]] = {
    (_S.HELD, _A.ISSUE): (Step.MOVE, _S.LOCKED),
    (_S.HELD, _A.CONSUME): (Step.MOVE, _S.CONSUMED),
    (_S.HELD, _A.RESTORE): (Step.SAME, _S.HELD),
    (_S.HELD, _A.RELEASE): (Step.MOVE, _S.RELEASED),
    (_S.HELD, _A.EXPIRE): (Step.MOVE, _S.EXPIRED),
    (_S.HELD, _A.REVOKE): (Step.MOVE, _S.REVOKED),
    (_S.LOCKED, _A.ISSUE): (Step.SAME, _S.LOCKED),
    (_S.LOCKED, _A.CONSUME): (Step.MOVE, _S.CONSUMED),
    (_S.LOCKED, _A.RESTORE): (Step.SAME, _S.LOCKED),
    (_S.LOCKED, _A.RELEASE): (Step.MOVE, _S.RELEASED),
    (_S.LOCKED, _A.EXPIRE): (Step.SAME, _S.LOCKED),  # only holds expire
    (_S.LOCKED, _A.REVOKE): (Step.MOVE, _S.REVOKED),
    (_S.CONSUMED, _A.ISSUE): (Step.SAME, _S.CONSUMED),  # a late voucher.issued
    (_S.CONSUMED, _A.CONSUME): (Step.SAME, _S.CONSUMED),
    (_S.CONSUMED, _A.RESTORE): (Step.MOVE, _S.LOCKED),
    (_S.CONSUMED, _A.RELEASE): (Step.MOVE, _S.RELEASED),
    (_S.CONSUMED, _A.EXPIRE): (Step.SAME, _S.CONSUMED),
    # A redemption already made stands; revoking stops the slots not yet used.
    (_S.CONSUMED, _A.REVOKE): (Step.SAME, _S.CONSUMED),
    (_S.EXPIRED, _A.ISSUE): (Step.RETAKE, _S.LOCKED),
    (_S.EXPIRED, _A.CONSUME): (Step.RETAKE, _S.CONSUMED),
    (_S.EXPIRED, _A.RESTORE): (Step.REFUSE, _S.EXPIRED),
    (_S.EXPIRED, _A.RELEASE): (Step.SAME, _S.EXPIRED),
    (_S.EXPIRED, _A.EXPIRE): (Step.SAME, _S.EXPIRED),
    (_S.EXPIRED, _A.REVOKE): (Step.SAME, _S.EXPIRED),
    # A voucher issued or redeemed after its hold was released (a release raced the
    # province's commit): the slot is taken again if one is free.
    (_S.RELEASED, _A.ISSUE): (Step.RETAKE, _S.LOCKED),
    (_S.RELEASED, _A.CONSUME): (Step.RETAKE, _S.CONSUMED),
    (_S.RELEASED, _A.RESTORE): (Step.REFUSE, _S.RELEASED),
    (_S.RELEASED, _A.RELEASE): (Step.SAME, _S.RELEASED),
    (_S.RELEASED, _A.EXPIRE): (Step.SAME, _S.RELEASED),
    (_S.RELEASED, _A.REVOKE): (Step.SAME, _S.RELEASED),
    (_S.REVOKED, _A.ISSUE): (Step.REFUSE, _S.REVOKED),
    (_S.REVOKED, _A.CONSUME): (Step.REFUSE, _S.REVOKED),
    (_S.REVOKED, _A.RESTORE): (Step.REFUSE, _S.REVOKED),
    (_S.REVOKED, _A.RELEASE): (Step.SAME, _S.REVOKED),
    (_S.REVOKED, _A.EXPIRE): (Step.SAME, _S.REVOKED),
    (_S.REVOKED, _A.REVOKE): (Step.SAME, _S.REVOKED),
}


def step(state: SlotState, action: Action, *, hold_passed: bool) -> tuple[Step, SlotState]:
    """What ``action`` does to a lock in ``state``.

    A hold whose time has passed is expired whatever its row says yet (the
    sweep marks it later): it is read as ``expired`` here.
    """
    if state is SlotState.HELD and hold_passed:
        state = SlotState.EXPIRED
    return TRANSITIONS[(state, action)]


def is_live(state: SlotState, expires_at: datetime | None, now: datetime) -> bool:
    """Whether a lock occupies its slot at ``now``: held before its hold passes,
    locked or consumed."""
    if state is SlotState.HELD:
        assert expires_at is not None, "a hold has an end"
        return now < expires_at
    return state in LIVE_STATES


def lock_refusal(
    *, live_provinces: Iterable[str], province: str, items_max: int, revoked: bool
) -> str | None:
    """Why a new lock of a qualification is refused, or None when a slot is free.

    ``live_provinces`` names the province of each live lock of the
    (pseudonym, category). When every slot is taken and another province
    holds one of them, the person used the category elsewhere; when this
    province holds them all, the person reached the limit here.
    """
    assert 1 <= items_max <= ITEMS_MAX, items_max
    if revoked:
        return "revoked"
    holders = list(live_provinces)
    if len(holders) < items_max:
        return None
    if any(holder != province for holder in holders):
        return "used_elsewhere"
    return "limit_reached"


class Order(enum.StrEnum):
    """Where an event stands in its voucher's sequence."""

    APPLY = "apply"  # the next one (or unordered): apply now
    WAIT = "wait"  # an earlier one is missing: keep it until the gap is filled
    STALE = "stale"  # a sequence number already applied, under another event id


def order_of(seq: int | None, last_applied_seq: int) -> Order:
    """Where an event with ``seq`` stands when its voucher's events up to
    ``last_applied_seq`` have applied (0: none). Events without a ``seq``
    carry no order and apply at once."""
    assert last_applied_seq >= 0
    if seq is None:
        return Order.APPLY
    assert seq >= 1, "sequence numbers start at 1"
    if seq <= last_applied_seq:
        return Order.STALE
    if seq == last_applied_seq + 1:
        return Order.APPLY
    return Order.WAIT


@dataclass(frozen=True, slots=True)
class EventEffect:
    """What an event asks of its lock: an action, or nothing (the event is recorded)."""

    action: Action | None
    # For ``restore``/``release`` after a refund: whether the serial goes back to the pool.
    frees_serial: bool = False


_RELEASING_TOPICS = frozenset({"voucher.expired", "qualification.released", "voucher.revoked"})
_REFUND_TOPICS = frozenset({"redemption.refunded", "redemption.reversed"})


def event_action(topic: str, payload: Mapping[str, object]) -> EventEffect:
    """What an event of ``topic`` does to its voucher's lock.

    ``voucher.issued`` confirms the hold; ``redemption.completed`` consumes;
    a refund or reversal gives the slot back to ``locked`` when the voucher
    is usable again (``voucher_state`` "issued") and releases it when the
    voucher is void, freeing the serial number either way; an expired or
    released voucher releases its slot. Any other topic is recorded only.
    """
    if topic == "voucher.issued":
        return EventEffect(Action.ISSUE)
    if topic == "redemption.completed":
        return EventEffect(Action.CONSUME)
    if topic in _REFUND_TOPICS:
        usable = payload.get("voucher_state") == "issued"
        return EventEffect(Action.RESTORE if usable else Action.RELEASE, frees_serial=True)
    if topic in _RELEASING_TOPICS:
        return EventEffect(Action.RELEASE)
    return EventEffect(None)


# Serial numbers and IMEIs.


@dataclass(frozen=True, slots=True, order=True)
class SerialKey:
    """One entry of the national registry: ``kind`` "serial" or "imei", and the value
    normalised (``normalize_serial``, ``normalize_imei``)."""

    kind: str
    value: str


def _invalid_serial(message: str) -> InvalidInput:
    return InvalidInput("central_invalid_serial", message)


def normalize_serial(raw: str) -> str:
    """A product serial number as the registry keys it: NFKC (full-width letters and
    digits become ASCII), upper case, without spaces or hyphens; then 1-64 characters
    of ``A-Z 0-9 . / _ -`` starting with a letter or digit."""
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw)).upper()
    if not text:
        raise _invalid_serial("a serial number is empty")
    if len(text) > SERIAL_CHARS_MAX or not _SERIAL_PATTERN.fullmatch(text):
        raise _invalid_serial(
            f"a serial number is 1-{SERIAL_CHARS_MAX} letters, digits and . / _ after "
            "spaces and hyphens are removed"
        )
    return text


def normalize_imei(raw: str) -> str:
    """An IMEI as the registry keys it: its first 14 digits (the TAC and the serial),
    which name the device; the 15th is a check digit and an IMEISV's last two a
    software version, neither part of the device's identity. Accepts 14 to 16 digits
    (spaces and hyphens removed)."""
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    if not (14 <= len(text) <= 16 and text.isascii() and text.isdigit()):
        raise InvalidInput("central_invalid_serial", "an IMEI is 14 to 16 digits")
    return text[:14]


def serial_keys(serial: str | None, imei: str | None) -> list[SerialKey]:
    """The registry entries of one product: its serial number, its IMEI, or both."""
    keys: list[SerialKey] = []
    if serial is not None:
        keys.append(SerialKey("serial", normalize_serial(serial)))
    if imei is not None:
        keys.append(SerialKey("imei", normalize_imei(imei)))
    if not keys:
        raise _invalid_serial("a trade-in product needs its serial number or IMEI")
    return keys


# Central's calendar: the day of a fact is its UTC+8 (Beijing) date, as provinces count.
_UTC8 = timedelta(hours=8)


def day_of(at: datetime) -> date:
    """The UTC+8 calendar day of an instant."""
    assert at.tzinfo is not None, "an instant, not a wall-clock time"
    return (at.astimezone(UTC) + _UTC8).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants [start, end) of a UTC+8 calendar day."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - _UTC8
    return start, start + timedelta(days=1)
