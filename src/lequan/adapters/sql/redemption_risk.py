"""Redemption-time risk in SQL (migration 0014): the redemptions the rules remember,
the payables a rule held, and the SKU baseline prices."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession, sqlite_time
from lequan.rows import PayableHoldRow, RecentRedemption, RedemptionFactRow, SkuPriceRow

__all__ = ["SqlRedemptionRisk"]

_FACT_COLUMNS = tuple(RedemptionFactRow.__dataclass_fields__)


def _fact(m: Any) -> RedemptionFactRow:
    return RedemptionFactRow(**{c: m[c] for c in _FACT_COLUMNS})


def _hold(m: Any) -> PayableHoldRow:
    return PayableHoldRow(**{c: m[c] for c in PayableHoldRow.__dataclass_fields__})


class SqlRedemptionRisk:
    """Remembered redemptions, held payables, SKU prices."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    # -- the redemptions the rules remember ---------------------------------------------

    def add_facts(self, rows: Sequence[RedemptionFactRow]) -> None:
        self._s.insert_many(
            t.risk_redemptions, [{c: getattr(row, c) for c in _FACT_COLUMNS} for row in rows]
        )

    def get_fact(self, redemption_id: str) -> RedemptionFactRow | None:
        r = t.risk_redemptions
        found = self._s.exec(sa.select(r).where(r.c.redemption_id == redemption_id)).first()
        return None if found is None else _fact(found._mapping)

    def complete_fact(self, redemption_id: str, *, now: datetime) -> RedemptionFactRow | None:
        r = t.risk_redemptions.c
        result = self._s.exec(
            sa.update(t.risk_redemptions)
            .where(r.redemption_id == redemption_id, r.redeemed_at.is_(None))
            .values(redeemed_at=now)
        )
        return self.get_fact(redemption_id) if result.rowcount == 1 else None

    def refund_fact(self, redemption_id: str, *, now: datetime, refund_after_s: int) -> bool:
        r = t.risk_redemptions.c
        result = self._s.exec(
            sa.update(t.risk_redemptions)
            .where(
                r.redemption_id == redemption_id,
                r.redeemed_at.is_not(None),
                r.refunded_at.is_(None),
            )
            .values(refunded_at=now, refund_after_s=refund_after_s)
        )
        return result.rowcount == 1

    def merchant_refunds(
        self, merchant_id: str, *, since: datetime, within_s: int
    ) -> tuple[int, int]:
        r = t.risk_redemptions.c
        quick = sa.case((r.refund_after_s <= within_s, 1), else_=0)
        row = self._s.exec(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(quick), 0)).where(
                r.merchant_id == merchant_id, r.redeemed_at >= since
            )
        ).one()
        return int(row[0]), int(row[1])

    def payer_refunds(self, payer_id: str, *, since: datetime, within_s: int) -> int:
        r = t.risk_redemptions.c
        found = self._s.exec(
            sa.select(sa.func.count()).where(
                r.payer_id == payer_id, r.redeemed_at >= since, r.refund_after_s <= within_s
            )
        ).scalar_one()
        return int(found)

    def recent(self, *, since: datetime, limit: int) -> list[RecentRedemption]:
        # The driver's rows: the ring reads tens of thousands at each refresh.
        sql = (
            "SELECT redemption_id, person_id, merchant_id, review_id IS NOT NULL "
            "FROM risk_redemptions WHERE redeemed_at >= ? "
            "ORDER BY redeemed_at DESC LIMIT ?"
        )
        stamp: Any = since if self._s.postgres else sqlite_time(since)
        return [
            RecentRedemption(row[0], row[1], row[2], bool(row[3]))
            for row in self._s.driver_rows(sql, (stamp, limit))
        ]

    def payer_redemptions(
        self, payer_id: str, *, since: datetime, limit: int
    ) -> list[RecentRedemption]:
        r = t.risk_redemptions.c
        rows = self._s.exec(
            sa.select(r.redemption_id, r.person_id, r.merchant_id, r.review_id.is_not(None))
            .where(r.payer_id == payer_id, r.redeemed_at >= since)
            .order_by(r.redeemed_at.desc())
            .limit(limit)
        )
        return [RecentRedemption(row[0], row[1], row[2], bool(row[3])) for row in rows]

    def flag_facts(self, flags: Sequence[tuple[str, str]]) -> set[str]:
        r = t.risk_redemptions.c
        flagged: set[str] = set()
        # In key order, as every row lock is taken (two sweeps never wait on each other).
        for redemption_id, review_id in sorted(flags):
            result = self._s.exec(
                sa.update(t.risk_redemptions)
                .where(r.redemption_id == redemption_id, r.review_id.is_(None))
                .values(review_id=review_id)
            )
            if result.rowcount == 1:
                flagged.add(redemption_id)
        return flagged

    # -- held payables ------------------------------------------------------------------

    def add_holds(self, rows: Sequence[PayableHoldRow]) -> None:
        columns = PayableHoldRow.__dataclass_fields__
        self._s.insert_many(
            t.payable_holds, [{c: getattr(row, c) for c in columns} for row in rows]
        )

    def get_hold(self, redemption_id: str) -> PayableHoldRow | None:
        h = t.payable_holds
        found = self._s.exec(sa.select(h).where(h.c.redemption_id == redemption_id)).first()
        return None if found is None else _hold(found._mapping)

    def move_hold(
        self,
        redemption_id: str,
        *,
        expected: str,
        status: str,
        now: datetime,
        review_id: str | None = None,
    ) -> bool:
        h = t.payable_holds.c
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if review_id is not None:
            values["review_id"] = review_id
        result = self._s.exec(
            sa.update(t.payable_holds)
            .where(h.redemption_id == redemption_id, h.status == expected)
            .values(**values)
        )
        return result.rowcount == 1

    def held_fen(self, campaign_id: str) -> int:
        h = t.payable_holds.c
        found = self._s.exec(
            sa.select(sa.func.coalesce(sa.func.sum(h.amount_fen), 0)).where(
                h.campaign_id == campaign_id, h.status == "held"
            )
        ).scalar_one()
        return int(found)

    # -- SKU baseline prices ------------------------------------------------------------

    def upsert_sku_prices(self, rows: Sequence[SkuPriceRow]) -> None:
        if not rows:
            return
        values = [
            {
                "sku": row.sku,
                "baseline_price_fen": row.baseline_price_fen,
                "updated_by": row.updated_by,
                "updated_at": row.updated_at,
            }
            for row in rows
        ]
        insert = (postgresql.insert if self._s.postgres else sqlite.insert)(t.sku_prices)
        self._s.exec(
            insert.on_conflict_do_update(
                index_elements=["sku"],
                set_={
                    "baseline_price_fen": insert.excluded.baseline_price_fen,
                    "updated_by": insert.excluded.updated_by,
                    "updated_at": insert.excluded.updated_at,
                },
            ),
            values,
        )

    def sku_prices(self, skus: Sequence[str]) -> dict[str, int]:
        if not skus:
            return {}
        p = t.sku_prices.c
        rows = self._s.exec(
            sa.select(p.sku, p.baseline_price_fen).where(p.sku.in_(sorted(set(skus))))
        )
        return {row.sku: int(row.baseline_price_fen) for row in rows}

    def list_sku_prices(self, *, after: str | None, limit: int) -> list[SkuPriceRow]:
        p = t.sku_prices
        query = sa.select(p).order_by(p.c.sku).limit(limit)
        if after is not None:
            query = query.where(p.c.sku > after)
        return [
            SkuPriceRow(
                sku=m["sku"],
                baseline_price_fen=m["baseline_price_fen"],
                updated_by=m["updated_by"],
                updated_at=m["updated_at"],
            )
            for m in self._s.exec(query).mappings()
        ]
