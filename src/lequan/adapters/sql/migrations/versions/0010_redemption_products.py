"""the trade-in products subsidised in this province, held by serial, IMEI and invoice

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 00:30:00

A trade-in redemption names its product (category, brand, model, SKU,
energy grade, price, serial number and/or IMEI, invoice number). The
product may be subsidised once: ``redemption_products`` keeps one row per
trade-in redemption, and partial unique indexes on the serial number, the
IMEI and the invoice number among the rows not released let the store
refuse a second subsidy of one product, however many redemptions race for
it. A refund, a reversal, a void or a lock timing out releases the row
(``released_at``), and the product may be subsidised again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNRELEASED = "released_at IS NULL"
_HELD = ("serial_number", "imei", "invoice_number")


def upgrade() -> None:
    op.create_table(
        "redemption_products",
        sa.Column("redemption_id", sa.String(length=64), nullable=False),
        sa.Column("voucher_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("brand", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=64), nullable=True),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("energy_grade", sa.SmallInteger(), nullable=True),
        sa.Column("price_fen", sa.BigInteger(), nullable=False),
        sa.Column("serial_number", sa.String(length=40), nullable=True),
        sa.Column("imei", sa.String(length=15), nullable=True),
        sa.Column("invoice_number", sa.String(length=40), nullable=False),
        sa.Column("old_appliance_handed_in", sa.Boolean(), nullable=True),
        sa.Column("subsidy_fen", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "serial_number IS NOT NULL OR imei IS NOT NULL",
            name=op.f("ck_redemption_products_identified"),
        ),
        sa.CheckConstraint(
            "price_fen > 0 AND subsidy_fen > 0 AND subsidy_fen <= price_fen",
            name=op.f("ck_redemption_products_amounts"),
        ),
        sa.CheckConstraint(
            "energy_grade BETWEEN 1 AND 5", name=op.f("ck_redemption_products_energy_grade")
        ),
        sa.PrimaryKeyConstraint("redemption_id", name=op.f("pk_redemption_products")),
    )
    for column in _HELD:
        op.create_index(
            f"uq_redemption_products_{column}",
            "redemption_products",
            [column],
            unique=True,
            sqlite_where=sa.text(_UNRELEASED),
            postgresql_where=sa.text(_UNRELEASED),
        )


def downgrade() -> None:
    for column in _HELD:
        op.drop_index(f"uq_redemption_products_{column}", table_name="redemption_products")
    op.drop_table("redemption_products")
