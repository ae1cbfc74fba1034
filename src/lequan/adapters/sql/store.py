"""The unit of work over the SQL store, and every query the services need.

A ``SqlStore`` hands out units of work; a unit of work is one transaction
that rolls back unless ``commit()`` is called. Queries live here, named for
what they mean, so services never write SQL and routes never touch the
store. Row locks are taken only through ``lock_*`` methods, always in
primary-key order, so two transactions never wait on each other in a circle.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.errors import translate, translated
from lequan.domain.campaigns import CampaignConfig, CampaignStatus
from lequan.domain.ledger import Entry
from lequan.domain.vouchers import VoucherState

CAMPAIGN_CONFIGS_CACHED = 256

__all__ = [
    "AppRow",
    "CampaignRow",
    "MerchantRow",
    "PersonRow",
    "RedemptionRow",
    "SqlStore",
    "StockKey",
    "UnitOfWork",
    "VoucherRow",
]


# (campaign_id, round_id, channel_id, template_id): one template's stock in one pool.
StockKey = tuple[str, str, str, str]


def _stock_row(key: StockKey) -> tuple[sa.ColumnElement[bool], ...]:
    s = t.stocks.c
    return (
        s.campaign_id == key[0],
        s.round_id == key[1],
        s.channel_id == key[2],
        s.template_id == key[3],
    )


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: str
    status: CampaignStatus
    config: CampaignConfig
    budget_fen: int
    committed_fen: int
    drafted_by: str
    approved_by: str | None
    rounds: Mapping[str, tuple[datetime, datetime]]  # round_id -> (release_at, ends_at)


@dataclass(frozen=True, slots=True)
class AppRow:
    id: str
    kind: str
    name: str
    secret_key_id: str
    secret_enc: bytes
    active: bool


@dataclass(frozen=True, slots=True)
class PersonRow:
    id: str
    id_number_bidx: str
    id_number_enc: bytes
    name_enc: bytes
    phone_enc: bytes
    key_id: str
    residence_region: str


@dataclass(frozen=True, slots=True)
class MerchantRow:
    id: str
    name: str
    mcc: str
    region_code: str
    modes: frozenset[str]
    acquirer_id: str
    active: bool
    enrolled_campaigns: frozenset[str]


@dataclass(frozen=True, slots=True)
class VoucherRow:
    id: str
    campaign_id: str
    round_id: str
    channel_id: str
    template_id: str
    person_id: str
    claim_seq: int
    face_fen: int
    state: VoucherState
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime
    version: int
    redemption_id: str | None


@dataclass(frozen=True, slots=True)
class RedemptionReads:
    """What ``UnitOfWork.redemption_reads`` found for a batch."""

    # (app_id, key) -> (request_hash, status_code, response_json)
    answers: dict[tuple[str, str], tuple[str, int, str]]
    # voucher id -> the voucher, locked until commit
    vouchers: dict[str, VoucherRow]
    # (channel_id, channel_user_id) -> person id
    persons: dict[tuple[str, str], str]


@dataclass(frozen=True, slots=True)
class RedemptionRow:
    id: str
    voucher_id: str
    campaign_id: str
    acquirer_id: str
    merchant_id: str
    order_id: str
    mode: str
    order_amount_fen: int
    discount_fen: int
    pay_fen: int
    status: str
    lock_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


def _voucher(row: sa.Row[Any]) -> VoucherRow:
    return _voucher_of(row._mapping)


def _utc(value: datetime | str) -> datetime:
    """A driver's datetime as ``UtcDateTime`` gives it (aware, in UTC); SQLite's
    driver gives the text ``_sqlite_time`` wrote (naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The voucher columns ``_voucher_of`` reads, for the queries that skip SQLAlchemy.
_VOUCHER_COLUMNS = (
    "id",
    "campaign_id",
    "round_id",
    "channel_id",
    "template_id",
    "person_id",
    "claim_seq",
    "face_fen",
    "state",
    "valid_from",
    "valid_until",
    "issued_at",
    "version",
    "redemption_id",
)


def _voucher_of(m: Mapping[Any, Any]) -> VoucherRow:
    return VoucherRow(
        id=m["id"],
        campaign_id=m["campaign_id"],
        round_id=m["round_id"],
        channel_id=m["channel_id"],
        template_id=m["template_id"],
        person_id=m["person_id"],
        claim_seq=m["claim_seq"],
        face_fen=m["face_fen"],
        state=VoucherState(m["state"]),
        valid_from=m["valid_from"],
        valid_until=m["valid_until"],
        issued_at=m["issued_at"],
        version=m["version"],
        redemption_id=m["redemption_id"],
    )


def _redemption(row: sa.Row[Any]) -> RedemptionRow:
    m = row._mapping
    return RedemptionRow(**{f: m[f] for f in RedemptionRow.__dataclass_fields__})


@lru_cache(maxsize=CAMPAIGN_CONFIGS_CACHED)
def _campaign_config(config_json: str) -> CampaignConfig:
    """A stored campaign's configuration, parsed once per distinct text.

    Configurations are immutable values (frozen models) and a stored one
    never changes, so redemptions and quotes need not validate the same
    text again on every call.
    """
    return CampaignConfig.model_validate_json(config_json)


_UNNEST_TYPES = frozenset(
    {"TEXT", "BIGINT", "INTEGER", "SMALLINT", "BOOLEAN", "TIMESTAMP WITH TIME ZONE", "BYTEA"}
)


@lru_cache(maxsize=64)
def _unnest_insert_sql(table_name: str, columns: tuple[str, ...]) -> str:
    """``INSERT INTO table (columns) SELECT * FROM unnest(%s::type[], …)``, each array
    cast to its column's PostgreSQL type, but strings to plain ``text``: an explicit
    cast to ``varchar(n)`` would cut a value too long, where the insert refuses it."""
    table = t.metadata.tables[table_name]
    dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    types = [
        re.sub(r"^VARCHAR\(\d+\)$", "TEXT", table.c[c].type.compile(dialect=dialect))
        for c in columns
    ]
    # Types an explicit array cast passes unchanged; a char(n) or numeric(p, s) column
    # would be cut or rounded by the cast instead of refused by the insert.
    assert set(types) <= _UNNEST_TYPES, f"no unnest cast for {set(types) - _UNNEST_TYPES}"
    # Binary parameters (%b): psycopg writes a text array's elements escaped, one by one,
    # in Python; in binary they go as they are, several times faster.
    arrays = ", ".join(f"%b::{type_}[]" for type_ in types)
    return f"INSERT INTO {table_name} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"  # noqa: S608  # our names


def _sqlite_time(value: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime reads back (naive UTC)."""
    assert value.tzinfo is not None
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _copy_time(value: datetime) -> str:
    """A ``timestamptz`` as ``COPY`` text: ISO 8601 with its offset, whatever DateStyle.

    Rendered once per distinct instant by the caller: psycopg dumping a
    datetime per value was most of a claim batch's ``COPY`` (2.6 µs each;
    with five per claim, 17 ms of CPU per 1,000 claims against 4 ms, ad hoc).
    """
    assert value.tzinfo is not None
    return value.astimezone(UTC).isoformat()


def _copy_value(value: Any) -> Any:
    return _copy_time(value) if isinstance(value, datetime) else value


class SqlStore:
    """The source of truth: hands out units of work over one engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @contextmanager
    def unit_of_work(self, *, readonly: bool = False) -> Iterator[UnitOfWork]:
        """One transaction; rolled back unless ``commit()`` was called.

        ``readonly`` lets SQLite begin a plain (deferred) transaction that does
        not queue behind writers; anything that may write must leave it False.
        """
        with translated(), self.engine.connect() as connection:
            connection.info["lequan_readonly"] = readonly
            if readonly and connection.dialect.name == "postgresql":
                # Each statement its own transaction: no BEGIN and no ROLLBACK round
                # trips. Under READ COMMITTED a statement has its own snapshot anyway.
                connection.execution_options(isolation_level="AUTOCOMMIT")
            uow = UnitOfWork(connection)
            try:
                yield uow
            finally:
                if connection.in_transaction():
                    connection.rollback()

    def ping(self) -> None:
        """Ask the store one trivial question; ``StoreUnavailable`` when it does not answer."""
        with translated(), self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        self.engine.dispose()


# Below this many rows an INSERT costs less than a COPY (one round trip to its two).
COPY_ROWS_MIN = 8


class UnitOfWork:
    """The queries of one transaction."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self._postgres = connection.dialect.name == "postgresql"
        # Inside ``pipeline()``: the cursors whose results are still on their way, and
        # the checks to run on them once they are in.
        self._pipelined: list[Any] | None = None
        self._pipeline_checks: list[Callable[[], None]] = []

    def commit(self) -> None:
        with translated():
            self.connection.commit()

    # -- the flash sale's hot queries, at the driver level ---------------------
    #
    # SQLAlchemy's per-row parameter processing costs several times what the
    # database itself spends on a 1,000-row batch, so the claim path's three
    # queries are plain SQL with one array parameter and tuples of values.

    def _driver_sql(self, sql: str, params: Any = None) -> Any:
        """Run dialect SQL written with ``?`` placeholders (turned into %s for psycopg)."""
        assert self._pipelined is None, "no SQLAlchemy statement inside pipeline()"
        if self._postgres:
            sql = sql.replace("?", "%s")
        with translated():
            return self.connection.exec_driver_sql(sql, params)

    def _driver_rows(self, sql: str, params: Any) -> list[Any]:
        """The rows of a query as the driver's own tuples, on this transaction's connection.

        A 1,000-row read through SQLAlchemy's result object costs more than
        the query; the hot reads of the claim path take the driver's rows.
        """
        if self._postgres:
            sql = sql.replace("?", "%s")
        with self._driver_cursor(sql) as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    @contextmanager
    def _driver_cursor(self, statement: str) -> Iterator[Any]:
        """A driver cursor on this transaction's connection whose errors come back as
        SQLAlchemy's, as from any other statement: a unique violation is an
        ``IntegrityError``, an unreachable or broken store an ``OperationalError``.

        Inside ``pipeline()`` the cursor stays open until the pipeline's results
        are in."""
        dbapi_error = self.connection.dialect.loaded_dbapi.Error
        cursor = self.connection.connection.cursor()
        try:
            yield cursor
        except dbapi_error as error:
            raise translate(
                sa.exc.DBAPIError.instance(statement, None, error, dbapi_error)
            ) from error
        finally:
            if self._pipelined is None:
                cursor.close()
            else:
                self._pipelined.append(cursor)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """The writes of the block sent one after the other without waiting for each
        answer (psycopg's pipeline mode on PostgreSQL): one round trip for the
        block instead of one per statement. A statement's failure comes back as
        SQLAlchemy's error at the end of the block and the transaction is then
        lost, as with any failed statement. Only the pipeline-aware writes may
        run inside (``move_vouchers``, ``post_many``, ``release_budget`` and the
        inserts); elsewhere than on PostgreSQL the block runs as it is.
        """
        if not self._postgres:
            yield
            return
        assert self._pipelined is None, "pipelines do not nest"
        dbapi_error = self.connection.dialect.loaded_dbapi.Error
        self._pipelined = []
        try:
            driver = self.connection.connection.driver_connection
            assert driver is not None, "a unit of work holds a live connection"
            with driver.pipeline():
                yield
            for check in self._pipeline_checks:  # the results are in, the cursors open
                check()
        except dbapi_error as error:
            raise translate(
                sa.exc.DBAPIError.instance("pipeline", None, error, dbapi_error)
            ) from error
        finally:
            cursors, self._pipelined, self._pipeline_checks = self._pipelined, None, []
            for cursor in cursors:
                cursor.close()

    def _rowcount_is(self, cursor: Any, expected: int, message: str) -> None:
        """Assert a statement's row count: now, or once a pipeline's results are in."""

        def check() -> None:
            assert cursor.rowcount == expected, message

        if self._pipelined is None:
            check()
        else:
            self._pipeline_checks.append(check)

    def _in_array(self, column: str) -> str:
        if self._postgres:
            return f"{column} = ANY(?)"
        return f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608  # our column names

    def _array(self, values: Sequence[str]) -> Any:
        return list(values) if self._postgres else json.dumps(list(values))

    def claimants(
        self, channel_id: str, channel_user_ids: Sequence[str]
    ) -> dict[str, tuple[str, str, bool]]:
        """channel_user_id -> (person_id, residence_region, blacklisted), one query."""
        sql = (
            "SELECT a.channel_user_id, a.person_id, p.residence_region, "  # noqa: S608
            "b.id_number_bidx IS NOT NULL "
            "FROM person_accounts a JOIN persons p ON p.id = a.person_id "
            "LEFT JOIN blacklist b ON b.id_number_bidx = p.id_number_bidx "
            f"WHERE a.channel_id = ? AND {self._in_array('a.channel_user_id')}"
        )
        rows = self._driver_rows(sql, (channel_id, self._array(channel_user_ids)))
        return {user: (person, region, bool(black)) for user, person, region, black in rows}

    def claimed_slots(
        self, campaign_id: str, round_id: str, channel_id: str, person_ids: Sequence[str]
    ) -> set[tuple[str, int]]:
        """(person_id, claim_seq) of the vouchers these people hold in one pool."""
        rows = self._driver_sql(
            "SELECT person_id, claim_seq FROM vouchers "  # noqa: S608
            "WHERE campaign_id = ? AND round_id = ? AND channel_id = ? AND "
            f"{self._in_array('person_id')}",
            (campaign_id, round_id, channel_id, self._array(person_ids)),
        )
        return {(person, int(seq)) for person, seq in rows}

    def answered_keys(
        self, app_id: str, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str | None, str | None]]:
        """key -> (request_hash, status_code, response_json, voucher_id), one query.

        A claim's key is on the voucher it issued (``response_json`` None: the
        answer is the voucher's); any other key, and claims from before
        migration 0002, has its answer stored in ``idempotency_keys``
        (``voucher_id`` None).
        """
        rows = self._driver_rows(
            "SELECT key, request_hash, status_code, response_json, "  # noqa: S608
            "CAST(NULL AS TEXT) FROM idempotency_keys "
            f"WHERE app_id = ? AND {self._in_array('key')} "
            "UNION ALL SELECT claim_key, claim_hash, 201, CAST(NULL AS TEXT), id FROM vouchers "
            f"WHERE claim_app_id = ? AND {self._in_array('claim_key')}",
            (app_id, self._array(keys), app_id, self._array(keys)),
        )
        return {key: (h, int(status), body, vid) for key, h, status, body, vid in rows}

    def insert_claims(
        self,
        vouchers: Sequence[VoucherRow],
        keys: Sequence[tuple[str, str, str]],
        now: datetime,
    ) -> None:
        """Voucher rows, each with the claim that issued it: (app_id, key, request_hash)."""
        assert len(vouchers) == len(keys)
        if not vouchers:
            return
        render = _copy_time if self._postgres else _sqlite_time
        stamp = render(now)
        times: dict[datetime, str] = {}  # a batch's vouchers share a handful of instants

        def time_of(value: datetime) -> str:
            found = times.get(value)
            if found is None:
                found = times[value] = render(value)
            return found

        columns = (
            "id, campaign_id, round_id, channel_id, template_id, person_id, claim_seq, "
            "face_fen, state, valid_from, valid_until, issued_at, updated_at, version, "
            "claim_app_id, claim_key, claim_hash"
        )
        rows = [
            (
                v.id,
                v.campaign_id,
                v.round_id,
                v.channel_id,
                v.template_id,
                v.person_id,
                v.claim_seq,
                v.face_fen,
                v.state.value,
                time_of(v.valid_from),
                time_of(v.valid_until),
                time_of(v.issued_at),  # the instant the claim's answer gives
                stamp,
                v.version,
                *key,
            )
            for v, key in zip(vouchers, keys, strict=True)
        ]
        if self._postgres:
            self._copy_rows("vouchers", columns, rows)
            return
        self._driver_sql(
            f"INSERT INTO vouchers ({columns}) "  # noqa: S608  # our column names
            f"VALUES ({', '.join('?' * 17)})",
            rows,
        )

    def _copy_rows(self, table: str, columns: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows into a PostgreSQL table with ``COPY``, in this transaction.

        COPY takes a batch of rows several times faster than ``executemany``
        (the driver writes the stream in C).
        """
        if not rows:
            return
        statement = f"COPY {table} ({columns}) FROM STDIN"
        with self._driver_cursor(statement) as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def _insert_many(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows that all name the same columns into ``table``, in one statement: ``COPY``
        on PostgreSQL for a batch (``executemany`` there runs one statement per
        row; ``COPY`` costs a round trip more, so a few rows are inserted as
        such), an ``INSERT … SELECT FROM unnest`` inside ``pipeline()`` (which
        cannot carry ``COPY``), one ``executemany`` on SQLite. Every value is
        given: no column default is used."""
        if not rows:
            return
        if self._pipelined is not None:
            self._insert_unnest(table, rows)
            return
        if not self._postgres or len(rows) < COPY_ROWS_MIN:
            self._exec(sa.insert(table), list(rows))
            return
        columns = tuple(rows[0])
        assert all(len(row) == len(columns) for row in rows), "rows name the same columns"
        self._copy_rows(
            table.name,
            ", ".join(columns),
            [tuple(_copy_value(row[c]) for c in columns) for row in rows],
        )

    def _insert_unnest(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows into a PostgreSQL table as one ``INSERT … SELECT FROM unnest(…)``, one
        array per column: the form a pipeline can carry (``COPY`` cannot)."""
        columns = tuple(rows[0])
        assert all(len(row) == len(columns) for row in rows), "rows name the same columns"
        sql = _unnest_insert_sql(table.name, columns)
        with self._driver_cursor(sql) as cursor:
            cursor.execute(sql, [[row[c] for row in rows] for c in columns])

    def rollback(self) -> None:
        with translated():
            self.connection.rollback()

    def _exec(
        self, statement: sa.Executable, params: Any = None
    ) -> sa.CursorResult[*tuple[Any, ...]]:
        # Inside a pipeline SQLAlchemy would read a row count or a description that is
        # not there yet: only the pipeline-aware writes may run there.
        assert self._pipelined is None, "no SQLAlchemy statement inside pipeline()"
        with translated():
            return self.connection.execute(statement, params)

    def add_operator(self, *, operator_id: str, role: str, token_hash: str, now: datetime) -> None:
        self._exec(
            sa.insert(t.operators).values(
                id=operator_id, role=role, token_hash=token_hash, active=True, created_at=now
            )
        )

    def operator_by_token_hash(self, token_hash: str) -> tuple[str, str] | None:
        row = self._exec(
            sa.select(t.operators.c.id, t.operators.c.role).where(
                t.operators.c.token_hash == token_hash, t.operators.c.active.is_(True)
            )
        ).first()
        return (row.id, row.role) if row else None

    def operator_role(self, operator_id: str) -> str | None:
        row = self._exec(
            sa.select(t.operators.c.role).where(
                t.operators.c.id == operator_id, t.operators.c.active.is_(True)
            )
        ).first()
        return row.role if row else None

    def add_app(
        self, *, app_id: str, kind: str, name: str, key_id: str, secret_enc: bytes, now: datetime
    ) -> None:
        self._exec(
            sa.insert(t.apps).values(
                id=app_id,
                kind=kind,
                name=name,
                secret_key_id=key_id,
                secret_enc=secret_enc,
                active=True,
                created_at=now,
            )
        )

    def get_app(self, app_id: str) -> AppRow | None:
        row = self._exec(sa.select(t.apps).where(t.apps.c.id == app_id)).first()
        if row is None:
            return None
        m = row._mapping
        return AppRow(**{f: m[f] for f in AppRow.__dataclass_fields__})

    def insert_campaign(self, config: CampaignConfig, *, drafted_by: str, now: datetime) -> None:
        self._exec(
            sa.insert(t.campaigns).values(
                id=config.id,
                name=config.name,
                status=CampaignStatus.DRAFT.value,
                config_json=config.model_dump_json(),
                budget_fen=config.budget_fen,
                committed_fen=0,
                drafted_by=drafted_by,
                created_at=now,
                updated_at=now,
            )
        )
        self._exec(
            sa.insert(t.rounds),
            [
                {
                    "campaign_id": config.id,
                    "round_id": r.id,
                    "release_at": r.release_at,
                    "ends_at": r.ends_at,
                }
                for r in config.rounds
            ],
        )
        stock_rows = [
            {
                "campaign_id": config.id,
                "round_id": r.id,
                "channel_id": channel,
                "template_id": template_id,
                "initial": count,
            }
            for r in config.rounds
            for channel, per_template in r.stock.items()
            for template_id, count in per_template.items()
        ]
        if stock_rows:
            self._exec(sa.insert(t.stocks), stock_rows)

    def campaign_exists(self, campaign_id: str) -> bool:
        return (
            self._exec(sa.select(t.campaigns.c.id).where(t.campaigns.c.id == campaign_id)).first()
            is not None
        )

    def get_campaign(self, campaign_id: str) -> CampaignRow | None:
        row = self._exec(sa.select(t.campaigns).where(t.campaigns.c.id == campaign_id)).first()
        if row is None:
            return None
        return self._campaign(row)

    def _campaign(self, row: sa.Row[Any]) -> CampaignRow:
        m = row._mapping
        round_rows = self._exec(
            sa.select(t.rounds).where(t.rounds.c.campaign_id == m["id"])
        ).fetchall()
        return CampaignRow(
            id=m["id"],
            status=CampaignStatus(m["status"]),
            config=_campaign_config(m["config_json"]),
            budget_fen=m["budget_fen"],
            committed_fen=m["committed_fen"],
            drafted_by=m["drafted_by"],
            approved_by=m["approved_by"],
            rounds={r.round_id: (r.release_at, r.ends_at) for r in round_rows},
        )

    def list_campaigns(
        self, *, statuses: Iterable[CampaignStatus] | None = None
    ) -> list[CampaignRow]:
        query = sa.select(t.campaigns).order_by(t.campaigns.c.id)
        if statuses is not None:
            query = query.where(t.campaigns.c.status.in_([s.value for s in statuses]))
        return [self._campaign(row) for row in self._exec(query).fetchall()]

    def set_campaign_status(
        self,
        campaign_id: str,
        *,
        expected: CampaignStatus,
        status: CampaignStatus,
        now: datetime,
        approved_by: str | None = None,
    ) -> bool:
        """Move the status only if nobody else moved it first."""
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if approved_by is not None:
            values["approved_by"] = approved_by
        result = self._exec(
            sa.update(t.campaigns)
            .where(t.campaigns.c.id == campaign_id, t.campaigns.c.status == expected.value)
            .values(**values)
        )
        return result.rowcount == 1

    def set_round_times(
        self, campaign_id: str, round_id: str, *, release_at: datetime, ends_at: datetime
    ) -> None:
        self._exec(
            sa.update(t.rounds)
            .where(t.rounds.c.campaign_id == campaign_id, t.rounds.c.round_id == round_id)
            .values(release_at=release_at, ends_at=ends_at)
        )

    def commit_budget(self, campaign_id: str, amount_fen: int) -> bool:
        """Take ``amount_fen`` from the campaign's budget, atomically, if it is there."""
        assert amount_fen > 0
        c = t.campaigns.c
        result = self._exec(
            sa.update(t.campaigns)
            .where(c.id == campaign_id, c.committed_fen + amount_fen <= c.budget_fen)
            .values(committed_fen=c.committed_fen + amount_fen)
        )
        return result.rowcount == 1

    def release_budget(self, campaign_id: str, amount_fen: int) -> None:
        assert amount_fen > 0
        if self._pipelined is not None:
            sql = (
                "UPDATE campaigns SET committed_fen = committed_fen - %s "
                "WHERE id = %s AND committed_fen >= %s"
            )
            with self._driver_cursor(sql) as cursor:
                cursor.execute(sql, (amount_fen, campaign_id, amount_fen))
                self._rowcount_is(cursor, 1, "released more budget than was committed")
            return
        c = t.campaigns.c
        result = self._exec(
            sa.update(t.campaigns)
            .where(c.id == campaign_id, c.committed_fen >= amount_fen)
            .values(committed_fen=c.committed_fen - amount_fen)
        )
        assert result.rowcount == 1, "released more budget than was committed"

    def lock_campaign_budget(self, campaign_id: str) -> tuple[int, int]:
        """(budget_fen, committed_fen), the campaign row locked until commit."""
        query = sa.select(t.campaigns.c.budget_fen, t.campaigns.c.committed_fen).where(
            t.campaigns.c.id == campaign_id
        )
        if self._postgres:
            query = query.with_for_update()
        row = self._exec(query).one()
        return row.budget_fen, row.committed_fen

    def take_stock(self, key: StockKey, count: int) -> bool:
        """Count ``count`` more vouchers out of a stock, atomically, if it holds them.

        The row stays locked until commit (the claim's own transaction): a
        stock is never given out twice, whatever the gate believed.
        """
        assert count > 0
        s = t.stocks.c
        result = self._exec(
            sa.update(t.stocks)
            .where(*_stock_row(key), s.issued + count <= s.initial)
            .values(issued=s.issued + count)
        )
        return result.rowcount == 1

    def lock_stock(self, key: StockKey) -> tuple[int, int]:
        """(initial, issued) of a stock, the row locked until commit; (0, 0) if the
        campaign stocks no such template there."""
        query = sa.select(t.stocks.c.initial, t.stocks.c.issued).where(*_stock_row(key))
        if self._postgres:
            query = query.with_for_update()
        row = self._exec(query).first()
        return (0, 0) if row is None else (row.initial, row.issued)

    def stock_issued(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        """What each stock of the campaign counted out: (round, channel, template) -> n."""
        s = t.stocks.c
        rows = self._exec(
            sa.select(s.round_id, s.channel_id, s.template_id, s.issued).where(
                s.campaign_id == campaign_id
            )
        )
        return {(r.round_id, r.channel_id, r.template_id): r.issued for r in rows}

    def stock_initial(self, campaign_id: str) -> list[tuple[str, str, str, int]]:
        """(round_id, channel_id, template_id, initial) of every pool of the campaign."""
        s = t.stocks.c
        rows = self._exec(
            sa.select(s.round_id, s.channel_id, s.template_id, s.initial).where(
                s.campaign_id == campaign_id
            )
        )
        return [(r.round_id, r.channel_id, r.template_id, r.initial) for r in rows]

    def issued_counts(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        """Vouchers ever issued per (round, channel, template): what the stock gave out."""
        v = t.vouchers.c
        rows = self._exec(
            sa.select(v.round_id, v.channel_id, v.template_id, sa.func.count())
            .where(v.campaign_id == campaign_id)
            .group_by(v.round_id, v.channel_id, v.template_id)
        )
        return {(a, b, c): n for a, b, c, n in rows}

    def claim_counts(self, campaign_id: str) -> Iterator[tuple[str, str, str, int]]:
        """(round_id, channel_id, person_id, claims) for every person who claimed."""
        v = t.vouchers.c
        rows = self._exec(
            sa.select(v.round_id, v.channel_id, v.person_id, sa.func.count())
            .where(v.campaign_id == campaign_id)
            .group_by(v.round_id, v.channel_id, v.person_id)
        )
        yield from rows

    def voucher_state_counts(self, campaign_id: str) -> dict[str, tuple[int, int]]:
        """state -> (vouchers, Σ face_fen) for one campaign."""
        v = t.vouchers.c
        rows = self._exec(
            sa.select(v.state, sa.func.count(), sa.func.coalesce(sa.func.sum(v.face_fen), 0))
            .where(v.campaign_id == campaign_id)
            .group_by(v.state)
        )
        return {state: (int(n), int(face)) for state, n, face in rows}

    # -- merchants ----------------------------------------------------------------

    def upsert_merchant(
        self,
        *,
        merchant_id: str,
        name: str,
        mcc: str,
        region_code: str,
        modes: Sequence[str],
        acquirer_id: str,
        campaign_ids: Sequence[str],
        now: datetime,
    ) -> None:
        values = {
            "name": name,
            "mcc": mcc,
            "region_code": region_code,
            "modes": ",".join(sorted(modes)),
            "acquirer_id": acquirer_id,
            "active": True,
        }
        updated = self._exec(
            sa.update(t.merchants).where(t.merchants.c.id == merchant_id).values(**values)
        )
        if updated.rowcount == 0:
            self._exec(sa.insert(t.merchants).values(id=merchant_id, created_at=now, **values))
        self._exec(
            sa.delete(t.merchant_campaigns).where(t.merchant_campaigns.c.merchant_id == merchant_id)
        )
        if campaign_ids:
            self._exec(
                sa.insert(t.merchant_campaigns),
                [{"merchant_id": merchant_id, "campaign_id": c} for c in sorted(set(campaign_ids))],
            )

    def get_merchant(self, merchant_id: str) -> MerchantRow | None:
        row = self._exec(sa.select(t.merchants).where(t.merchants.c.id == merchant_id)).first()
        if row is None:
            return None
        enrolled = self._exec(
            sa.select(t.merchant_campaigns.c.campaign_id).where(
                t.merchant_campaigns.c.merchant_id == merchant_id
            )
        ).scalars()
        m = row._mapping
        return MerchantRow(
            id=m["id"],
            name=m["name"],
            mcc=m["mcc"],
            region_code=m["region_code"],
            modes=frozenset(m["modes"].split(",")),
            acquirer_id=m["acquirer_id"],
            active=m["active"],
            enrolled_campaigns=frozenset(enrolled),
        )

    def person_by_id_number_bidx(self, bidx: str) -> PersonRow | None:
        row = self._exec(sa.select(t.persons).where(t.persons.c.id_number_bidx == bidx)).first()
        return self._person(row) if row else None

    @staticmethod
    def _person(row: sa.Row[Any]) -> PersonRow:
        m = row._mapping
        return PersonRow(**{f: m[f] for f in PersonRow.__dataclass_fields__})

    def insert_person(self, values: Mapping[str, Any]) -> None:
        self._exec(sa.insert(t.persons).values(**values))

    def update_person_contact(self, person_id: str, values: Mapping[str, Any]) -> None:
        self._exec(sa.update(t.persons).where(t.persons.c.id == person_id).values(**values))

    def account_person(self, channel_id: str, channel_user_id: str) -> str | None:
        a = t.person_accounts.c
        return self._exec(
            sa.select(a.person_id).where(
                a.channel_id == channel_id, a.channel_user_id == channel_user_id
            )
        ).scalar_one_or_none()

    def person_account_in_channel(self, channel_id: str, person_id: str) -> str | None:
        a = t.person_accounts.c
        return self._exec(
            sa.select(a.channel_user_id).where(a.channel_id == channel_id, a.person_id == person_id)
        ).scalar_one_or_none()

    def insert_account(
        self, *, channel_id: str, channel_user_id: str, person_id: str, now: datetime
    ) -> None:
        self._exec(
            sa.insert(t.person_accounts).values(
                channel_id=channel_id,
                channel_user_id=channel_user_id,
                person_id=person_id,
                created_at=now,
            )
        )

    def blacklisted(self, bidxs: Sequence[str]) -> set[str]:
        if not bidxs:
            return set()
        b = t.blacklist.c
        rows = self._exec(
            sa.select(b.id_number_bidx).where(b.id_number_bidx.in_(sorted(set(bidxs))))
        )
        return {r[0] for r in rows}

    def add_blacklist(self, *, bidx: str, reason: str, created_by: str, now: datetime) -> bool:
        if self.blacklisted([bidx]):
            return False
        self._exec(
            sa.insert(t.blacklist).values(
                id_number_bidx=bidx, reason=reason, created_by=created_by, created_at=now
            )
        )
        return True

    def remove_blacklist(self, bidx: str) -> bool:
        result = self._exec(sa.delete(t.blacklist).where(t.blacklist.c.id_number_bidx == bidx))
        return result.rowcount == 1

    # -- vouchers -----------------------------------------------------------------

    def get_voucher(self, voucher_id: str) -> VoucherRow | None:
        row = self._exec(sa.select(t.vouchers).where(t.vouchers.c.id == voucher_id)).first()
        return _voucher(row) if row else None

    def lock_voucher(self, voucher_id: str) -> VoucherRow | None:
        """The voucher, its row locked until commit (PostgreSQL; SQLite serialises writers)."""
        query = sa.select(t.vouchers).where(t.vouchers.c.id == voucher_id)
        if self._postgres:
            query = query.with_for_update()
        row = self._exec(query).first()
        return _voucher(row) if row else None

    def get_vouchers(self, voucher_ids: Sequence[str]) -> dict[str, VoucherRow]:
        """Many vouchers by id, one query."""
        if not voucher_ids:
            return {}  # the usual batch: no retries, no query
        query = sa.select(t.vouchers).where(t.vouchers.c.id.in_(sorted(set(voucher_ids))))
        return {row.id: _voucher(row) for row in self._exec(query)}

    def redemption_reads(
        self,
        keys: Sequence[tuple[str, str]],
        voucher_ids: Sequence[str],
        accounts: Sequence[tuple[str, str]],
    ) -> RedemptionReads:
        """What a batch of redemptions reads before deciding: the answers stored for
        its (app_id, key)s, its vouchers locked in id order until commit, and the
        people of its (channel_id, channel_user_id)s.

        The transaction begins first (on SQLite it takes the write lock). On
        PostgreSQL the queries then go as one pipeline with the ``BEGIN``: one
        round trip instead of four. Under load a round trip cost about 1 ms
        against 0.15 ms idle (the writer, PostgreSQL and the HTTP workers share
        the cores), and a redemption batch was a chain of them.
        """
        keys_by_app: dict[str, set[str]] = defaultdict(set)
        for app_id, key in keys:
            keys_by_app[app_id].add(key)
        users_by_channel: dict[str, set[str]] = defaultdict(set)
        for channel_id, user in accounts:
            users_by_channel[channel_id].add(user)
        ids = sorted(set(voucher_ids))
        queries: list[tuple[str, str, str, tuple[Any, ...]]] = [
            (
                "answers",
                app_id,
                "SELECT key, request_hash, status_code, response_json FROM idempotency_keys "  # noqa: S608
                f"WHERE app_id = ? AND {self._in_array('key')}",
                (app_id, self._array(sorted(keys_by_app[app_id]))),
            )
            for app_id in sorted(keys_by_app)
        ]
        if ids:
            queries.append(
                (
                    "vouchers",
                    "",
                    f"SELECT {', '.join(_VOUCHER_COLUMNS)} FROM vouchers "  # noqa: S608
                    f"WHERE {self._in_array('id')} ORDER BY id"
                    + (" FOR UPDATE" if self._postgres else ""),  # SQLite: one writer at a time
                    (self._array(ids),),
                )
            )
        queries.extend(
            (
                "accounts",
                channel_id,
                "SELECT channel_user_id, person_id FROM person_accounts "  # noqa: S608
                f"WHERE channel_id = ? AND {self._in_array('channel_user_id')}",
                (channel_id, self._array(sorted(users_by_channel[channel_id]))),
            )
            for channel_id in sorted(users_by_channel)
        )
        if not self.connection.in_transaction():
            # Every read here goes to the driver; SQLAlchemy's begin is what makes
            # commit() commit them (and, on SQLite, takes the write lock first).
            self.connection.begin()
        results = self._driver_reads([(sql, params) for _, _, sql, params in queries])
        reads = RedemptionReads({}, {}, {})
        for (kind, scope, _sql, _params), rows in zip(queries, results, strict=True):
            if kind == "answers":
                reads.answers.update(
                    ((scope, key), (h, int(status), body)) for key, h, status, body in rows
                )
            elif kind == "vouchers":
                for row in rows:
                    m = dict(zip(_VOUCHER_COLUMNS, row, strict=True))
                    for name in ("valid_from", "valid_until", "issued_at"):
                        m[name] = _utc(m[name])
                    reads.vouchers[m["id"]] = _voucher_of(m)
            else:
                reads.persons.update(((scope, user), person) for user, person in rows)
        return reads

    def _driver_reads(self, queries: Sequence[tuple[str, Any]]) -> list[list[Any]]:
        """The rows of each (sql, params), ``?`` placeholders; on PostgreSQL all sent
        as one pipeline, one round trip, elsewhere one after the other."""
        if not self._postgres:
            return [self._driver_rows(sql, params) for sql, params in queries]
        assert self._pipelined is None, "reads go before the pipelined writes"
        driver = self.connection.connection.driver_connection
        assert driver is not None, "a unit of work holds a live connection"
        dbapi_error = self.connection.dialect.loaded_dbapi.Error
        cursors: list[Any] = []
        try:
            with driver.pipeline():
                for sql, params in queries:
                    cursors.append(driver.cursor())
                    cursors[-1].execute(sql.replace("?", "%s"), params)
            # Leaving the pipeline synced it: every cursor holds its rows.
            return [list(cursor.fetchall()) for cursor in cursors]
        except dbapi_error as error:
            raise translate(
                sa.exc.DBAPIError.instance("pipelined reads", None, error, dbapi_error)
            ) from error
        finally:
            for cursor in cursors:
                cursor.close()

    def move_vouchers(
        self, moves: Sequence[tuple[VoucherRow, VoucherState, str | None]], *, now: datetime
    ) -> None:
        """``move_voucher`` for many, in one statement; each must still be as it was read."""
        if not moves:
            return
        if self._postgres:
            self._move_vouchers_postgres(moves, now=now)
            return
        v = t.vouchers.c
        statement = (
            sa.update(t.vouchers)
            .where(
                v.id == sa.bindparam("b_id"),
                v.version == sa.bindparam("b_version"),
                v.state == sa.bindparam("b_state"),
            )
            .values(
                state=sa.bindparam("new_state"),
                updated_at=now,
                version=sa.bindparam("new_version"),
                redemption_id=sa.bindparam("new_redemption_id"),
            )
        )
        result = self._exec(
            statement,
            [
                {
                    "b_id": voucher.id,
                    "b_version": voucher.version,
                    "b_state": voucher.state.value,
                    "new_state": state.value,
                    "new_version": voucher.version + 1,
                    "new_redemption_id": redemption_id,
                }
                for voucher, state, redemption_id in moves
            ],
        )
        if self.connection.dialect.supports_sane_multi_rowcount:
            assert result.rowcount == len(moves), "a locked voucher changed under its lock"

    def _move_vouchers_postgres(
        self, moves: Sequence[tuple[VoucherRow, VoucherState, str | None]], *, now: datetime
    ) -> None:
        """One ``UPDATE … FROM unnest(…)``: the rows travel as six arrays, not one
        statement per voucher."""
        sql = (
            "UPDATE vouchers AS v SET state = u.new_state, updated_at = %s, "
            "version = u.new_version, redemption_id = u.new_redemption_id "
            "FROM unnest(%b::varchar[], %b::int[], %b::varchar[], %b::varchar[], %b::int[], "
            "%b::varchar[]) AS u(id, version, state, new_state, new_version, new_redemption_id) "
            "WHERE v.id = u.id AND v.version = u.version AND v.state = u.state"
        )
        params = (
            now,
            [voucher.id for voucher, _, _ in moves],
            [voucher.version for voucher, _, _ in moves],
            [voucher.state.value for voucher, _, _ in moves],
            [state.value for _, state, _ in moves],
            [voucher.version + 1 for voucher, _, _ in moves],
            [redemption_id for _, _, redemption_id in moves],
        )
        with self._driver_cursor(sql) as cursor:
            cursor.execute(sql, params)
            self._rowcount_is(cursor, len(moves), "a locked voucher changed under its lock")

    def insert_redemptions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._insert_many(t.redemptions, rows)

    def move_voucher(
        self,
        voucher: VoucherRow,
        *,
        state: VoucherState,
        now: datetime,
        redemption_id: str | None = None,
    ) -> bool:
        """Change state only if nobody changed the voucher since it was read."""
        v = t.vouchers.c
        result = self._exec(
            sa.update(t.vouchers)
            .where(v.id == voucher.id, v.version == voucher.version, v.state == voucher.state.value)
            .values(
                state=state.value,
                updated_at=now,
                version=voucher.version + 1,
                redemption_id=redemption_id,
            )
        )
        return result.rowcount == 1

    def person_vouchers(
        self,
        person_id: str,
        *,
        channel_id: str | None,
        after_id: str | None,
        limit: int,
        states: Sequence[str] | None = None,
    ) -> list[VoucherRow]:
        v = t.vouchers.c
        query = sa.select(t.vouchers).where(v.person_id == person_id).order_by(v.id).limit(limit)
        if channel_id is not None:
            query = query.where(v.channel_id == channel_id)
        if after_id is not None:
            query = query.where(v.id > after_id)
        if states is not None:
            query = query.where(v.state.in_(list(states)))
        return [_voucher(r) for r in self._exec(query)]

    def vouchers_past_validity(self, now: datetime, limit: int) -> list[VoucherRow]:
        v = t.vouchers.c
        rows = self._exec(
            sa.select(t.vouchers)
            .where(v.state == VoucherState.ISSUED.value, v.valid_until <= now)
            .order_by(v.valid_until, v.id)
            .limit(limit)
        )
        return [_voucher(r) for r in rows]

    # -- redemptions --------------------------------------------------------------

    def insert_redemption(self, values: Mapping[str, Any]) -> None:
        self._exec(sa.insert(t.redemptions).values(**values))

    def get_redemption(self, redemption_id: str) -> RedemptionRow | None:
        row = self._exec(
            sa.select(t.redemptions).where(t.redemptions.c.id == redemption_id)
        ).first()
        return _redemption(row) if row else None

    def move_redemption(self, redemption: RedemptionRow, *, status: str, now: datetime) -> bool:
        r = t.redemptions.c
        result = self._exec(
            sa.update(t.redemptions)
            .where(
                r.id == redemption.id,
                r.version == redemption.version,
                r.status == redemption.status,
            )
            .values(status=status, updated_at=now, version=redemption.version + 1)
        )
        return result.rowcount == 1

    def locks_past_timeout(self, now: datetime, limit: int) -> list[RedemptionRow]:
        r = t.redemptions.c
        rows = self._exec(
            sa.select(t.redemptions)
            .where(r.status == "locked", r.lock_expires_at <= now)
            .order_by(r.lock_expires_at, r.id)
            .limit(limit)
        )
        return [_redemption(row) for row in rows]

    # -- ledger, outbox, audit ----------------------------------------------------

    def post(
        self,
        entry: Entry,
        *,
        campaign_id: str,
        now: datetime,
        voucher_count: int = 1,
        voucher_id: str | None = None,
        redemption_id: str | None = None,
    ) -> None:
        result = self._exec(
            sa.insert(t.ledger_entries).values(
                campaign_id=campaign_id,
                kind=entry.kind.value,
                voucher_count=voucher_count,
                voucher_id=voucher_id,
                redemption_id=redemption_id,
                created_at=now,
            )
        )
        entry_id = result.inserted_primary_key[0]  # type: ignore[index]  # one-row insert
        self._exec(
            sa.insert(t.ledger_postings),
            [
                {
                    "entry_id": entry_id,
                    "account": p.account,
                    "campaign_id": campaign_id,
                    "amount_fen": p.amount_fen,
                }
                for p in entry.postings
            ],
        )

    def post_many(self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime) -> None:
        """``post`` for many entries: (entry, {campaign_id, voucher_id, redemption_id})."""
        if not posts:
            return
        if self._pipelined is not None:
            self._post_many_pipelined(posts, now=now)
            return
        e = t.ledger_entries
        ids = (
            self._exec(
                sa.insert(e).returning(e.c.id, sort_by_parameter_order=True),
                [
                    {
                        "campaign_id": where["campaign_id"],
                        "kind": entry.kind.value,
                        "voucher_count": 1,
                        "voucher_id": where.get("voucher_id"),
                        "redemption_id": where.get("redemption_id"),
                        "created_at": now,
                    }
                    for entry, where in posts
                ],
            )
            .scalars()
            .all()
        )
        assert len(ids) == len(posts)
        self._insert_many(
            t.ledger_postings,
            [
                {
                    "entry_id": entry_id,
                    "account": p.account,
                    "campaign_id": where["campaign_id"],
                    "amount_fen": p.amount_fen,
                }
                for entry_id, (entry, where) in zip(ids, posts, strict=True)
                for p in entry.postings
            ],
        )

    def _post_many_pipelined(
        self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """Entries and their postings in one statement, so a pipeline need not stop for
        the entries' ids: the postings find their entry by its redemption id."""
        redemption_ids = [where["redemption_id"] for _, where in posts]
        assert None not in redemption_ids, "pipelined entries are one per redemption"
        assert len(set(redemption_ids)) == len(posts), "pipelined entries are one per redemption"
        postings = [
            (where["redemption_id"], p.account, where["campaign_id"], p.amount_fen)
            for entry, where in posts
            for p in entry.postings
        ]
        sql = (
            "WITH e AS (INSERT INTO ledger_entries "
            "(campaign_id, kind, voucher_count, voucher_id, redemption_id, created_at) "
            "SELECT u.campaign_id, u.kind, 1, u.voucher_id, u.redemption_id, %s "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) "
            "AS u(campaign_id, kind, voucher_id, redemption_id) "
            "RETURNING id, redemption_id) "
            "INSERT INTO ledger_postings (entry_id, account, campaign_id, amount_fen) "
            "SELECT e.id, p.account, p.campaign_id, p.amount_fen "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[]) "
            "AS p(redemption_id, account, campaign_id, amount_fen) "
            "JOIN e ON e.redemption_id = p.redemption_id"
        )
        params = (
            now,
            [where["campaign_id"] for _, where in posts],
            [entry.kind.value for entry, _ in posts],
            [where.get("voucher_id") for _, where in posts],
            redemption_ids,
            *([row[i] for row in postings] for i in range(4)),
        )
        with self._driver_cursor(sql) as cursor:
            cursor.execute(sql, params)
            self._rowcount_is(cursor, len(postings), "every posting found its entry")

    def balances(self, campaign_id: str) -> dict[str, int]:
        p = t.ledger_postings.c
        rows = self._exec(
            sa.select(p.account, sa.func.sum(p.amount_fen))
            .where(p.campaign_id == campaign_id)
            .group_by(p.account)
        )
        return {account: int(total) for account, total in rows}

    def add_outbox(
        self, *, event_id: str, topic: str, payload: Mapping[str, Any], now: datetime
    ) -> None:
        self._exec(
            sa.insert(t.outbox).values(
                id=event_id,
                topic=topic,
                payload_json=json.dumps(payload, sort_keys=True, separators=(",", ":")),
                status="pending",
                attempts=0,
                created_at=now,
                next_attempt_at=now,
            )
        )

    def add_outbox_many(
        self, events: Sequence[tuple[str, str, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``add_outbox`` for many (event_id, topic, payload)."""
        self._insert_many(
            t.outbox,
            [
                {
                    "id": event_id,
                    "topic": topic,
                    "payload_json": json.dumps(payload, sort_keys=True, separators=(",", ":")),
                    "status": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                }
                for event_id, topic, payload in events
            ],
        )

    def outbox_topics(self) -> dict[str, int]:
        o = t.outbox.c
        rows = self._exec(sa.select(o.topic, sa.func.count()).group_by(o.topic))
        return {topic: int(n) for topic, n in rows}

    def append_audit(
        self, *, actor: str, action: str, target: str, details: Mapping[str, Any], now: datetime
    ) -> None:
        """Append to the hash-chained audit log; a concurrent append collides on ``seq``."""
        a = t.audit_log.c
        last = self._exec(sa.select(a.seq, a.hash).order_by(a.seq.desc()).limit(1)).first()
        seq, prev_hash = (last.seq + 1, last.hash) if last else (1, "0" * 64)
        details_json = json.dumps(
            details, sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        digest = hashlib.sha256(
            "\n".join(
                [str(seq), now.isoformat(), actor, action, target, details_json, prev_hash]
            ).encode()
        ).hexdigest()
        self._exec(
            sa.insert(t.audit_log).values(
                seq=seq,
                at=now,
                actor=actor,
                action=action,
                target=target,
                details_json=details_json,
                prev_hash=prev_hash,
                hash=digest,
            )
        )

    def idempotent_answer(self, app_id: str, key: str) -> tuple[str, int, str] | None:
        """(request_hash, status_code, response_json) stored for a key, if any."""
        k = t.idempotency_keys.c
        row = self._exec(
            sa.select(k.request_hash, k.status_code, k.response_json).where(
                k.app_id == app_id, k.key == key
            )
        ).first()
        return (row.request_hash, row.status_code, row.response_json) if row else None

    def store_answers(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._insert_many(t.idempotency_keys, rows)
