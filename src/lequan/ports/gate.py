"""The small ports: the clock, the key ring, the nonce store and the claim gate.

Each port has a real adapter and an in-process one that ships in ``src``
(serving the embedded mode, the demo and the unit tests alike); one contract
suite in ``tests/integration`` runs against every implementation.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from lequan.domain.errors import Unavailable

__all__ = [
    "ClaimGate",
    "Clock",
    "DrawEntry",
    "DrawProgress",
    "DrawResult",
    "DrawnEntry",
    "EntryOutcome",
    "GateUnavailable",
    "KeyHolds",
    "KeyMismatch",
    "KeyRing",
    "NonceStore",
    "PendingReservation",
    "ReserveOutcome",
    "ReserveRequest",
    "ReserveResult",
]


# A key file is not swapped in a second: a caller told to come back sooner only adds load.
KEY_MISMATCH_RETRY_AFTER_S = 60


class Clock(Protocol):
    """Where services read the time; the domain never does."""

    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class KeyMismatch(Unavailable):
    """A stored value does not open under this process's keys: another key file than the
    one the data was written with, a key missing from it, or altered data.

    The platform cannot serve until an operator gives it the right key file, so
    it is answered ``503 key_mismatch``, never a 500; ``serve`` and the CLI
    refuse to start on it (the store's key canaries, ``services/keys.py``).
    """

    def __init__(self, message: str) -> None:
        super().__init__("key_mismatch", message, retry_after_s=KEY_MISMATCH_RETRY_AFTER_S)


class KeyRing(Protocol):
    """Field encryption and blind indexes for personal information."""

    @property
    def active_key_id(self) -> str: ...

    def encrypt(self, field: str, plaintext: str) -> tuple[str, bytes]:
        """Encrypt one field value; returns (key_id, ciphertext). ``field`` is bound as AAD."""
        ...

    def decrypt(self, field: str, key_id: str, ciphertext: bytes) -> str:
        """What ``encrypt`` sealed for this field; ``KeyMismatch`` when it does not open."""
        ...

    def blind_index(self, field: str, value: str) -> str:
        """A keyed, deterministic digest for equality lookups without the clear value."""
        ...


class NonceStore(Protocol):
    """Remembers request nonces for the signature window so a replay is refused."""

    @property
    def in_process(self) -> bool:
        """True when it answers from this process's memory, with no I/O to wait for."""
        ...

    def remember(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        """Record the nonce; True if it was new, False if it was already seen."""
        ...

    def remember_many(self, nonces: Sequence[tuple[str, str]], ttl_s: int) -> list[bool]:
        """Record each ``(app_id, nonce)``, in order; True where it was new.

        A nonce given twice in one call is new only the first time. When the
        store cannot take the call it raises ``Unavailable`` for all of them.
        """
        ...

    @property
    def epoch_s(self) -> int:
        """The unix second since which the store holds every nonce given to it, as of
        its latest ``remember`` call: when it started (a process's memory), or
        when it began again after losing what it held (a Redis restarted without
        its data). A request signed before it may be a replay the store forgot,
        so the caller refuses it; ask after recording the request's nonce.
        """
        ...


class KeyHolds(Protocol):
    """Idempotency keys held by their first request, in whichever process it runs.

    Beside a shared gate, many processes answer one channel's claims: a
    retry reaching another process while the first request still runs must
    hear ``idempotency_in_flight``, not what the gate says of the first
    request's reservation. A hold expires after ``ttl_s``, so the keys of a
    process that died come free.
    """

    def hold(self, keys: Sequence[tuple[str, str]], *, ttl_s: float) -> list[bool]:
        """Hold each ``(app_id, key)`` that no other process holds; True where now held.

        Raises ``GateUnavailable`` when its server cannot be reached (it is the
        shared gate's).
        """
        ...

    def let_go(self, keys: Sequence[tuple[str, str]]) -> None:
        """Let go of keys this process holds; a hold another took since (ours expired)
        stays. Raises ``GateUnavailable`` like ``hold``."""
        ...


class ReserveOutcome(enum.Enum):
    """What the gate answered for one reservation."""

    OK = "ok"
    SOLD_OUT = "sold_out"
    ALREADY_CLAIMED = "already_claimed"  # the person reached the pool's limit
    CAMPAIGN_LIMIT = "claim_limit_reached"  # the person reached the campaign's limit
    UNKNOWN_STOCK = "unknown_stock"  # the gate holds no stock for this pool/template


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """One person asking for one voucher of one template from one pool.

    A *pool* is the unit the gate makes atomic: one round of one campaign in
    one channel. It holds a stock counter per template and the per-person
    claim counts that the pool's limit applies to (one claim per person per
    channel per round, in the real Shanghai rule, whatever the template).
    """

    pool: str
    template_id: str
    person_id: str
    limit: int
    campaign_id: str
    campaign_limit: int  # 0 means no campaign-wide limit


@dataclass(frozen=True, slots=True)
class ReserveResult:
    outcome: ReserveOutcome
    claim_seq: int  # the person's n-th claim in the pool (1..limit) when OK, else 0
    # The template's stock left where the gate took it, after this answer: the
    # whole pool, or on a bucketed gate the person's bucket. Only SOLD_OUT
    # says the pool is empty.
    remaining: int


@dataclass(frozen=True, slots=True)
class PendingReservation:
    """A reservation the gate journals as pending: granted, neither settled nor released."""

    pool: str
    template_id: str
    person_id: str
    claim_seq: int
    age_s: float  # how long it has been pending, by the gate's own clock


@dataclass(frozen=True, slots=True)
class DrawEntry:
    """A claim entered in a round's fair start (``domain/fair_start.py``).

    Served, when its turn comes, as the gate's own reservation of ``request``.
    ``owner`` is the process holding the claim's request, which alone may take
    its answer.
    """

    ticket: str  # 32 hex digits, unique in the draw
    score: int  # 0 <= score < 2**52: the draw's order is (score, ticket)
    request: ReserveRequest
    owner: str


class EntryOutcome(enum.Enum):
    """What the gate answered for one entry."""

    ENTERED = "entered"
    REJOINED = "rejoined"  # the ticket was entered before, by this owner: the same entry
    HELD_ELSEWHERE = "held_elsewhere"  # the ticket was entered by another owner
    FULL = "full"  # the person has ``request.limit`` entries in the pool already
    CLOSED = "closed"  # the draw has begun: no more entries
    OVER = "over"  # the draw holds ``entries_max`` entries


@dataclass(frozen=True, slots=True)
class DrawResult:
    """What the draw gave one entry: a reservation, or the gate's refusal.

    ``outcome`` None: the process serving the entry's chunk died before it
    recorded what the gate answered; a reservation it may have made is reaped
    as any orphan is (``stale``).
    """

    outcome: ReserveOutcome | None
    claim_seq: int
    age_s: float  # since the chunk holding it was served, by the gate's clock (at least)


@dataclass(frozen=True, slots=True)
class DrawProgress:
    """Where a draw stands, as one ``draw`` call left it."""

    closed: bool  # no more entries are taken
    entries: int  # entries taken (final once closed)
    served: int  # entries served so far, in order
    # The (score, ticket) of the last entry served: every entry at or before it is decided.
    last: tuple[int, str] | None
    finished_now: bool = False  # this call served the draw's last entry

    @property
    def done(self) -> bool:
        return self.closed and self.served == self.entries


@dataclass(frozen=True, slots=True)
class DrawnEntry:
    """One entry of a served draw, with its rank (1 first) and what it was given."""

    rank: int
    ticket: str
    request: ReserveRequest
    result: DrawResult


class GateUnavailable(Exception):
    """The gate could not be asked: its server is down, restarting or failing over.

    What a failed call did is unknown. A reservation it may have made stays
    pending until the gatekeeper reaps it (``stale``), so no stock is lost
    for longer than the fence.
    """


class ClaimGate(Protocol):
    """Answers "may this person take one of this stock?" atomically and fast.

    The gate is a cache of the store's truth. Every reservation it grants is
    journalled as *pending* until the claim service either ``settle``s it
    (the voucher is committed) or ``release``s it (the commit failed): a
    release gives back exactly the reservations still pending, once. A
    reservation whose process died stays pending; ``stale`` finds it, and
    the service settles or releases it after looking in the store.

    ``reset_*`` replaces the gate's state with the store's and drops the
    journal, so it is only safe when no reservation can still commit: on a
    ``shared`` gate the service first closes the campaign (``forget``) and
    waits out the reservation fence (see ``services.campaigns.ensure_gate``).
    De-duplication per person is atomic with the decrement. A gate with a
    server behind it raises ``GateUnavailable`` when it cannot reach it.
    """

    @property
    def shared(self) -> bool:
        """True when other processes reserve from the same state (Redis)."""
        ...

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        """Reserve each request in order, each one atomic on its own."""
        ...

    def settle(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Forget the pending reservations (request, claim_seq) now committed to the store."""
        ...

    def release(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Undo pending reservations (request, claim_seq) whose commit failed."""
        ...

    def stale(self, pool: str, *, older_than_s: float, limit: int) -> list[tuple[str, str, int]]:
        """Up to ``limit`` reservations pending longer than ``older_than_s``.

        Each is (template_id, person_id, claim_seq). A process that owns a
        reservation settles or releases it well within that age, so these
        belong to a process that died.
        """
        ...

    def pending_of(
        self, pools: Sequence[str], person_ids: Sequence[str]
    ) -> list[PendingReservation]:
        """The reservations of these people pending in these pools, with their ages.

        A claim refused as claimed already asks it when the store holds fewer
        vouchers than the refusal says: what is pending explains the rest.
        """
        ...

    def recount(self, campaign_id: str, counts: Mapping[str, int], *, quiet_s: float) -> set[str]:
        """Lower each person's campaign count to ``counts[person]`` where it is higher;
        the people whose count stays higher because it was taken less than
        ``quiet_s`` ago.

        A count taken by a claim whose reservation then failed (its batch
        broke between steps) stays taken with nothing behind it; the caller
        passes what the store and the pending reservations account for. A
        count taken recently may belong to a claim still between its steps,
        so it is left alone.
        """
        ...

    def remaining(self, pool: str, template_id: str) -> int | None:
        """Stock left in the whole pool, or None when the gate holds nothing for it."""
        ...

    def loaded(self, campaign_id: str, pools: Sequence[str]) -> bool:
        """True when the campaign's counts and every part of these pools are held."""
        ...

    def begin_rebuild(self, campaign_id: str, *, ttl_s: float) -> str | None:
        """The right to rebuild a campaign for ``ttl_s``: a token, or None if taken."""
        ...

    def end_rebuild(self, campaign_id: str, token: str) -> None: ...

    def forget(self, campaign_id: str, pools: Sequence[str]) -> None:
        """Drop the campaign's state: reservations answer UNKNOWN_STOCK until a reset."""
        ...

    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        """Replace a pool's state: stock left per template, claims per person; no pending."""
        ...

    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        """Replace the per-person claim counts of a campaign-wide limit; marks it loaded."""
        ...

    # -- the fair start: a round's first claims served in a drawn order -------------------

    def enter(
        self, draw: str, entries: Sequence[DrawEntry], *, entries_max: int
    ) -> list[EntryOutcome]:
        """Enter each claim in the draw, in order, each atomic on its own.

        Refused once the draw has begun (``CLOSED``), beyond ``entries_max``
        entries (``OVER``), and for a person who has as many entries in the
        pool as its limit (``FULL``). A ticket entered already is the same
        entry again (``REJOINED``) for its owner, ``HELD_ELSEWHERE`` for
        another.
        """
        ...

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        """Close the draw to entries, then serve its next ``chunk_size`` entries in order.

        Each entry is reserved as ``reserve`` would (its request, in the draw's
        order) and what the gate answered is recorded for ``draw_results``. One
        caller serves at a time, whatever the process (a lock of ``lock_ttl_s``:
        one that died is taken over, and the chunk it was serving answered
        ``DrawResult(None, ...)``); another caller gets the progress. No chunk is
        served while ``pending_max`` or more reservations are pending in the
        draw's pools: the draw goes no faster than its winners are committed, so
        none outlives its ttl waiting.
        """
        ...

    def draw_results(self, draw: str, tickets: Sequence[str]) -> list[DrawResult | None]:
        """What the draw gave each ticket; None for one not served (or unknown)."""
        ...

    def drawn(self, draw: str, *, start: int, limit: int) -> list[DrawnEntry]:
        """Up to ``limit`` served entries from rank ``start + 1``, in rank order."""
        ...

    def forget_draw(self, draw: str) -> None:
        """Drop everything the gate holds of a draw (it is published in the store)."""
        ...

    def close(self) -> None: ...
