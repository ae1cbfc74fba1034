"""Run central's Alembic migrations (its own scripts, its own version table)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

__all__ = ["VERSION_TABLE", "current_revision", "downgrade", "head_revision", "upgrade"]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "central_alembic_version"


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(engine: sa.Engine, action: str, target: str) -> None:
    with engine.connect() as connection:
        config = _config(connection)
        if action == "upgrade":
            command.upgrade(config, target)
        else:
            command.downgrade(config, target)
        connection.commit()


def upgrade(engine: sa.Engine, target: str = "head") -> None:
    _run(engine, "upgrade", target)


def downgrade(engine: sa.Engine, target: str = "base") -> None:
    _run(engine, "downgrade", target)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()
