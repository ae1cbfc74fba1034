"""Run the store's Alembic migrations; the only way the schema changes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ["current_revision", "downgrade", "head_revision", "revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _run_outside_begin_hook(engine: sa.Engine, action: str, target: str) -> None:
    # Alembic manages its own transaction; on SQLite our "begin" hook emits
    # BEGIN IMMEDIATE, which Alembic's own begin works with unchanged.
    with engine.connect() as connection, _foreign_keys_checked_after(connection):
        config = _config(connection)
        if action == "upgrade":
            command.upgrade(config, target)
        else:
            command.downgrade(config, target)
        connection.commit()


@contextmanager
def _foreign_keys_checked_after(connection: sa.Connection) -> Iterator[None]:
    """On SQLite, foreign keys off while the schema changes, then checked once.

    SQLite changes a column by building the table anew and dropping the old
    one, which a table others refer to cannot survive with foreign keys on
    (migration 0008 rebuilds ``persons``). The pragma is a no-op inside a
    transaction, so it is set on the driver's connection before Alembic
    begins one; SQLite's own procedure for such changes.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
        broken = driver.execute("PRAGMA foreign_key_check").fetchall()
        assert not broken, f"a migration left rows without their parent: {broken[:5]}"
    finally:
        driver.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: sa.Engine, target: str = "head") -> None:
    _run_outside_begin_hook(engine, "upgrade", target)


def downgrade(engine: sa.Engine, target: str = "base") -> None:
    _run_outside_begin_hook(engine, "downgrade", target)


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def revision(engine: sa.Engine, message: str) -> None:
    """Autogenerate a new revision against ``engine`` (a developer's tool)."""
    with engine.connect() as connection:
        command.revision(_config(connection), message=message, autogenerate=True)
