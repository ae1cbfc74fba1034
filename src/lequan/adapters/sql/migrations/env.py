"""Alembic environment: the connection comes from ``lequan.adapters.sql.migrate``."""

from __future__ import annotations

from alembic import context

from lequan.adapters.sql.tables import metadata

config = context.config
connection = config.attributes.get("connection")
assert connection is not None, "run migrations through lequan.adapters.sql.migrate"

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
