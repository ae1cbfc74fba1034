"""one row per claim: the claim's idempotency key on its voucher

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 13:40:00

A claim used to write its voucher and, beside it, its answer in
idempotency_keys: two rows, three B-trees and ~400 bytes of JSON per claim.
The key and the request's digest now go on the voucher row, and a retry's
answer is rebuilt from the voucher's as-issued fields. Earlier claims keep
their stored answers; both are looked up.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vouchers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_app_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("claim_key", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("claim_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("uq_vouchers_claim_key", ["claim_key", "claim_app_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("vouchers", schema=None) as batch_op:
        batch_op.drop_index("uq_vouchers_claim_key")
        batch_op.drop_column("claim_hash")
        batch_op.drop_column("claim_key")
        batch_op.drop_column("claim_app_id")
