"""Run the store's Alembic migrations; the only way the schema changes."""

from __future__ import annotations

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
    with engine.connect() as connection:
        config = _config(connection)
        if action == "upgrade":
            command.upgrade(config, target)
        else:
            command.downgrade(config, target)
        connection.commit()


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
