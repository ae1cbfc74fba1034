"""the store counts what each stock gave out, and refuses the one too many

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 18:55:00

The gate was the only thing that kept a claim within its stock; the store
found an oversell only afterwards (``check_campaign``). A gate that forgets
what it gave (a Redis failover to a replica that had not yet received the
last decrements, a restored snapshot, two processes each with a gate of
their own) would have sold the same stock twice. ``stocks.issued`` is now
counted up in the claim's own transaction, by a conditional update, and a
CHECK keeps it within ``initial``.

Upgrading counts the vouchers every stock already gave out. A store that
holds more than a stock held stops the upgrade with the pools named: that
is an oversell to settle first, not one to hide under a counter.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ISSUED = (
    "SELECT count(*) FROM vouchers v WHERE v.campaign_id = stocks.campaign_id "
    "AND v.round_id = stocks.round_id AND v.channel_id = stocks.channel_id "
    "AND v.template_id = stocks.template_id"
)


def upgrade() -> None:
    with op.batch_alter_table("stocks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("issued", sa.Integer, nullable=False, server_default="0"))
    op.execute(f"UPDATE stocks SET issued = ({_ISSUED})")  # noqa: S608  # fixed text
    oversold = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT campaign_id, round_id, channel_id, template_id, initial, issued "
                "FROM stocks WHERE issued > initial ORDER BY 1, 2, 3, 4"
            )
        )
        .all()
    )
    if oversold:
        pools = "; ".join(f"{c}/{r}/{ch}/{t}: {n} issued of {i}" for c, r, ch, t, i, n in oversold)
        raise RuntimeError(f"stocks already oversold, settle them before upgrading: {pools}")
    with op.batch_alter_table("stocks", schema=None) as batch_op:
        batch_op.create_check_constraint(
            "ck_stocks_within_stock", "issued >= 0 AND issued <= initial"
        )


def downgrade() -> None:
    with op.batch_alter_table("stocks", schema=None) as batch_op:
        batch_op.drop_constraint("ck_stocks_within_stock", type_="check")
        batch_op.drop_column("issued")
