"""The SQL adapter's core: one transaction's connection and the driver-level
helpers every repository shares (dialect differences, pipelining, COPY,
error translation).

SQLAlchemy's per-row parameter processing costs several times what the
database itself spends on a 1,000-row batch, so the hot queries go to the
driver with one array parameter and tuples of values; everything else is
SQLAlchemy Core. Every statement passes through ``translated()``, so the
repositories raise the store port's errors only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.errors import translate, translated
from lequan.ports.errors import StoreError

__all__ = ["COPY_ROWS_MIN", "SqlSession", "copy_time", "sqlite_time", "utc"]

# Below this many rows an INSERT costs less than a COPY (one round trip to its two).
COPY_ROWS_MIN = 8

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


def sqlite_time(value: datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime reads back (naive UTC)."""
    assert value.tzinfo is not None
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def copy_time(value: datetime) -> str:
    """A ``timestamptz`` as ``COPY`` text: ISO 8601 with its offset, whatever DateStyle.

    Rendered once per distinct instant by the caller: psycopg dumping a
    datetime per value was most of a claim batch's ``COPY`` (docs/benchmarks.md).
    """
    assert value.tzinfo is not None
    return value.astimezone(UTC).isoformat()


def _copy_value(value: Any) -> Any:
    return copy_time(value) if isinstance(value, datetime) else value


