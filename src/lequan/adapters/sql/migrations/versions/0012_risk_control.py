"""risk control: the rules file's versions, the review queue, device and phone
blacklists, and the analyst

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 12:00:00

Claims are judged by risk rules from a versioned YAML file that a maker
drafts and a checker approves: ``risk_rules`` keeps every version as it was
uploaded, and a partial unique index lets at most one be ``active`` however
many approvals race. A claim a rule holds waits in ``reviews`` for an
analyst (and, later, a redemption's payable: ``kind``). ``risk_blacklist``
holds device ids and phones' blind indexes, one list per ``kind``; persons
stay on ``blacklist``, by their ID number's blind index. Operators gain the
role ``analyst``; a downgrade refuses while an analyst exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = "status = 'active'"
_ROLES = "role IN ('maker', 'checker', 'viewer', 'analyst')"
_ROLES_BEFORE = "role IN ('maker', 'checker', 'viewer')"


def upgrade() -> None:
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_operators_role"), type_="check")
        batch_op.create_check_constraint(op.f("ck_operators_role"), _ROLES)
    op.create_table(
        "risk_rules",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("drafted_by", sa.String(length=64), nullable=False),
        sa.Column("drafted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(length=64), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('draft', 'active', 'retired')", name=op.f("ck_risk_rules_status")
        ),
        sa.CheckConstraint(
            "(status = 'draft') = (approved_by IS NULL AND approved_at IS NULL)",
            name=op.f("ck_risk_rules_approval"),
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_risk_rules")),
    )
    op.create_index(
        "ux_risk_rules_active",
        "risk_rules",
        ["status"],
        unique=True,
        sqlite_where=sa.text(_ACTIVE),
        postgresql_where=sa.text(_ACTIVE),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=True),
        sa.Column("rules_version", sa.Integer(), nullable=False),
        sa.Column("subject_json", sa.Text(), nullable=False),
        sa.Column("reasons_json", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.Column("outcome_json", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('claim', 'redemption')", name=op.f("ck_reviews_kind")),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected')", name=op.f("ck_reviews_status")
        ),
        sa.CheckConstraint(
            "(status = 'pending') = "
            "(decided_by IS NULL AND decided_at IS NULL AND decision_reason IS NULL)",
            name=op.f("ck_reviews_decision_whole"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_status_kind_id", "reviews", ["status", "kind", "id"])
    op.create_table(
        "risk_blacklist",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('device', 'phone')", name=op.f("ck_risk_blacklist_kind")),
        sa.PrimaryKeyConstraint("kind", "value", name=op.f("pk_risk_blacklist")),
    )


def downgrade() -> None:
    analysts = op.get_bind().execute(
        sa.text("SELECT count(*) FROM operators WHERE role = 'analyst'")
    )
    if analysts.scalar_one():
        raise RuntimeError(
            "operators with the role analyst exist: give them another role before downgrading"
        )
    op.drop_table("risk_blacklist")
    op.drop_index("ix_reviews_status_kind_id", table_name="reviews")
    op.drop_table("reviews")
    op.drop_index(
        "ux_risk_rules_active",
        table_name="risk_rules",
        sqlite_where=sa.text(_ACTIVE),
        postgresql_where=sa.text(_ACTIVE),
    )
    op.drop_table("risk_rules")
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_operators_role"), type_="check")
        batch_op.create_check_constraint(op.f("ck_operators_role"), _ROLES_BEFORE)
