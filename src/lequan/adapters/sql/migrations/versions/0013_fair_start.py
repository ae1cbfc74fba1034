"""the fair start: a round's draw (its seed sealed, its commitment), its published
entries, and the ticket on the voucher a draw gave

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10 09:00:00

A campaign with a start window (``start_window_s``) serves each round's first
seconds in an order drawn from a seed committed before the release
(docs/risk.md, "Fair start"). ``round_draws`` keeps, per round, the seed
sealed with the key ring and its commitment (public from the approval on);
once the draw is served, the seed in clear and the counts. ``draw_entries``
keeps the published entries: a ticket (naming no person), its rank and its
outcome, so anyone can verify the order. ``vouchers.draw_ticket`` is the
ticket of the claim a draw issued the voucher for: its answer, and a retry's
answer rebuilt from the row, carry it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("vouchers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("draw_ticket", sa.String(length=32), nullable=True))
    op.create_table(
        "round_draws",
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("round_id", sa.String(length=20), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("commitment", sa.String(length=64), nullable=False),
        sa.Column("seed_key_id", sa.String(length=32), nullable=False),
        sa.Column("seed_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seed_hex", sa.String(length=64), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("entries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("won", sa.Integer(), server_default="0", nullable=False),
        sa.CheckConstraint("window_s > 0", name=op.f("ck_round_draws_window_positive")),
        sa.CheckConstraint(
            "(seed_hex IS NULL) = (published_at IS NULL)",
            name=op.f("ck_round_draws_revealed_whole"),
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id", "round_id"],
            ["rounds.campaign_id", "rounds.round_id"],
            name=op.f("fk_round_draws_campaign_id_rounds"),
        ),
        sa.PrimaryKeyConstraint("campaign_id", "round_id", name=op.f("pk_round_draws")),
    )
    op.create_table(
        "draw_entries",
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("round_id", sa.String(length=20), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("ticket", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("template_id", sa.String(length=40), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id", "round_id"],
            ["round_draws.campaign_id", "round_draws.round_id"],
            name=op.f("fk_draw_entries_campaign_id_round_draws"),
        ),
        sa.PrimaryKeyConstraint("campaign_id", "round_id", "rank", name=op.f("pk_draw_entries")),
    )


def downgrade() -> None:
    op.drop_table("draw_entries")
    op.drop_table("round_draws")
    with op.batch_alter_table("vouchers", schema=None) as batch_op:
        batch_op.drop_column("draw_ticket")