def utc(value: datetime | str) -> datetime:
    """A driver's datetime as ``UtcDateTime`` gives it (aware, in UTC); SQLite's
    driver gives the text ``sqlite_time`` wrote (naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SqlSession:
    """One transaction's connection, shared by the repositories of a unit of work."""

    def __init__(self, connection: sa.Connection) -> None:
        self.connection = connection
        self.postgres = connection.dialect.name == "postgresql"
        # Inside ``pipeline()``: the cursors whose results are still on their way, and
        # the checks to run on them once they are in.
        self._pipelined: list[Any] | None = None
        self._pipeline_checks: list[Callable[[], None]] = []
        # A statement failed: the transaction is lost until rolled back, on every
        # dialect (PostgreSQL aborts it; SQLite would go on and commit the rest).
        self._lost = False

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Run a statement: refused when the transaction is lost; its SQLAlchemy
        error leaves as the port's, and loses the transaction."""
        if self._lost:
            raise StoreError("the transaction was lost to an earlier error; roll it back")
        try:
            with translated():
                yield
        except StoreError:
            self._lost = True
            raise

    def _lose(self, statement: str, error: Exception, dbapi_error: type[Exception]) -> StoreError:
        """The port's error for a driver's, the transaction lost with it."""
        self._lost = True
        return translate(sa.exc.DBAPIError.instance(statement, None, error, dbapi_error))

    def _begin(self) -> None:
        """Begin SQLAlchemy's transaction before a statement goes to the driver: with
        none begun, ``commit()`` would do nothing and the pool roll the writes back."""
        if not self.connection.in_transaction():
            with self._guarded():
                self.connection.begin()

    def commit(self) -> None:
        if self._lost:
            self.rollback()
            raise StoreError("the transaction was lost to an earlier error; nothing committed")
        with self._guarded():
            self.connection.commit()

    def driver_sql(self, sql: str, params: Any = None) -> Any:
        """Run dialect SQL written with ``?`` placeholders (turned into %s for psycopg)."""
        assert self._pipelined is None, "no SQLAlchemy statement inside pipeline()"
        if self.postgres:
            sql = sql.replace("?", "%s")
        with self._guarded():
            return self.connection.exec_driver_sql(sql, params)

    def driver_rows(self, sql: str, params: Any) -> list[Any]:
        """The rows of a query as the driver's own tuples, on this transaction's connection.

        A 1,000-row read through SQLAlchemy's result object costs more than
        the query; the hot reads of the claim path take the driver's rows.
        """
        if self.postgres:
            sql = sql.replace("?", "%s")
        with self.driver_cursor(sql) as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    @contextmanager
    def driver_cursor(self, statement: str) -> Iterator[Any]:
        """A driver cursor on this transaction's connection whose errors come back as
        the port's, as from any other statement: a unique violation is a
        ``DuplicateKey``, an unreachable or broken store ``StoreUnavailable``; the
        transaction is begun first, so ``commit()`` keeps what the cursor wrote.

        Inside ``pipeline()`` the cursor stays open until the pipeline's results
        are in."""
        if self._lost:
            raise StoreError("the transaction was lost to an earlier error; roll it back")
        self._begin()
        dbapi_error = self.connection.dialect.loaded_dbapi.Error
        cursor = self.connection.connection.cursor()
        try:
            yield cursor
        except dbapi_error as error:
            raise self._lose(statement, error, dbapi_error) from error
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
        the port's error at the end of the block and the transaction is then
        lost, as with any failed statement. Only the pipeline-aware writes may
        run inside (``move_vouchers``, ``ledger.record_many``, the budget
        release and the inserts); elsewhere than on PostgreSQL the block runs
        as it is.
        """
        if not self.postgres:
            yield
            return
        assert self._pipelined is None, "pipelines do not nest"
        self._begin()
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
            raise self._lose("pipeline", error, dbapi_error) from error
        finally:
            cursors, self._pipelined, self._pipeline_checks = self._pipelined, None, []
            for cursor in cursors:
                cursor.close()

    def rowcount_is(self, cursor: Any, expected: int, message: str) -> None:
        """Assert a statement's row count: now, or once a pipeline's results are in."""

        def check() -> None:
            assert cursor.rowcount == expected, message

        if self._pipelined is None:
            check()
        else:
            self._pipeline_checks.append(check)

    def in_array(self, column: str) -> str:
        if self.postgres:
            return f"{column} = ANY(?)"
        return f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608  # our column names

    def array(self, values: Sequence[str]) -> Any:
        return list(values) if self.postgres else json.dumps(list(values))

    def copy_rows(self, table: str, columns: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows into a PostgreSQL table with ``COPY``, in this transaction.

        COPY takes a batch of rows several times faster than ``executemany``
        (the driver writes the stream in C).
        """
        if not rows:
            return
        statement = f"COPY {table} ({columns}) FROM STDIN"
        with self.driver_cursor(statement) as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def insert_many(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows that all name the same columns into ``table``, in one statement: ``COPY``
        on PostgreSQL for a batch (``executemany`` there runs one statement per
        row; ``COPY`` costs a round trip more, so a few rows are inserted as
        such), an ``INSERT … SELECT FROM unnest`` inside ``pipeline()`` (which
        cannot carry ``COPY``), one ``executemany`` on SQLite. Every value is
        given: no column default is used."""
        if not rows:
            return
        if self._pipelined is not None:
            self.insert_unnest(table, rows)
            return
        if not self.postgres or len(rows) < COPY_ROWS_MIN:
            self.exec(sa.insert(table), list(rows))
            return
        columns = tuple(rows[0])
        assert all(len(row) == len(columns) for row in rows), "rows name the same columns"
        self.copy_rows(
            table.name,
            ", ".join(columns),
            [tuple(_copy_value(row[c]) for c in columns) for row in rows],
        )

    def insert_unnest(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows into a PostgreSQL table as one ``INSERT … SELECT FROM unnest(…)``, one
        array per column: the form a pipeline can carry (``COPY`` cannot)."""
        columns = tuple(rows[0])
        assert all(len(row) == len(columns) for row in rows), "rows name the same columns"
        sql = _unnest_insert_sql(table.name, columns)
        with self.driver_cursor(sql) as cursor:
            cursor.execute(sql, [[row[c] for row in rows] for c in columns])

    def rollback(self) -> None:
        self._lost = False
        with translated():
            self.connection.rollback()

    def exec(
        self, statement: sa.Executable, params: Any = None
    ) -> sa.CursorResult[*tuple[Any, ...]]:
        # Inside a pipeline SQLAlchemy would read a row count or a description that is
        # not there yet: only the pipeline-aware writes may run there.
        assert self._pipelined is None, "no SQLAlchemy statement inside pipeline()"
        with self._guarded():
            return self.connection.execute(statement, params)

    def driver_reads(self, queries: Sequence[tuple[str, Any]]) -> list[list[Any]]:
        """The rows of each (sql, params), ``?`` placeholders; on PostgreSQL all sent
        as one pipeline, one round trip, elsewhere one after the other."""
        if not self.postgres:
            return [self.driver_rows(sql, params) for sql, params in queries]
        assert self._pipelined is None, "reads go before the pipelined writes"
        self._begin()
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
            raise self._lose("pipelined reads", error, dbapi_error) from error
        finally:
            for cursor in cursors:
                cursor.close()

    @property
    def pipelined(self) -> bool:
        """True inside ``pipeline()``: only the pipeline-aware writes may run."""
        return self._pipelined is not None
