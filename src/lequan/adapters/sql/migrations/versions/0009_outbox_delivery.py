"""the outbox is delivered to central; trade-in qualifications are locked there

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:15:00

The outbox rows were written and never sent. The relay now leases due
rows, delivers them to the central platform and marks them delivered, or
dead after its last attempt (``last_error`` says why). Central applies the
events of one voucher in order: ``seq`` numbers them 1, 2, ... per voucher,
and ``(voucher_id, seq)`` is unique so two writers cannot give one number
twice. The relay reads due rows by ``(status, next_attempt_at, id)``.

A trade-in voucher is issued only after central locked the person's
qualification for its category. ``qualification_locks`` records each lock
before central is asked, so a lock whose voucher never committed is found
and released; ``persons.pseudonym`` keeps the national pseudonym central
evaluated for the person (computed once, at first use).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("voucher_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.String(length=200), nullable=True))
        batch_op.drop_index("ix_outbox_status_next")
        batch_op.create_index(
            "ix_outbox_status_next", ["status", "next_attempt_at", "id"], unique=False
        )
        batch_op.create_index("ux_outbox_voucher_seq", ["voucher_id", "seq"], unique=True)
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pseudonym", sa.String(length=64), nullable=True))
    op.create_table(
        "qualification_locks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("voucher_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('held','issued','released','refused')",
            name=op.f("ck_qualification_locks_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_qualification_locks")),
        sa.UniqueConstraint("voucher_id", name=op.f("uq_qualification_locks_voucher_id")),
    )
    with op.batch_alter_table("qualification_locks", schema=None) as batch_op:
        batch_op.create_index(
            "ix_qualification_locks_person", ["person_id", "category", "state"], unique=False
        )
        batch_op.create_index("ix_qualification_locks_state", ["state", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_table("qualification_locks")
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_column("pseudonym")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ux_outbox_voucher_seq")
        batch_op.drop_index("ix_outbox_status_next")
        batch_op.create_index("ix_outbox_status_next", ["status", "next_attempt_at"], unique=False)
        batch_op.drop_column("last_error")
        batch_op.drop_column("seq")
        batch_op.drop_column("voucher_id")
