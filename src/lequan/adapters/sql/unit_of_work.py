"""The SQL store: hands out units of work, each one transaction over one connection
whose repositories share it.

A unit of work rolls back unless ``commit()`` is called. Queries live in
the repositories, named for what they mean, so services never write SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import sqlalchemy as sa

from lequan.adapters.sql import migrate
from lequan.adapters.sql.campaigns import SqlCampaigns
from lequan.adapters.sql.core import SqlSession
from lequan.adapters.sql.draws import SqlDraws
from lequan.adapters.sql.errors import translated
from lequan.adapters.sql.idempotency import SqlIdempotency
from lequan.adapters.sql.keys import SqlKeyChecks
from lequan.adapters.sql.ledger import SqlLedger
from lequan.adapters.sql.outbox import SqlOutbox
from lequan.adapters.sql.people import SqlPeople
from lequan.adapters.sql.products import SqlProducts
from lequan.adapters.sql.qualifications import SqlQualifications
from lequan.adapters.sql.redemption_risk import SqlRedemptionRisk
from lequan.adapters.sql.risk import SqlRisk
from lequan.adapters.sql.vouchers import SqlVouchers
from lequan.ports import Store

__all__ = ["SqlStore", "SqlUnitOfWork", "sql_store"]


class SqlUnitOfWork:
    """One transaction: the repositories of every aggregate over one connection."""

    def __init__(self, connection: sa.Connection) -> None:
        self._session = SqlSession(connection)
        self.campaigns = SqlCampaigns(self._session)
        self.people = SqlPeople(self._session)
        self.vouchers = SqlVouchers(self._session)
        self.ledger = SqlLedger(self._session, self.campaigns)
        self.idempotency = SqlIdempotency(self._session)
        self.keys = SqlKeyChecks(self._session)
        self.outbox = SqlOutbox(self._session)
        self.qualifications = SqlQualifications(self._session)
        self.products = SqlProducts(self._session)
        self.risk = SqlRisk(self._session)
        self.redemption_risk = SqlRedemptionRisk(self._session)
        self.draws = SqlDraws(self._session)

    @property
    def connection(self) -> sa.Connection:
        """The transaction's connection, for tests and lab tools that read tables."""
        return self._session.connection

    def commit(self) -> None:
        self._session.commit()

    def rollback(self) -> None:
        self._session.rollback()

    def pipeline(self) -> AbstractContextManager[None]:
        """The writes of the block sent without waiting for each answer (PostgreSQL)."""
        return self._session.pipeline()


class SqlStore:
    """The source of truth: hands out units of work over one engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @contextmanager
    def unit_of_work(self, *, readonly: bool = False) -> Iterator[SqlUnitOfWork]:
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
            uow = SqlUnitOfWork(connection)
            try:
                yield uow
            finally:
                if connection.in_transaction():
                    connection.rollback()

    def ping(self) -> None:
        """Ask the store one trivial question; ``StoreUnavailable`` when it does not answer."""
        with translated(), self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def schema_revisions(self) -> tuple[str | None, str | None]:
        with translated():
            return migrate.current_revision(self.engine), migrate.head_revision()

    def upgrade(self) -> None:
        with translated():
            migrate.upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def sql_store(store: Store) -> SqlStore:
    """The SQL store behind the port, for the lab tools and tests that read its tables."""
    assert isinstance(store, SqlStore), "this needs the SQL store"
    return store
