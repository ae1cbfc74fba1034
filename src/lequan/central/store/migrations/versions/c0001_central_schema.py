"""central's first schema: provinces, keys, qualifications, locks, serials, events

Revision ID: c0001
Revises:
Create Date: 2026-12-08 10:00:00

The national platform's own store (issue 14): the registry of trade-in
qualifications (one row per pseudonym and category, locked by every batch
that counts its slots), the locks that take the slots, the national
registry of subsidised serial numbers and IMEIs, every province's events
with the last applied seq of each voucher, and a journal of facts for the
day's record.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_AT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "central_provinces",
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("app_id", sa.String(64), nullable=False),
        sa.Column("secret_key_id", sa.String(32), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_central_provinces")),
        sa.UniqueConstraint("app_id", name=op.f("uq_central_provinces_app_id")),
    )
    op.create_table(
        "central_keys",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("value_enc", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_central_keys")),
    )
    op.create_table(
        "central_qualifications",
        sa.Column("id", sa.String(105), nullable=False),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("category", sa.String(40), nullable=False),
        sa.Column("created_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_central_qualifications")),
    )
    op.create_table(
        "central_revocations",
        sa.Column("qualification_id", sa.String(105), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("revoked_by", sa.String(64), nullable=False),
        sa.Column("revoked_at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("qualification_id", name=op.f("pk_central_revocations")),
    )
    op.create_table(
        "central_locks",
        sa.Column("lock_id", sa.String(64), nullable=False),
        sa.Column("province", sa.String(32), nullable=False),
        sa.Column("qualification_id", sa.String(105), nullable=False),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("category", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("items_max", sa.Integer(), nullable=False),
        sa.Column("expires_at", _AT, nullable=True),
        sa.Column("voucher_id", sa.String(64), nullable=True),
        sa.Column("redemption_id", sa.String(64), nullable=True),
        sa.Column("price_fen", sa.BigInteger(), nullable=False),
        sa.Column("subsidy_fen", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("created_at", _AT, nullable=False),
        sa.Column("updated_at", _AT, nullable=False),
        sa.CheckConstraint(
            "state IN ('held', 'locked', 'consumed', 'released', 'expired', 'revoked')",
            name=op.f("ck_central_locks_state"),
        ),
        sa.CheckConstraint(
            "subsidy_fen >= 0 AND subsidy_fen <= price_fen", name=op.f("ck_central_locks_amounts")
        ),
        sa.PrimaryKeyConstraint("lock_id", name=op.f("pk_central_locks")),
    )
    op.create_index(
        op.f("ix_central_locks_qualification_id"), "central_locks", ["qualification_id"]
    )
    op.create_index(op.f("ix_central_locks_expires_at"), "central_locks", ["expires_at"])
    op.create_index(
        "ix_central_locks_province_voucher_id", "central_locks", ["province", "voucher_id"]
    )
    op.create_table(
        "central_serials",
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("lock_id", sa.String(64), nullable=False),
        sa.Column("province", sa.String(32), nullable=False),
        sa.Column("registered_at", _AT, nullable=False),
        sa.CheckConstraint("kind IN ('serial', 'imei')", name=op.f("ck_central_serials_kind")),
        sa.PrimaryKeyConstraint("kind", "value", name=op.f("pk_central_serials")),
    )
    op.create_index(op.f("ix_central_serials_lock_id"), "central_serials", ["lock_id"])
    op.create_table(
        "central_facts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("province", sa.String(32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("category", sa.String(40), nullable=False),
        sa.Column("fact", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("lock_id", sa.String(64), nullable=True),
        sa.Column("voucher_id", sa.String(64), nullable=True),
        sa.Column("at", _AT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_central_facts")),
    )
    op.create_index("ix_central_facts_province_day", "central_facts", ["province", "day"])
    op.create_index(
        "ix_central_facts_province_voucher_id", "central_facts", ["province", "voucher_id"]
    )
    op.create_table(
        "central_events",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("province", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("at", _AT, nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("voucher_id", sa.String(64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("received_at", _AT, nullable=False),
        sa.CheckConstraint(
            "state IN ('applied', 'waiting', 'rejected')", name=op.f("ck_central_events_state")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_central_events")),
    )
    op.create_index(
        "ix_central_events_province_voucher_id", "central_events", ["province", "voucher_id"]
    )
    op.create_table(
        "central_voucher_seqs",
        sa.Column("province", sa.String(32), nullable=False),
        sa.Column("voucher_id", sa.String(64), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("province", "voucher_id", name=op.f("pk_central_voucher_seqs")),
    )


def downgrade() -> None:
    for table in (
        "central_voucher_seqs",
        "central_events",
        "central_facts",
        "central_serials",
        "central_locks",
        "central_revocations",
        "central_qualifications",
        "central_keys",
        "central_provinces",
    ):
        op.drop_table(table)
