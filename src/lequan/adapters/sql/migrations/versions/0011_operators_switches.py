"""the operators' switches: a campaign's redemptions paused, a merchant suspended

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 09:00:00

Pausing a campaign stopped its claims and nothing else: its vouchers went on
being spent. ``campaigns.redemptions_paused`` is a switch of its own, apart
from the status, so claims and redemptions are stopped and started
independently.

A merchant had ``active``, which only a merchant import wrote (always true),
so no operator could stop one merchant. A suspension is now the operator's
record, whole or not at all: when, by whom and why (``suspended_at``,
``suspended_by``, ``suspension_reason``). It replaces ``active``: a merchant
that was inactive is suspended by ``migration-0011``, and a downgrade makes a
suspended merchant inactive. An import never lifts a suspension.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHOLE = (
    "(suspended_at IS NULL AND suspended_by IS NULL AND suspension_reason IS NULL) OR "
    "(suspended_at IS NOT NULL AND suspended_by IS NOT NULL AND suspension_reason IS NOT NULL)"
)


def upgrade() -> None:
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("redemptions_paused", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspended_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("suspended_by", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("suspension_reason", sa.String(length=200), nullable=True))
    merchants = sa.table(
        "merchants",
        sa.column("active", sa.Boolean()),
        sa.column("suspended_at", sa.DateTime(timezone=True)),
        sa.column("suspended_by", sa.String(64)),
        sa.column("suspension_reason", sa.String(200)),
    )
    op.execute(
        merchants.update()
        .where(merchants.c.active.is_(False))
        .values(
            suspended_at=sa.func.current_timestamp(),
            suspended_by="migration-0011",
            suspension_reason="inactive before the operators' switches (migration 0011)",
        )
    )
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.drop_column("active")
        batch_op.create_check_constraint(op.f("ck_merchants_suspension_whole"), _WHOLE)


def downgrade() -> None:
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_merchants_suspension_whole"), type_="check")
        batch_op.add_column(
            sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    merchants = sa.table(
        "merchants", sa.column("active", sa.Boolean()), sa.column("suspended_at", sa.DateTime())
    )
    op.execute(merchants.update().where(merchants.c.suspended_at.is_not(None)).values(active=False))
    with op.batch_alter_table("merchants", schema=None) as batch_op:
        batch_op.alter_column("active", server_default=None)
        batch_op.drop_column("suspension_reason")
        batch_op.drop_column("suspended_by")
        batch_op.drop_column("suspended_at")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("redemptions_paused")
