"""a voucher row writes one B-tree fewer: the pool index goes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 19:10:00

``ix_vouchers_pool (campaign, round, channel, template)`` served the count
of vouchers per stock when the gate was rebuilt. Since 0005 the store
keeps that count in ``stocks.issued``, and the index was only a cost: one
more B-tree written for every voucher at the release (the in-process batch
claim path on SQLite went from 14,200 to 15,400 claims/s, three alternated
pairs, ad hoc). An audit (``check_campaign``) still counts the vouchers
themselves, by ``uq_vouchers_claim_slot``'s campaign prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_vouchers_pool", table_name="vouchers")


def downgrade() -> None:
    op.create_index(
        "ix_vouchers_pool", "vouchers", ["campaign_id", "round_id", "channel_id", "template_id"]
    )
