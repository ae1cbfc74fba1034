"""The rounds' fair starts in SQL: one row per round with a start window (its sealed
seed, its commitment, and once published the seed revealed), and the published
entries (migration 0013)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.rows import DrawEntryRow, DrawRow

__all__ = ["SqlDraws"]


def _draw(row: sa.Row[Any]) -> DrawRow:
    m = row._mapping
    return DrawRow(**{f: m[f] for f in DrawRow.__dataclass_fields__})


class SqlDraws:
    """Draws by round; a draw is published once (a conditional update)."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def add_draws(self, rows: Sequence[DrawRow]) -> None:
        self._s.insert_many(
            t.round_draws,
            [{f: getattr(row, f) for f in DrawRow.__dataclass_fields__} for row in rows],
        )

    def get_draw(self, campaign_id: str, round_id: str) -> DrawRow | None:
        d = t.round_draws.c
        found = self._s.exec(
            sa.select(t.round_draws).where(d.campaign_id == campaign_id, d.round_id == round_id)
        ).first()
        return _draw(found) if found else None

    def draws_of(self, campaign_id: str) -> list[DrawRow]:
        d = t.round_draws.c
        rows = self._s.exec(
            sa.select(t.round_draws).where(d.campaign_id == campaign_id).order_by(d.round_id)
        )
        return [_draw(row) for row in rows]

    def unpublished(self, limit: int) -> list[DrawRow]:
        d = t.round_draws.c
        r = t.rounds.c
        rows = self._s.exec(
            sa.select(t.round_draws)
            .join(t.rounds, sa.and_(r.campaign_id == d.campaign_id, r.round_id == d.round_id))
            .where(d.published_at.is_(None))
            .order_by(r.release_at, d.campaign_id, d.round_id)
            .limit(limit)
        )
        return [_draw(row) for row in rows]

    def add_entries(self, campaign_id: str, round_id: str, rows: Sequence[DrawEntryRow]) -> None:
        self._s.insert_many(
            t.draw_entries,
            [
                {
                    "campaign_id": campaign_id,
                    "round_id": round_id,
                    "rank": e.rank,
                    "ticket": e.ticket,
                    "channel_id": e.channel_id,
                    "template_id": e.template_id,
                    "outcome": e.outcome,
                }
                for e in rows
            ],
        )

    def last_rank(self, campaign_id: str, round_id: str) -> int:
        e = t.draw_entries.c
        found = self._s.exec(
            sa.select(sa.func.max(e.rank)).where(
                e.campaign_id == campaign_id, e.round_id == round_id
            )
        ).scalar()
        return int(found or 0)

    def reveal(
        self, campaign_id: str, round_id: str, *, seed_hex: str, entries: int, now: datetime
    ) -> bool:
        d = t.round_draws.c
        e = t.draw_entries.c
        won = (
            sa.select(sa.func.count())
            .where(e.campaign_id == campaign_id, e.round_id == round_id, e.outcome == "won")
            .scalar_subquery()
        )
        revealed = self._s.exec(
            sa.update(t.round_draws)
            .where(
                d.campaign_id == campaign_id,
                d.round_id == round_id,
                d.published_at.is_(None),
            )
            .values(seed_hex=seed_hex, published_at=now, entries=entries, won=won)
        )
        return bool(revealed.rowcount == 1)

    def entries(
        self, campaign_id: str, round_id: str, *, after_rank: int, limit: int
    ) -> list[DrawEntryRow]:
        e = t.draw_entries.c
        rows = self._s.exec(
            sa.select(e.rank, e.ticket, e.channel_id, e.template_id, e.outcome)
            .where(e.campaign_id == campaign_id, e.round_id == round_id, e.rank > after_rank)
            .order_by(e.rank)
            .limit(limit)
        )
        return [DrawEntryRow(*row) for row in rows]
