"""Central's store, as its services see it: one transaction at a time, and rows.

``CentralStore.transaction()`` is a unit of work: one database transaction,
committed when the block ends cleanly, rolled back otherwise. Inside it the
services read, decide through ``lequan.domain.qualification`` and write;
the atomic step is the store's: ``lock_qualifications`` locks each
(pseudonym, category) named, in key order, for the rest of the transaction
(``SELECT ... FOR UPDATE`` on PostgreSQL, the database's write lock on
SQLite), so two provinces counting the live slots of one person and taking
one cannot both see a free slot.

Two implementations: ``central.store`` (SQL) and ``central.memory_store``
(one process, for the in-process fake and the services' unit tests). The
store's own errors are the province store's (``lequan.ports.errors``):
``StoreUnavailable`` when the database does not answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from lequan.domain.qualification import SerialKey, SlotState

__all__ = [
    "CentralStore",
    "CentralTx",
    "DayFact",
    "EventRow",
    "Fact",
    "LockRow",
    "ProvinceRow",
    "VoucherView",
    "qualification_id",
]


def qualification_id(pseudonym: str, category: str) -> str:
    """The key of one qualification: ``pseudonym:category``."""
    return f"{pseudonym}:{category}"


@dataclass(slots=True)
class LockRow:
    """One lock: a slot of a qualification taken by a province (mutable while deciding)."""

    lock_id: str
    province: str
    pseudonym: str
    category: str
    state: SlotState
    expires_at: datetime | None  # the hold's end; None once the voucher is issued
    created_at: datetime
    updated_at: datetime
    items_max: int = 1  # the category's slots per person, as the lock call said
    voucher_id: str | None = None
    redemption_id: str | None = None
    price_fen: int = 0
    subsidy_fen: int = 0
    reason: str | None = None  # why it was released or revoked

    @property
    def qualification(self) -> str:
        return qualification_id(self.pseudonym, self.category)


@dataclass(frozen=True, slots=True)
class EventRow:
    event_id: str
    province: str
    topic: str
    at: datetime
    payload: Mapping[str, Any]
    voucher_id: str | None
    seq: int | None
    state: str  # applied, waiting, rejected
    reason: str | None
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Fact:
    """One line of central's journal of what happened to slots, for the day's record.

    ``fact`` is locked, consumed, released or subsidy; ``count`` +1 or -1 (a
    refund takes a consumption back), ``amount_fen`` signed the same way.
    """

    province: str
    category: str
    fact: str
    count: int
    amount_fen: int
    day: date
    at: datetime
    lock_id: str | None = None
    voucher_id: str | None = None


@dataclass(frozen=True, slots=True)
class DayFact:
    """The sums of one (category, fact) of a province's day."""

    category: str
    fact: str
    count: int
    amount_fen: int


@dataclass(frozen=True, slots=True)
class ProvinceRow:
    code: str
    app_id: str
    secret: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VoucherView:
    """A voucher a province's day touched, as central knows it now."""

    voucher_id: str
    category: str
    state: str
    subsidy_fen: int


class CentralTx(Protocol):
    """What one transaction may read and write; locks in key order, never otherwise."""

    def lock_qualifications(self, ids: Sequence[str]) -> set[str]:
        """Create the qualifications named (if new) and lock them until the transaction
        ends, in key order; the revoked ones among them."""
        ...

    def live_locks(self, ids: Sequence[str], now: datetime) -> list[LockRow]:
        """The live locks of these qualifications (``qualification.is_live`` at ``now``)."""
        ...

    def locks(self, lock_ids: Sequence[str]) -> dict[str, LockRow]:
        """The locks by these ids, locked until the transaction ends."""
        ...

    def locks_of_vouchers(self, province: str, voucher_ids: Sequence[str]) -> dict[str, LockRow]:
        """The lock of each voucher of ``province`` named, by voucher id, locked."""
        ...

    def insert_locks(self, rows: Sequence[LockRow]) -> None: ...

    def update_locks(self, rows: Sequence[LockRow]) -> None:
        """Write every field of these locks (matched by ``lock_id``)."""
        ...

    def serial_owners(self, keys: Sequence[SerialKey]) -> dict[SerialKey, str]:
        """The lock that subsidised each registered key among these."""
        ...

    def add_serials(self, entries: Sequence[tuple[SerialKey, str, str]], at: datetime) -> None:
        """Register (key, lock_id, province) entries; a key registered already is
        ``DuplicateKey`` (the registry is unique)."""
        ...

    def free_serials(self, lock_ids: Sequence[str]) -> None:
        """Take these locks' entries out of the registry (a refund)."""
        ...

    def add_facts(self, facts: Sequence[Fact]) -> None: ...

    def events(self, event_ids: Sequence[str]) -> dict[str, EventRow]: ...

    def put_events(self, rows: Sequence[EventRow]) -> None:
        """Insert these events, or overwrite the ones already stored (a waiting one applied)."""
        ...

    def voucher_seqs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The last applied seq of each (province, voucher_id), 0 for a voucher never
        seen; each locked until the transaction ends, in key order."""
        ...

    def set_voucher_seqs(self, seqs: Mapping[tuple[str, str], int]) -> None: ...

    def waiting_events(self, keys: Sequence[tuple[str, str]]) -> list[EventRow]:
        """The events of these (province, voucher_id) still waiting for an earlier one."""
        ...

    def revoke(self, qualification: str, *, reason: str, by: str, at: datetime) -> bool:
        """Record a revocation; False if the qualification was revoked already."""
        ...

    def unrevoke(self, qualification: str) -> bool:
        """Lift a revocation; False if there was none."""
        ...


class CentralStore(Protocol):
    def transaction(self) -> AbstractContextManager[CentralTx]:
        """One unit of work: committed when the block ends cleanly, else rolled back."""
        ...

    def expire_holds(self, now: datetime, limit: int) -> int:
        """Mark at most ``limit`` holds whose time passed as expired; how many."""
        ...

    def day_facts(self, province: str, day: date) -> list[DayFact]: ...

    def day_vouchers(self, province: str, day: date) -> list[VoucherView]: ...

    def live_locks_of(self, pseudonym: str, category: str, now: datetime) -> list[LockRow]: ...

    def add_province(self, row: ProvinceRow) -> None:
        """Register a province; ``DuplicateKey`` if its code or app id is taken."""
        ...

    def provinces(self) -> list[ProvinceRow]: ...

    def province_by_app(self, app_id: str) -> ProvinceRow | None: ...

    def oprf_seed(self, make: bytes) -> bytes:
        """The OPRF key's seed: the stored one, or ``make`` stored now if none is."""
        ...

    def counts(self) -> Mapping[str, int]:
        """Rows by kind, for the status command."""
        ...

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""
        ...

    def dispose(self) -> None: ...
