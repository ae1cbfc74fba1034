"""idempotency keys indexed key first

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 16:00:00

The primary key of idempotency_keys was (app_id, key). A batch's lookup,
``app_id = $1 AND key = ANY($2)``, could then be planned as a scan of the
app's whole range with the keys as a filter (PostgreSQL did so whenever its
statistics were older than the table: a redemption batch read every answer
its acquirer had stored, 7 ms per batch after 4,000 redemptions and growing
with each). Key first, the keys are always what the index is searched by;
the app narrows each probe. The same order as ``uq_vouchers_claim_key``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_constraint("pk_idempotency_keys", type_="primary")
        batch_op.create_primary_key("pk_idempotency_keys", ["key", "app_id"])


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_constraint("pk_idempotency_keys", type_="primary")
        batch_op.create_primary_key("pk_idempotency_keys", ["app_id", "key"])
