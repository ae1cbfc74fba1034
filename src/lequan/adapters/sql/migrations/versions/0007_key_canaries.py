"""the store remembers which key ring its data is written under

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 22:10:00

A process started with another key file answered every signed call with
a 500, filed a known ID number as a second person and let blacklisted
people through, while ``/readyz`` said ready. ``key_canaries`` holds a
digest of a fixed label under the blind-index key and a fixed text
encrypted under each key id that was ever active; ``serve``, the workers
and every CLI command that reads the store refuse a key ring that does
not reproduce them.

The table starts empty: the first start after this upgrade writes the
canaries, after checking the key ring against values the store already
holds (app secrets, ID numbers and their blind index), so a wrong key
file is never pinned over existing data.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "key_canaries",
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_key_canaries")),
    )


def downgrade() -> None:
    op.drop_table("key_canaries")
