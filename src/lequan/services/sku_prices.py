"""SKU baseline prices: what a trade-in product of each SKU usually costs, imported by
operators so that the rule ``price_above_sku_baseline`` can tell an inflated price
(docs/risk.md).

A file is CSV with the header ``sku,baseline_price_fen``; it is checked whole
before anything is stored (``invalid_sku_prices`` naming the line), bounded as
a merchant file is (``merchant_file_bytes_max``, ``merchant_file_rows_max``),
and imported in one transaction with its audit entry. A SKU imported again
takes its new price.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from lequan.domain.error_codes import ErrorCode
from lequan.domain.errors import InvalidInput
from lequan.domain.trade_in import PRICE_FEN_MAX
from lequan.rows import SkuPriceRow
from lequan.services.campaigns import require_operator_role
from lequan.services.runtime import Runtime

__all__ = ["ROLES_THAT_PRICE", "SKU_COLUMNS", "SkuImport", "import_sku_prices", "list_sku_prices"]

ROLES_THAT_PRICE = frozenset({"maker", "checker", "analyst"})
SKU_COLUMNS = ("sku", "baseline_price_fen")
SKU_CHARS_MAX = 64
# The SKUs an import names in its audit entry at most (the count is always there).
AUDITED_SKUS_MAX = 20


@dataclass(frozen=True, slots=True)
class SkuImport:
    imported: int


def _line_error(line: int, message: str) -> InvalidInput:
    return InvalidInput(
        ErrorCode.INVALID_SKU_PRICES, f"line {line}: {message}", details={"line": line}
    )


def parse_sku_prices(text: str, *, bytes_max: int, rows_max: int) -> list[tuple[str, int]]:
    """The file's (sku, baseline price) rows, or the first broken line's refusal."""
    if len(text.encode("utf-8")) > bytes_max:
        raise InvalidInput(
            ErrorCode.INVALID_SKU_PRICES, f"a SKU price file is at most {bytes_max} bytes"
        )
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[str, int]] = []
    seen: set[str] = set()
    try:
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != SKU_COLUMNS:
            raise _line_error(1, f"the header must be: {','.join(SKU_COLUMNS)}")
        for record in reader:
            line = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(rows) >= rows_max:
                raise _line_error(line, f"at most {rows_max} rows per file")
            if len(record) != len(SKU_COLUMNS):
                raise _line_error(line, f"a row has {len(SKU_COLUMNS)} fields")
            sku, price = record[0].strip(), record[1].strip()
            if not 1 <= len(sku) <= SKU_CHARS_MAX or not sku.isprintable():
                raise _line_error(line, f"a sku is 1-{SKU_CHARS_MAX} printable characters")
            if sku in seen:
                raise _line_error(line, f"sku {sku} is named twice")
            if not price.isdigit() or not 0 < int(price) <= PRICE_FEN_MAX:
                raise _line_error(line, f"baseline_price_fen is a whole number 1-{PRICE_FEN_MAX}")
            seen.add(sku)
            rows.append((sku, int(price)))
    except csv.Error as error:
        raise _line_error(reader.line_num, str(error)) from None
    return rows


def import_sku_prices(rt: Runtime, text: str, *, actor: str) -> SkuImport:
    """Set the baseline price of every SKU the file names (a maker, checker or analyst)."""
    settings = rt.settings
    rows = parse_sku_prices(
        text, bytes_max=settings.merchant_file_bytes_max, rows_max=settings.merchant_file_rows_max
    )
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_PRICE)
        uow.redemption_risk.upsert_sku_prices(
            [
                SkuPriceRow(sku=sku, baseline_price_fen=price, updated_by=actor, updated_at=now)
                for sku, price in rows
            ]
        )
        uow.ledger.append_audit(
            actor=actor,
            action="risk_sku_prices.import",
            target="sku_prices",
            details={"rows": len(rows), "skus": [sku for sku, _ in rows[:AUDITED_SKUS_MAX]]},
            now=now,
        )
        uow.commit()
    return SkuImport(len(rows))


def list_sku_prices(rt: Runtime, *, actor: str, after: str | None, limit: int) -> list[SkuPriceRow]:
    """The SKU prices by SKU, a page at a time."""
    assert 1 <= limit <= rt.settings.page_size_max
    with rt.store.unit_of_work(readonly=True) as uow:
        require_operator_role(uow, actor, ROLES_THAT_PRICE)
        return uow.redemption_risk.list_sku_prices(after=after, limit=limit)
