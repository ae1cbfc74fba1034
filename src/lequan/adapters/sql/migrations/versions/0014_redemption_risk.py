"""redemption-time risk: the redemptions the rules remember, held payables, SKU prices

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-09 12:00:00

The redemption-time rules (docs/risk.md) judge a completed redemption on
features counted by the shared counters and read from ``risk_redemptions``:
one row per redemption while a redemption rule is on, with the person, the
payer token and, once refunded, how soon after. The ring's graph and the
merchants' and the payers' quick refunds are read from it by merchant, by
payer and by time. A payable
a rule held waits in ``payable_holds`` (and in the ledger's ``held:``
accounts) until an analyst releases it or claws it back. ``sku_prices`` keeps
the baseline prices operators import for trade-in products.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "risk_redemptions",
        sa.Column("redemption_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("voucher_id", sa.String(length=64), nullable=False),
        sa.Column("payer_id", sa.String(length=64), nullable=True),
        sa.Column("terminal_id", sa.String(length=64), nullable=True),
        sa.Column("order_amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refund_after_s", sa.Integer(), nullable=True),
        sa.Column("review_id", sa.String(length=64), nullable=True),
        sa.CheckConstraint(
            "(refunded_at IS NULL) = (refund_after_s IS NULL)",
            name=op.f("ck_risk_redemptions_refund_whole"),
        ),
        sa.PrimaryKeyConstraint("redemption_id", name=op.f("pk_risk_redemptions")),
    )
    op.create_index(
        "ix_risk_redemptions_merchant_id_redeemed_at",
        "risk_redemptions",
        ["merchant_id", "redeemed_at"],
    )
    op.create_index(
        "ix_risk_redemptions_payer_id_redeemed_at", "risk_redemptions", ["payer_id", "redeemed_at"]
    )
    op.create_index("ix_risk_redemptions_redeemed_at", "risk_redemptions", ["redeemed_at"])
    op.create_table(
        "payable_holds",
        sa.Column("redemption_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("payable", sa.String(length=80), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("review_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_payable_holds_amount")),
        sa.CheckConstraint(
            "status IN ('held', 'released', 'clawed_back')", name=op.f("ck_payable_holds_status")
        ),
        sa.PrimaryKeyConstraint("redemption_id", name=op.f("pk_payable_holds")),
    )
    op.create_index(
        "ix_payable_holds_campaign_id_status", "payable_holds", ["campaign_id", "status"]
    )
    op.create_table(
        "sku_prices",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("baseline_price_fen", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("baseline_price_fen > 0", name=op.f("ck_sku_prices_price")),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_sku_prices")),
    )


def downgrade() -> None:
    held = op.get_bind().execute(
        sa.text("SELECT count(*) FROM payable_holds WHERE status = 'held'")
    )
    if held.scalar_one():
        raise RuntimeError(
            "payables are held for review: release or claw them back before downgrading "
            "(the ledger's held: accounts would be left without their holds)"
        )
    op.drop_table("sku_prices")
    op.drop_index("ix_payable_holds_campaign_id_status", table_name="payable_holds")
    op.drop_table("payable_holds")
    op.drop_index("ix_risk_redemptions_redeemed_at", table_name="risk_redemptions")
    op.drop_index("ix_risk_redemptions_payer_id_redeemed_at", table_name="risk_redemptions")
    op.drop_index("ix_risk_redemptions_merchant_id_redeemed_at", table_name="risk_redemptions")
    op.drop_table("risk_redemptions")
