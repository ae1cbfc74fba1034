"""Trade-in products in SQL: one row per trade-in redemption, its identifiers held by
partial unique indexes among the rows not released (migration 0010)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.domain.trade_in import Category, Product
from lequan.rows import ProductRow

__all__ = ["PRODUCT_COLUMNS", "SqlProducts"]

# The columns a product row is given by, in this order (``add_products``).
PRODUCT_COLUMNS = (
    "redemption_id",
    "voucher_id",
    "campaign_id",
    "category",
    "brand",
    "model",
    "sku",
    "energy_grade",
    "price_fen",
    "serial_number",
    "imei",
    "invoice_number",
    "old_appliance_handed_in",
    "subsidy_fen",
    "created_at",
)
_HELD = ("serial_number", "imei", "invoice_number")


def product_row(m: Any) -> ProductRow:
    """A stored product (a row's mapping) as the port hands it back."""
    return ProductRow(
        redemption_id=m["redemption_id"],
        voucher_id=m["voucher_id"],
        campaign_id=m["campaign_id"],
        product=Product(
            category=Category(m["category"]),
            brand=m["brand"],
            model=m["model"],
            sku=m["sku"],
            energy_grade=m["energy_grade"],
            price_fen=m["price_fen"],
            serial_number=m["serial_number"],
            imei=m["imei"],
            invoice_number=m["invoice_number"],
            old_appliance_handed_in=m["old_appliance_handed_in"],
        ),
        subsidy_fen=m["subsidy_fen"],
        created_at=m["created_at"],
        released_at=m["released_at"],
    )


class SqlProducts:
    """Subsidised products by redemption; their identifiers held while unreleased."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def add_products(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert; a held identifier is a unique index's ``DuplicateKey``."""
        self._s.insert_many(
            t.redemption_products, [{c: row[c] for c in PRODUCT_COLUMNS} for row in rows]
        )

    def held(
        self,
        *,
        serial_numbers: Sequence[str],
        imeis: Sequence[str],
        invoice_numbers: Sequence[str],
    ) -> set[tuple[str, str]]:
        p = t.redemption_products.c
        wanted = dict(zip(_HELD, (serial_numbers, imeis, invoice_numbers), strict=True))
        selects = [
            sa.select(sa.literal(field).label("field"), p[field].label("value")).where(
                p[field].in_(list(values)), p.released_at.is_(None)
            )
            for field, values in wanted.items()
            if values
        ]
        if not selects:
            return set()
        rows = self._s.exec(sa.union_all(*selects))
        return {(row.field, row.value) for row in rows}

    def get_product(self, redemption_id: str) -> ProductRow | None:
        p = t.redemption_products
        found = self._s.exec(sa.select(p).where(p.c.redemption_id == redemption_id)).first()
        return product_row(found._mapping) if found else None

    def release_product(self, redemption_id: str, *, now: datetime) -> bool:
        p = t.redemption_products.c
        result = self._s.exec(
            sa.update(t.redemption_products)
            .where(p.redemption_id == redemption_id, p.released_at.is_(None))
            .values(released_at=now)
        )
        return result.rowcount == 1
