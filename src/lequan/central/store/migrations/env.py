"""Alembic environment of central's store: the connection comes from
``lequan.central.store.migrate``; the version table is central's own."""

from __future__ import annotations

from alembic import context

from lequan.central.store.tables import metadata

VERSION_TABLE = "central_alembic_version"

config = context.config
connection = config.attributes.get("connection")
assert connection is not None, "run migrations through lequan.central.store.migrate"

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    # A database shared with a province: only central's own tables are compared.
    include_name=lambda name, type_, _parent: type_ != "table" or str(name).startswith("central_"),
)
with context.begin_transaction():
    context.run_migrations()
