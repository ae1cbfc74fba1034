"""Central's store in one process's memory: the in-process fake of central
(``lequan.central.in_process``) and the services' unit tests.

One transaction at a time (a lock held from begin to end, as SQLite's
write lock does), each write undone if the block fails, and every row
handed out a copy, so a service that changes a row it read changes nothing
until it writes it back.
"""

from __future__ import annotations

import functools
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from typing import TypeVar

from lequan.central.ports import (
    CentralTx,
    DayFact,
    EventRow,
    Fact,
    LockRow,
    ProvinceRow,
    VoucherView,
    qualification_id,
)
from lequan.domain import qualification as q
from lequan.domain.qualification import SerialKey, SlotState
from lequan.ports.errors import DuplicateKey

__all__ = ["MemoryCentralStore"]

K = TypeVar("K")
V = TypeVar("V")


class MemoryCentralStore:
    """Implements ``CentralStore``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.qualifications: set[str] = set()
        self.revocations: dict[str, tuple[str, str, datetime]] = {}
        self.locks: dict[str, LockRow] = {}
        self.by_qualification: dict[str, set[str]] = defaultdict(set)
        self.by_voucher: dict[tuple[str, str], str] = {}
        self.serials: dict[SerialKey, tuple[str, str, datetime]] = {}
        self.facts: list[Fact] = []
        self.events: dict[str, EventRow] = {}
        self.seqs: dict[tuple[str, str], int] = {}
        self.province_rows: dict[str, ProvinceRow] = {}
        self.seed: bytes | None = None

    @contextmanager
    def transaction(self) -> Iterator[CentralTx]:
        with self._lock:
            tx = _MemoryTx(self)
            try:
                yield tx
            except BaseException:
                for undo in reversed(tx.undo):
                    undo()
                raise

    def expire_holds(self, now: datetime, limit: int) -> int:
        with self._lock:
            due = sorted(
                lock_id
                for lock_id, row in self.locks.items()
                if row.state is SlotState.HELD
                and row.expires_at is not None
                and row.expires_at <= now
            )[:limit]
            for lock_id in due:
                row = self.locks[lock_id]
                row.state, row.updated_at = SlotState.EXPIRED, now
            return len(due)

    def day_facts(self, province: str, day: date) -> list[DayFact]:
        sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        with self._lock:
            for fact in self.facts:
                if fact.province == province and fact.day == day:
                    total = sums[(fact.category, fact.fact)]
                    total[0] += fact.count
                    total[1] += fact.amount_fen
        return [DayFact(c, f, n, a) for (c, f), (n, a) in sorted(sums.items())]

    def day_vouchers(self, province: str, day: date) -> list[VoucherView]:
        with self._lock:
            ids = sorted(
                {
                    f.voucher_id
                    for f in self.facts
                    if f.province == province and f.day == day and f.voucher_id is not None
                }
            )
            views = []
            for voucher_id in ids:
                lock_id = self.by_voucher.get((province, voucher_id))
                if lock_id is not None:
                    row = self.locks[lock_id]
                    subsidy = row.subsidy_fen if row.state is SlotState.CONSUMED else 0
                    views.append(VoucherView(voucher_id, row.category, str(row.state), subsidy))
                    continue
                mine = [
                    f for f in self.facts if f.province == province and f.voucher_id == voucher_id
                ]
                consumed = sum(f.count for f in mine if f.fact == "consumed")
                subsidy = sum(f.amount_fen for f in mine if f.fact == "subsidy")
                state = "consumed" if consumed > 0 else "refunded"
                views.append(VoucherView(voucher_id, mine[0].category, state, subsidy))
            return views

    def live_locks_of(self, pseudonym: str, category: str, now: datetime) -> list[LockRow]:
        with self.transaction() as tx:
            return tx.live_locks([qualification_id(pseudonym, category)], now)

    def add_province(self, row: ProvinceRow) -> None:
        with self._lock:
            if row.code in self.province_rows or any(
                p.app_id == row.app_id for p in self.province_rows.values()
            ):
                raise DuplicateKey("provinces")
            self.province_rows[row.code] = row

    def provinces(self) -> list[ProvinceRow]:
        with self._lock:
            return sorted(self.province_rows.values(), key=lambda row: row.code)

    def province_by_app(self, app_id: str) -> ProvinceRow | None:
        with self._lock:
            return next((p for p in self.province_rows.values() if p.app_id == app_id), None)

    def oprf_seed(self, make: bytes) -> bytes:
        with self._lock:
            if self.seed is None:
                self.seed = make
            return self.seed

    def counts(self) -> Mapping[str, int]:
        with self._lock:
            states: dict[str, int] = defaultdict(int)
            for row in self.locks.values():
                states[f"locks_{row.state}"] += 1
            return {
                "provinces": len(self.province_rows),
                "qualifications": len(self.qualifications),
                "revocations": len(self.revocations),
                "serials": len(self.serials),
                "events": len(self.events),
                "events_waiting": sum(1 for e in self.events.values() if e.state == "waiting"),
                **states,
            }

    def ping(self) -> None:
        return None

    def dispose(self) -> None:
        return None


class _MemoryTx:
    def __init__(self, store: MemoryCentralStore) -> None:
        self.s = store
        self.undo: list[Callable[[], None]] = []

    def _set(self, table: dict[K, V], key: K, value: V) -> None:
        had = key in table
        before = table.get(key)
        table[key] = value

        def undo() -> None:
            if had:
                table[key] = before  # type: ignore[assignment]  # present before: a V
            else:
                table.pop(key, None)

        self.undo.append(undo)

    def lock_qualifications(self, ids: Sequence[str]) -> set[str]:
        new = [qid for qid in ids if qid not in self.s.qualifications]
        self.s.qualifications.update(new)
        self.undo.append(lambda: self.s.qualifications.difference_update(new))
        return {qid for qid in ids if qid in self.s.revocations}

    def live_locks(self, ids: Sequence[str], now: datetime) -> list[LockRow]:
        found = []
        for qid in ids:
            for lock_id in sorted(self.s.by_qualification.get(qid, ())):
                row = self.s.locks[lock_id]
                if q.is_live(row.state, row.expires_at, now):
                    found.append(replace(row))
        return found

    def locks(self, lock_ids: Sequence[str]) -> dict[str, LockRow]:
        return {i: replace(self.s.locks[i]) for i in lock_ids if i in self.s.locks}

    def locks_of_vouchers(self, province: str, voucher_ids: Sequence[str]) -> dict[str, LockRow]:
        found = {}
        for voucher_id in voucher_ids:
            lock_id = self.s.by_voucher.get((province, voucher_id))
            if lock_id is not None:
                found[voucher_id] = replace(self.s.locks[lock_id])
        return found

    def insert_locks(self, rows: Sequence[LockRow]) -> None:
        for row in rows:
            if row.lock_id in self.s.locks:
                raise DuplicateKey("locks")
        self.update_locks(rows)

    def update_locks(self, rows: Sequence[LockRow]) -> None:
        for row in rows:
            self._set(self.s.locks, row.lock_id, replace(row))
            members = self.s.by_qualification[row.qualification]
            if row.lock_id not in members:
                members.add(row.lock_id)
                self.undo.append(functools.partial(members.discard, row.lock_id))
            if row.voucher_id is not None:
                self._set(self.s.by_voucher, (row.province, row.voucher_id), row.lock_id)

    def serial_owners(self, keys: Sequence[SerialKey]) -> dict[SerialKey, str]:
        return {key: self.s.serials[key][0] for key in keys if key in self.s.serials}

    def add_serials(self, entries: Sequence[tuple[SerialKey, str, str]], at: datetime) -> None:
        for key, _, _ in entries:
            if key in self.s.serials:
                raise DuplicateKey("serials")
        for key, lock_id, province in entries:
            self._set(self.s.serials, key, (lock_id, province, at))

    def free_serials(self, lock_ids: Sequence[str]) -> None:
        freeing = set(lock_ids)
        for key, entry in list(self.s.serials.items()):
            if entry[0] in freeing:
                del self.s.serials[key]
                self.undo.append(functools.partial(self.s.serials.__setitem__, key, entry))

    def add_facts(self, facts: Sequence[Fact]) -> None:
        count = len(facts)
        self.s.facts.extend(facts)
        self.undo.append(lambda: self.s.facts.__delitem__(slice(len(self.s.facts) - count, None)))

    def events(self, event_ids: Sequence[str]) -> dict[str, EventRow]:
        return {i: self.s.events[i] for i in event_ids if i in self.s.events}

    def put_events(self, rows: Sequence[EventRow]) -> None:
        for row in rows:
            self._set(self.s.events, row.event_id, row)

    def voucher_seqs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        return {key: self.s.seqs.get(key, 0) for key in keys}

    def set_voucher_seqs(self, seqs: Mapping[tuple[str, str], int]) -> None:
        for key, seq in seqs.items():
            self._set(self.s.seqs, key, seq)

    def waiting_events(self, keys: Sequence[tuple[str, str]]) -> list[EventRow]:
        wanted = set(keys)
        return [
            e
            for e in self.s.events.values()
            if e.state == "waiting"
            and e.voucher_id is not None
            and (e.province, e.voucher_id) in wanted
        ]

    def revoke(self, qualification: str, *, reason: str, by: str, at: datetime) -> bool:
        if qualification in self.s.revocations:
            return False
        self._set(self.s.revocations, qualification, (reason, by, at))
        return True

    def unrevoke(self, qualification: str) -> bool:
        if qualification not in self.s.revocations:
            return False
        entry = self.s.revocations.pop(qualification)
        self.undo.append(lambda: self.s.revocations.__setitem__(qualification, entry))
        return True
