"""Campaigns in SQL: the campaign row with its rounds and budget counter, and its stocks.

The budget counter (``campaigns.committed_fen``) is moved only by the
ledger repository, together with the entry it follows; the stocks'
``issued`` counters only by ``take_stock``. Both are conditional updates:
the store does the atomic step, and a CHECK keeps each within its bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.domain.campaigns import CampaignConfig, CampaignStatus
from lequan.ports.errors import StoreError
from lequan.rows import CampaignRow, StockKey

__all__ = ["SqlCampaigns"]

CAMPAIGN_CONFIGS_CACHED = 256


def _stock_row(key: StockKey) -> tuple[sa.ColumnElement[bool], ...]:
    s = t.stocks.c
    return (
        s.campaign_id == key[0],
        s.round_id == key[1],
        s.channel_id == key[2],
        s.template_id == key[3],
    )


@lru_cache(maxsize=CAMPAIGN_CONFIGS_CACHED)
def _campaign_config(config_json: str) -> CampaignConfig:
    """A stored campaign's configuration, parsed once per distinct text.

    Configurations are immutable values (frozen models) and a stored one
    never changes, so redemptions and quotes need not validate the same
    text again on every call.
    """
    return CampaignConfig.model_validate_json(config_json)


class SqlCampaigns:
    """The campaign aggregate: campaigns, rounds, stocks and the budget counter."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def insert_campaign(self, config: CampaignConfig, *, drafted_by: str, now: datetime) -> None:
        self._s.exec(
            sa.insert(t.campaigns).values(
                id=config.id,
                name=config.name,
                status=CampaignStatus.DRAFT.value,
                config_json=config.model_dump_json(),
                budget_fen=config.budget_fen,
                committed_fen=0,
                drafted_by=drafted_by,
                created_at=now,
                updated_at=now,
            )
        )
        self._s.exec(
            sa.insert(t.rounds),
            [
                {
                    "campaign_id": config.id,
                    "round_id": r.id,
                    "release_at": r.release_at,
                    "ends_at": r.ends_at,
                }
                for r in config.rounds
            ],
        )
        stock_rows = [
            {
                "campaign_id": config.id,
                "round_id": r.id,
                "channel_id": channel,
                "template_id": template_id,
                "initial": count,
            }
            for r in config.rounds
            for channel, per_template in r.stock.items()
            for template_id, count in per_template.items()
        ]
        if stock_rows:
            self._s.exec(sa.insert(t.stocks), stock_rows)

    def campaign_exists(self, campaign_id: str) -> bool:
        return (
            self._s.exec(sa.select(t.campaigns.c.id).where(t.campaigns.c.id == campaign_id)).first()
            is not None
        )

    def get_campaign(self, campaign_id: str) -> CampaignRow | None:
        row = self._s.exec(sa.select(t.campaigns).where(t.campaigns.c.id == campaign_id)).first()
        if row is None:
            return None
        return self._campaign(row)

    def _campaign(self, row: sa.Row[Any]) -> CampaignRow:
        m = row._mapping
        round_rows = self._s.exec(
            sa.select(t.rounds).where(t.rounds.c.campaign_id == m["id"])
        ).fetchall()
        return CampaignRow(
            id=m["id"],
            status=CampaignStatus(m["status"]),
            config=_campaign_config(m["config_json"]),
            budget_fen=m["budget_fen"],
            committed_fen=m["committed_fen"],
            drafted_by=m["drafted_by"],
            approved_by=m["approved_by"],
            rounds={r.round_id: (r.release_at, r.ends_at) for r in round_rows},
            redemptions_paused=m["redemptions_paused"],
        )

    def list_campaigns(
        self, *, statuses: Iterable[CampaignStatus] | None = None
    ) -> list[CampaignRow]:
        query = sa.select(t.campaigns).order_by(t.campaigns.c.id)
        if statuses is not None:
            query = query.where(t.campaigns.c.status.in_([s.value for s in statuses]))
        return [self._campaign(row) for row in self._s.exec(query).fetchall()]

    def set_campaign_status(
        self,
        campaign_id: str,
        *,
        expected: CampaignStatus,
        status: CampaignStatus,
        now: datetime,
        approved_by: str | None = None,
    ) -> bool:
        """Move the status only if nobody else moved it first."""
        values: dict[str, Any] = {"status": status.value, "updated_at": now}
        if approved_by is not None:
            values["approved_by"] = approved_by
        result = self._s.exec(
            sa.update(t.campaigns)
            .where(t.campaigns.c.id == campaign_id, t.campaigns.c.status == expected.value)
            .values(**values)
        )
        return result.rowcount == 1

    def set_redemptions_paused(self, campaign_id: str, *, paused: bool, now: datetime) -> bool:
        c = t.campaigns.c
        result = self._s.exec(
            sa.update(t.campaigns)
            .where(c.id == campaign_id, c.redemptions_paused.is_(not paused))
            .values(redemptions_paused=paused, updated_at=now)
        )
        return result.rowcount == 1

    def set_round_times(
        self, campaign_id: str, round_id: str, *, release_at: datetime, ends_at: datetime
    ) -> None:
        self._s.exec(
            sa.update(t.rounds)
            .where(t.rounds.c.campaign_id == campaign_id, t.rounds.c.round_id == round_id)
            .values(release_at=release_at, ends_at=ends_at)
        )

    def lock_campaign_budget(self, campaign_id: str) -> tuple[int, int]:
        """(budget_fen, committed_fen), the campaign row locked until commit."""
        query = sa.select(t.campaigns.c.budget_fen, t.campaigns.c.committed_fen).where(
            t.campaigns.c.id == campaign_id
        )
        if self._s.postgres:
            query = query.with_for_update()
        row = self._s.exec(query).first()
        if row is None:
            raise StoreError(f"no campaign {campaign_id} to lock")
        return row.budget_fen, row.committed_fen

    def take_stock(self, key: StockKey, count: int) -> bool:
        """Count ``count`` more vouchers out of a stock, atomically, if it holds them.

        The row stays locked until commit (the claim's own transaction): a
        stock is never given out twice, whatever the gate believed.
        """
        assert count > 0
        s = t.stocks.c
        result = self._s.exec(
            sa.update(t.stocks)
            .where(*_stock_row(key), s.issued + count <= s.initial)
            .values(issued=s.issued + count)
        )
        return result.rowcount == 1

    def lock_stock(self, key: StockKey) -> tuple[int, int]:
        """(initial, issued) of a stock, the row locked until commit; (0, 0) if the
        campaign stocks no such template there."""
        query = sa.select(t.stocks.c.initial, t.stocks.c.issued).where(*_stock_row(key))
        if self._s.postgres:
            query = query.with_for_update()
        row = self._s.exec(query).first()
        return (0, 0) if row is None else (row.initial, row.issued)

    def stock_issued(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        """What each stock of the campaign counted out: (round, channel, template) -> n."""
        s = t.stocks.c
        rows = self._s.exec(
            sa.select(s.round_id, s.channel_id, s.template_id, s.issued).where(
                s.campaign_id == campaign_id
            )
        )
        return {(r.round_id, r.channel_id, r.template_id): r.issued for r in rows}

    def stock_initial(self, campaign_id: str) -> list[tuple[str, str, str, int]]:
        """(round_id, channel_id, template_id, initial) of every pool of the campaign."""
        s = t.stocks.c
        rows = self._s.exec(
            sa.select(s.round_id, s.channel_id, s.template_id, s.initial).where(
                s.campaign_id == campaign_id
            )
        )
        return [(r.round_id, r.channel_id, r.template_id, r.initial) for r in rows]

    def commit_budget(self, campaign_id: str, amount_fen: int) -> bool:
        """Take ``amount_fen`` from the campaign's budget, atomically, if it is there."""
        assert amount_fen > 0
        c = t.campaigns.c
        result = self._s.exec(
            sa.update(t.campaigns)
            .where(c.id == campaign_id, c.committed_fen + amount_fen <= c.budget_fen)
            .values(committed_fen=c.committed_fen + amount_fen)
        )
        return result.rowcount == 1

    def release_budget(self, campaign_id: str, amount_fen: int) -> None:
        assert amount_fen > 0
        if self._s.pipelined:
            sql = (
                "UPDATE campaigns SET committed_fen = committed_fen - %s "
                "WHERE id = %s AND committed_fen >= %s"
            )
            with self._s.driver_cursor(sql) as cursor:
                cursor.execute(sql, (amount_fen, campaign_id, amount_fen))
                self._s.rowcount_is(cursor, 1, "released more budget than was committed")
            return
        c = t.campaigns.c
        result = self._s.exec(
            sa.update(t.campaigns)
            .where(c.id == campaign_id, c.committed_fen >= amount_fen)
            .values(committed_fen=c.committed_fen - amount_fen)
        )
        assert result.rowcount == 1, "released more budget than was committed"
