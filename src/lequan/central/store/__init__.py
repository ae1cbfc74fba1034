"""Central's SQL store (SQLAlchemy Core over SQLite or PostgreSQL): implements
``lequan.central.ports.CentralStore``.

The atomic step of a lock call is here: ``lock_qualifications`` inserts the
qualification rows a batch names (a conflict does nothing) and locks them
``FOR UPDATE`` in key order, so two provinces' batches counting one
person's live slots queue on that row, and the second sees the first's
lock. On SQLite every writing transaction begins IMMEDIATE
(``adapters/sql/engine.py``): the same, for the whole file. Every
exception leaves as the port's (``adapters/sql/errors.translated``).

Secrets (the provinces' signing secrets, the OPRF key's seed) are stored
encrypted under central's key file, as the province stores app secrets.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from lequan.adapters.sql.errors import translated
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
from lequan.central.store import tables as t
from lequan.domain.qualification import SerialKey, SlotState
from lequan.ports import KeyRing
from lequan.ports.errors import DuplicateKey

__all__ = ["SqlCentralStore"]

_LIVE_ALWAYS = (SlotState.LOCKED.value, SlotState.CONSUMED.value)
_SECRET_FIELD = "central_province_secret"  # noqa: S105  # a field name (associated data), not a secret
_SEED_FIELD = "central_oprf_seed"
_QUALIFICATION_ARRAY_TYPES = {
    "id": "varchar",
    "pseudonym": "varchar",
    "category": "varchar",
    "created_at": "timestamptz",
}
# Each column of central_locks as the array type PostgreSQL's unnest() reads it.
_LOCK_ARRAY_TYPES = {
    "lock_id": "varchar",
    "province": "varchar",
    "qualification_id": "varchar",
    "pseudonym": "varchar",
    "category": "varchar",
    "state": "varchar",
    "items_max": "integer",
    "expires_at": "timestamptz",
    "voucher_id": "varchar",
    "redemption_id": "varchar",
    "price_fen": "bigint",
    "subsidy_fen": "bigint",
    "reason": "varchar",
    "created_at": "timestamptz",
    "updated_at": "timestamptz",
}
_FACT_ARRAY_TYPES = {
    "province": "varchar",
    "day": "date",
    "category": "varchar",
    "fact": "varchar",
    "count": "integer",
    "amount_fen": "bigint",
    "lock_id": "varchar",
    "voucher_id": "varchar",
    "at": "timestamptz",
}
_EVENT_ARRAY_TYPES = {
    "event_id": "varchar",
    "province": "varchar",
    "topic": "varchar",
    "at": "timestamptz",
    "payload": "json",
    "voucher_id": "varchar",
    "seq": "integer",
    "state": "varchar",
    "reason": "varchar",
    "received_at": "timestamptz",
}


def _lock_row(row: Any) -> LockRow:
    return LockRow(
        lock_id=row.lock_id,
        province=row.province,
        pseudonym=row.pseudonym,
        category=row.category,
        state=SlotState(row.state),
        expires_at=row.expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        items_max=row.items_max,
        voucher_id=row.voucher_id,
        redemption_id=row.redemption_id,
        price_fen=row.price_fen,
        subsidy_fen=row.subsidy_fen,
        reason=row.reason,
    )


def _lock_values(row: LockRow) -> dict[str, Any]:
    return {
        "lock_id": row.lock_id,
        "province": row.province,
        "qualification_id": row.qualification,
        "pseudonym": row.pseudonym,
        "category": row.category,
        "state": row.state.value,
        "items_max": row.items_max,
        "expires_at": row.expires_at,
        "voucher_id": row.voucher_id,
        "redemption_id": row.redemption_id,
        "price_fen": row.price_fen,
        "subsidy_fen": row.subsidy_fen,
        "reason": row.reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _event_row(row: Any) -> EventRow:
    return EventRow(
        event_id=row.event_id,
        province=row.province,
        topic=row.topic,
        at=row.at,
        payload=row.payload,
        voucher_id=row.voucher_id,
        seq=row.seq,
        state=row.state,
        reason=row.reason,
        received_at=row.received_at,
    )


def _event_values(row: EventRow) -> dict[str, Any]:
    return {
        "event_id": row.event_id,
        "province": row.province,
        "topic": row.topic,
        "at": row.at,
        "payload": dict(row.payload),
        "voucher_id": row.voucher_id,
        "seq": row.seq,
        "state": row.state,
        "reason": row.reason,
        "received_at": row.received_at,
    }


class SqlCentralStore:
    """Implements ``CentralStore`` on an engine from ``adapters/sql/engine.create_engine``."""

    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine = engine
        self._keyring = keyring
        self._postgres = engine.dialect.name == "postgresql"

    def _insert(self, table: sa.Table) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    @contextmanager
    def transaction(self) -> Iterator[CentralTx]:
        with translated(), self.engine.begin() as connection:
            yield _SqlTx(connection, self)

    def expire_holds(self, now: datetime, limit: int) -> int:
        due = (
            sa.select(t.locks.c.lock_id)
            .where(t.locks.c.state == SlotState.HELD.value, t.locks.c.expires_at <= now)
            .order_by(t.locks.c.lock_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        with translated(), self.engine.begin() as connection:
            result = connection.execute(
                t.locks.update()
                .where(t.locks.c.lock_id.in_(due.scalar_subquery()))
                .values(state=SlotState.EXPIRED.value, updated_at=now)
            )
            return int(result.rowcount)

    def day_facts(self, province: str, day: date) -> list[DayFact]:
        f = t.facts.c
        query = (
            sa.select(f.category, f.fact, sa.func.sum(f.count), sa.func.sum(f.amount_fen))
            .where(f.province == province, f.day == day)
            .group_by(f.category, f.fact)
            .order_by(f.category, f.fact)
        )
        with translated(), self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [DayFact(c, name, int(n), int(a)) for c, name, n, a in rows]

    def day_vouchers(self, province: str, day: date) -> list[VoucherView]:
        f = t.facts.c
        with translated(), self.engine.connect() as connection:
            ids = list(
                connection.execute(
                    sa.select(f.voucher_id)
                    .where(f.province == province, f.day == day, f.voucher_id.is_not(None))
                    .distinct()
                ).scalars()
            )
            views: dict[str, VoucherView] = {}
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                for row in connection.execute(
                    sa.select(t.locks).where(
                        t.locks.c.province == province, t.locks.c.voucher_id.in_(chunk)
                    )
                ):
                    subsidy = row.subsidy_fen if row.state == SlotState.CONSUMED.value else 0
                    views[row.voucher_id] = VoucherView(
                        row.voucher_id, row.category, row.state, subsidy
                    )
                lockless = [v for v in chunk if v not in views]
                if not lockless:
                    continue
                sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
                categories: dict[str, str] = {}
                for voucher_id, category, name, n, a in connection.execute(
                    sa.select(
                        f.voucher_id,
                        f.category,
                        f.fact,
                        sa.func.sum(f.count),
                        sa.func.sum(f.amount_fen),
                    )
                    .where(f.province == province, f.voucher_id.in_(lockless))
                    .group_by(f.voucher_id, f.category, f.fact)
                ):
                    categories[voucher_id] = category
                    sums[voucher_id][f"{name}_count"] += int(n)
                    sums[voucher_id][f"{name}_fen"] += int(a)
                for voucher_id in lockless:
                    got = sums[voucher_id]
                    state = "consumed" if got["consumed_count"] > 0 else "refunded"
                    views[voucher_id] = VoucherView(
                        voucher_id, categories[voucher_id], state, got["subsidy_fen"]
                    )
        return [views[v] for v in sorted(views)]

    def live_locks_of(self, pseudonym: str, category: str, now: datetime) -> list[LockRow]:
        with translated(), self.engine.connect() as connection:
            return _live(connection, [qualification_id(pseudonym, category)], now)

    def add_province(self, row: ProvinceRow) -> None:
        key_id, secret_enc = self._keyring.encrypt(_SECRET_FIELD, row.secret)
        with translated(), self.engine.begin() as connection:
            connection.execute(
                t.provinces.insert().values(
                    code=row.code,
                    app_id=row.app_id,
                    secret_key_id=key_id,
                    secret_enc=secret_enc,
                    created_at=row.created_at,
                )
            )

    def _province(self, row: Any) -> ProvinceRow:
        secret = self._keyring.decrypt(_SECRET_FIELD, row.secret_key_id, row.secret_enc)
        return ProvinceRow(row.code, row.app_id, secret, row.created_at)

    def provinces(self) -> list[ProvinceRow]:
        with translated(), self.engine.connect() as connection:
            rows = connection.execute(sa.select(t.provinces).order_by(t.provinces.c.code)).all()
        return [self._province(row) for row in rows]

    def province_by_app(self, app_id: str) -> ProvinceRow | None:
        with translated(), self.engine.connect() as connection:
            row = connection.execute(
                sa.select(t.provinces).where(t.provinces.c.app_id == app_id)
            ).first()
        return None if row is None else self._province(row)

    def oprf_seed(self, make: bytes) -> bytes:
        for _ in range(2):
            with translated(), self.engine.connect() as connection:
                row = connection.execute(sa.select(t.keys).where(t.keys.c.name == "oprf")).first()
            if row is not None:
                text = self._keyring.decrypt(_SEED_FIELD, row.key_id, row.value_enc)
                return bytes.fromhex(text)
            key_id, value_enc = self._keyring.encrypt(_SEED_FIELD, make.hex())
            try:
                with translated(), self.engine.begin() as connection:
                    connection.execute(
                        t.keys.insert().values(
                            name="oprf",
                            key_id=key_id,
                            value_enc=value_enc,
                            created_at=datetime.now().astimezone(),
                        )
                    )
                return make
            except DuplicateKey:
                continue  # another process made it first: read theirs
        raise AssertionError("the OPRF seed was neither found nor stored")

    def counts(self) -> Mapping[str, int]:
        found: dict[str, int] = {}
        with translated(), self.engine.connect() as connection:
            for name, table in (
                ("provinces", t.provinces),
                ("qualifications", t.qualifications),
                ("revocations", t.revocations),
                ("serials", t.serials),
                ("events", t.events),
            ):
                found[name] = int(
                    connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                )
            found["events_waiting"] = int(
                connection.execute(
                    sa.select(sa.func.count())
                    .select_from(t.events)
                    .where(t.events.c.state == "waiting")
                ).scalar_one()
            )
            for state, n in connection.execute(
                sa.select(t.locks.c.state, sa.func.count()).group_by(t.locks.c.state)
            ):
                found[f"locks_{state}"] = int(n)
        return found

    def ping(self) -> None:
        with translated(), self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


def _among(connection: sa.Connection, column: Any, values: Sequence[str]) -> Any:
    """``column IN values``: on PostgreSQL ``= ANY(array)``, one parameter, where a
    thousand-item IN list costs milliseconds to render and parse for each query."""
    if connection.dialect.name == "postgresql":
        return column == sa.any_(
            sa.bindparam(None, list(values), type_=postgresql.ARRAY(sa.String))
        )
    return column.in_(list(values))


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(a, b) pairs as each a's list of b, to query b against an array per a."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for a, b in pairs:
        grouped[a].append(b)
    return grouped


def _live(connection: sa.Connection, ids: Sequence[str], now: datetime) -> list[LockRow]:
    c = t.locks.c
    rows: list[LockRow] = []
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start : start + 1000])
        query = sa.select(t.locks).where(
            _among(connection, c.qualification_id, chunk),
            sa.or_(
                c.state.in_(_LIVE_ALWAYS),
                sa.and_(c.state == SlotState.HELD.value, c.expires_at > now),
            ),
        )
        rows += [_lock_row(row) for row in connection.execute(query)]
    return rows


def _insert_unnest(
    connection: sa.Connection,
    table: str,
    types: Mapping[str, str],
    values: Sequence[Mapping[str, Any]],
    *,
    suffix: str = "",
) -> None:
    """Insert many rows with one statement on PostgreSQL: each column an array given to
    ``unnest``, or one value when every row has the same (the batch's time), which
    spares the driver turning a thousand equal timestamps into text.

    executemany would send a statement a row at a time, and a many-row VALUES costs
    SQLAlchemy more to compile than the insert takes.
    """
    arrays: list[str] = []
    selected: list[str] = []
    params: list[Any] = []
    for index, (name, kind) in enumerate(types.items()):
        column = [row[name] for row in values]
        # The first column (the key) always an array: unnest needs one, and a row per key.
        if index and all(value == column[0] for value in column):
            selected.append(f"%s::{kind}")
            params.append(column[0])
        else:
            arrays.append(f"%b::{kind}[]")
            selected.append(f"u.c{len(arrays)}")
            params.append(column)
    aliases = ", ".join(f"c{n + 1}" for n in range(len(arrays)))
    # Scalars come first in the SELECT list's order, arrays in unnest's: order the
    # parameters as the text reads them.
    scalars = [p for p, s in zip(params, selected, strict=True) if not s.startswith("u.")]
    columns = [p for p, s in zip(params, selected, strict=True) if s.startswith("u.")]
    # Identifiers are this module's own constants; values are all parameters.
    statement = (
        f"INSERT INTO {table} ({', '.join(types)}) SELECT {', '.join(selected)} "  # noqa: S608
        f"FROM unnest({', '.join(arrays)}) AS u({aliases}){suffix}"
    )
    connection.exec_driver_sql(statement, tuple(scalars + columns))


class _SqlTx:
    """One transaction's reads and writes (implements ``CentralTx``)."""

    def __init__(self, connection: sa.Connection, store: SqlCentralStore) -> None:
        self.c = connection
        self.store = store

    def lock_qualifications(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        ids = sorted(set(ids))
        now = datetime.now().astimezone()
        values = []
        for qid in ids:
            pseudonym, _, category = qid.partition(":")
            values.append(
                {"id": qid, "pseudonym": pseudonym, "category": category, "created_at": now}
            )
        if self.store._postgres:
            _insert_unnest(
                self.c,
                "central_qualifications",
                _QUALIFICATION_ARRAY_TYPES,
                values,
                suffix=" ON CONFLICT DO NOTHING",
            )
        else:
            self.c.execute(self.store._insert(t.qualifications).on_conflict_do_nothing(), values)
        if self.store._postgres:
            self.c.execute(
                sa.select(t.qualifications.c.id)
                .where(_among(self.c, t.qualifications.c.id, ids))
                .order_by(t.qualifications.c.id)
                .with_for_update()
            ).all()
        return set(
            self.c.execute(
                sa.select(t.revocations.c.qualification_id).where(
                    _among(self.c, t.revocations.c.qualification_id, ids)
                )
            ).scalars()
        )

    def live_locks(self, ids: Sequence[str], now: datetime) -> list[LockRow]:
        return _live(self.c, ids, now) if ids else []

    def locks(self, lock_ids: Sequence[str]) -> dict[str, LockRow]:
        if not lock_ids:
            return {}
        rows = self.c.execute(sa.select(t.locks).where(_among(self.c, t.locks.c.lock_id, lock_ids)))
        return {row.lock_id: _lock_row(row) for row in rows}

    def locks_of_vouchers(self, province: str, voucher_ids: Sequence[str]) -> dict[str, LockRow]:
        if not voucher_ids:
            return {}
        rows = self.c.execute(
            sa.select(t.locks)
            .where(
                t.locks.c.province == province, _among(self.c, t.locks.c.voucher_id, voucher_ids)
            )
            .order_by(t.locks.c.created_at)
        )
        return {row.voucher_id: _lock_row(row) for row in rows}

    def insert_locks(self, rows: Sequence[LockRow]) -> None:
        values = [_lock_values(row) for row in rows]
        if not self.store._postgres:
            self.c.execute(t.locks.insert(), values)
            return
        _insert_unnest(self.c, "central_locks", _LOCK_ARRAY_TYPES, values)

    def update_locks(self, rows: Sequence[LockRow]) -> None:
        if not rows:
            return
        fields = [
            "state",
            "items_max",
            "expires_at",
            "voucher_id",
            "redemption_id",
            "price_fen",
            "subsidy_fen",
            "reason",
            "updated_at",
        ]
        statement = (
            t.locks.update()
            .where(t.locks.c.lock_id == sa.bindparam("b_lock_id"))
            .values({name: sa.bindparam(f"b_{name}") for name in fields})
        )
        params = []
        for row in rows:
            values = _lock_values(row)
            params.append({f"b_{name}": values[name] for name in ["lock_id", *fields]})
        self.c.execute(statement, params)

    def serial_owners(self, keys: Sequence[SerialKey]) -> dict[SerialKey, str]:
        if not keys:
            return {}
        s = t.serials.c
        found: dict[SerialKey, str] = {}
        # One query per kind: ``value`` against an array uses the key's index, where a
        # thousand (kind, value) pairs are a thousand ORs PostgreSQL scans the table for.
        for kind, values in sorted(_grouped((k.kind, k.value) for k in keys).items()):
            rows = self.c.execute(
                sa.select(s.value, s.lock_id).where(s.kind == kind, _among(self.c, s.value, values))
            )
            found.update({SerialKey(kind, value): lock_id for value, lock_id in rows})
        return found

    def add_serials(self, entries: Sequence[tuple[SerialKey, str, str]], at: datetime) -> None:
        self.c.execute(
            t.serials.insert(),
            [
                {
                    "kind": key.kind,
                    "value": key.value,
                    "lock_id": lock_id,
                    "province": province,
                    "registered_at": at,
                }
                for key, lock_id, province in entries
            ],
        )

    def free_serials(self, lock_ids: Sequence[str]) -> None:
        self.c.execute(t.serials.delete().where(t.serials.c.lock_id.in_(list(lock_ids))))

    def add_facts(self, facts: Sequence[Fact]) -> None:
        values = [
            {
                "province": f.province,
                "day": f.day,
                "category": f.category,
                "fact": f.fact,
                "count": f.count,
                "amount_fen": f.amount_fen,
                "lock_id": f.lock_id,
                "voucher_id": f.voucher_id,
                "at": f.at,
            }
            for f in facts
        ]
        if self.store._postgres:
            _insert_unnest(self.c, "central_facts", _FACT_ARRAY_TYPES, values)
            return
        self.c.execute(
            t.facts.insert(),
            [
                {
                    "province": f.province,
                    "day": f.day,
                    "category": f.category,
                    "fact": f.fact,
                    "count": f.count,
                    "amount_fen": f.amount_fen,
                    "lock_id": f.lock_id,
                    "voucher_id": f.voucher_id,
                    "at": f.at,
                }
                for f in facts
            ],
        )

    def events(self, event_ids: Sequence[str]) -> dict[str, EventRow]:
        if not event_ids:
            return {}
        rows = self.c.execute(
            sa.select(t.events).where(_among(self.c, t.events.c.event_id, event_ids))
        )
        return {row.event_id: _event_row(row) for row in rows}

    def put_events(self, rows: Sequence[EventRow]) -> None:
        stored = set(
            self.c.execute(
                sa.select(t.events.c.event_id).where(
                    _among(self.c, t.events.c.event_id, [row.event_id for row in rows])
                )
            ).scalars()
        )
        new = [_event_values(row) for row in rows if row.event_id not in stored]
        if new and self.store._postgres:
            for value in new:
                value["payload"] = json.dumps(value["payload"], separators=(",", ":"))
            _insert_unnest(self.c, "central_events", _EVENT_ARRAY_TYPES, new)
        elif new:
            self.c.execute(t.events.insert(), new)
        again = [row for row in rows if row.event_id in stored]
        if again:
            self.c.execute(
                t.events.update()
                .where(t.events.c.event_id == sa.bindparam("b_event_id"))
                .values(state=sa.bindparam("b_state"), reason=sa.bindparam("b_reason")),
                [
                    {"b_event_id": r.event_id, "b_state": r.state, "b_reason": r.reason}
                    for r in again
                ],
            )

    def voucher_seqs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        if not keys:
            return {}
        keys = sorted(set(keys))
        v = t.voucher_seqs.c
        if self.store._postgres:
            # One statement inserts the missing rows and locks them all, in key order, by
            # the key's own index: a select of a thousand keys was planned once, while
            # the table was small, as a scan, and kept that plan as the table grew.
            found_rows = self.c.exec_driver_sql(
                "INSERT INTO central_voucher_seqs (province, voucher_id, last_seq) "
                "SELECT u.p, u.v, 0 FROM unnest(%s::varchar[], %s::varchar[]) AS u(p, v) "
                "ORDER BY u.p, u.v "
                "ON CONFLICT (province, voucher_id) "
                "DO UPDATE SET last_seq = central_voucher_seqs.last_seq "
                "RETURNING province, voucher_id, last_seq",
                ([p for p, _ in keys], [voucher for _, voucher in keys]),
            )
            return {(p, voucher): int(seq) for p, voucher, seq in found_rows}
        # SQLite: the transaction holds the whole file already.
        self.c.execute(
            self.store._insert(t.voucher_seqs).on_conflict_do_nothing(),
            [{"province": p, "voucher_id": voucher, "last_seq": 0} for p, voucher in keys],
        )
        found: dict[tuple[str, str], int] = {}
        for province, vouchers in sorted(_grouped(keys).items()):
            query = sa.select(v.voucher_id, v.last_seq).where(
                v.province == province, v.voucher_id.in_(vouchers)
            )
            found.update({(province, voucher): int(seq) for voucher, seq in self.c.execute(query)})
        return found

    def set_voucher_seqs(self, seqs: Mapping[tuple[str, str], int]) -> None:
        v = t.voucher_seqs.c
        ordered = sorted(seqs.items())
        if self.store._postgres and ordered:
            self.c.exec_driver_sql(
                "UPDATE central_voucher_seqs AS s SET last_seq = u.seq "
                "FROM unnest(%s::varchar[], %s::varchar[], %s::integer[]) AS u(p, v, seq) "
                "WHERE s.province = u.p AND s.voucher_id = u.v",
                (
                    [p for (p, _), _ in ordered],
                    [voucher for (_, voucher), _ in ordered],
                    [seq for _, seq in ordered],
                ),
            )
            return
        self.c.execute(
            t.voucher_seqs.update()
            .where(
                v.province == sa.bindparam("b_province"), v.voucher_id == sa.bindparam("b_voucher")
            )
            .values(last_seq=sa.bindparam("b_seq")),
            [
                {"b_province": p, "b_voucher": voucher, "b_seq": seq}
                for (p, voucher), seq in ordered
            ],
        )

    def waiting_events(self, keys: Sequence[tuple[str, str]]) -> list[EventRow]:
        if not keys:
            return []
        e = t.events.c
        rows: list[EventRow] = []
        for province, vouchers in sorted(_grouped(keys).items()):
            rows += [
                _event_row(row)
                for row in self.c.execute(
                    sa.select(t.events).where(
                        e.state == "waiting",
                        e.province == province,
                        _among(self.c, e.voucher_id, vouchers),
                    )
                )
            ]
        return rows

    def revoke(self, qualification: str, *, reason: str, by: str, at: datetime) -> bool:
        result = self.c.execute(
            self.store._insert(t.revocations)
            .values(qualification_id=qualification, reason=reason, revoked_by=by, revoked_at=at)
            .on_conflict_do_nothing()
        )
        return bool(result.rowcount)

    def unrevoke(self, qualification: str) -> bool:
        result = self.c.execute(
            t.revocations.delete().where(t.revocations.c.qualification_id == qualification)
        )
        return bool(result.rowcount)
