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


def test_an_inactive_merchant_is_suspended_by_0011_and_a_suspended_one_inactive_below_it(
    empty_database_url: str,
) -> None:
    engine = create_engine(empty_database_url)

    def merchant(merchant_id: str, **values: object) -> dict[str, object]:
        return {
            "id": merchant_id,
            "name": merchant_id,
            "mcc": "5812",
            "region_code": "310104",
            "modes": "in_store",
            "acquirer_id": "acq-1",
            "created_at": NOW,
            **values,
        }

    try:
        migrate.upgrade(engine, "0010")
        with engine.begin() as connection:
            before = sa.table(
                "merchants",
                *(sa.column(c) for c in merchant("x", active=True)),
            )
            connection.execute(
                sa.insert(before),
                [merchant("m-open", active=True), merchant("m-stopped", active=False)],
            )
        migrate.upgrade(engine)
        with engine.begin() as connection:
            m = t.merchants.c
            rows = {
                r.id: (r.suspended_by, r.suspension_reason is not None, r.suspended_at is not None)
                for r in connection.execute(sa.select(t.merchants))
            }
            assert rows == {
                "m-open": (None, False, False),
                "m-stopped": ("migration-0011", True, True),
            }
            # A suspension is whole or not at all.
            with pytest.raises(sa.exc.IntegrityError), connection.begin_nested():
                connection.execute(
                    sa.update(t.merchants).where(m.id == "m-open").values(suspended_by="bob")
                )
            connection.execute(
                sa.update(t.merchants)
                .where(m.id == "m-open")
                .values(suspended_at=NOW, suspended_by="bob", suspension_reason="why")
            )
            connection.execute(
                sa.update(t.merchants)
                .where(m.id == "m-stopped")
                .values(suspended_at=None, suspended_by=None, suspension_reason=None)
            )
        migrate.downgrade(engine, "0010")
        with engine.connect() as connection:
            active = {
                r.id: bool(r.active)
                for r in connection.execute(sa.text("SELECT id, active FROM merchants"))
            }
        assert active == {"m-open": False, "m-stopped": True}
    finally:
        engine.dispose()
