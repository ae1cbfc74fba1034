"""The migrations build the schema the code declares, on both stores, and go down
and up again without losing rows: no table, column or index exists only in
``tables.py`` (a query that works in a test built from metadata and fails on a
migrated production database) or only in a migration."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from lequan.adapters.sql import migrate
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.engine import create_engine

NOW = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)


def test_migrations_build_the_declared_schema(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), t.metadata) == []
            inspector = sa.inspect(connection)
            for table in t.metadata.sorted_tables:
                # Alembic does not compare primary keys; their column order decides
                # what an index can be searched by (migration 0003).
                declared = [c.name for c in table.primary_key.columns]
                built = inspector.get_pk_constraint(table.name)["constrained_columns"]
                assert built == declared, table.name
    finally:
        engine.dispose()


def test_idempotency_keys_survive_a_downgrade_and_upgrade(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    row = {
        "app_id": "acq-1",
        "key": "k-1",
        "request_hash": "h",
        "status_code": 201,
        "response_json": "{}",
    }
    try:
        migrate.upgrade(engine)
        with engine.connect() as connection:
            connection.execute(sa.insert(t.idempotency_keys).values(**row, created_at=NOW))
            connection.commit()
        migrate.downgrade(engine, "0002")
        migrate.upgrade(engine)
        with engine.connect() as connection:
            stored = connection.execute(
                sa.select(t.idempotency_keys.c.app_id, t.idempotency_keys.c.key)
            ).all()
            assert [tuple(r) for r in stored] == [("acq-1", "k-1")]
            # Still one answer per (app, key): a second insert of the same pair is refused.
            with pytest.raises(sa.exc.IntegrityError):
                connection.execute(sa.insert(t.idempotency_keys).values(**row, created_at=NOW))
    finally:
        engine.dispose()
