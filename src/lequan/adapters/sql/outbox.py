"""The relay's side of the outbox in SQL: lease what is due, settle each event."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.rows import OutboxRow

__all__ = ["SqlOutbox"]

_COLUMNS = (
    "id",
    "topic",
    "payload_json",
    "created_at",
    "status",
    "attempts",
    "voucher_id",
    "seq",
    "last_error",
)


def _row(row: Any) -> OutboxRow:
    m = row._mapping
    return OutboxRow(**{c: m[c] for c in _COLUMNS})


class SqlOutbox:
    """Outbox rows as the relay sees them."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def lease_due(self, *, now: datetime, lease_until: datetime, limit: int) -> list[OutboxRow]:
        o = t.outbox.c
        due = (
            sa.select(o.id)
            .where(o.status == "pending", o.next_attempt_at <= now)
            .order_by(o.next_attempt_at, o.id)
            .limit(limit)
        )
        if self._s.postgres:
            # Another relay's leased rows are skipped, not waited for.
            due = due.with_for_update(skip_locked=True)
        leased = self._s.exec(
            sa.update(t.outbox)
            .where(o.id.in_(due.scalar_subquery()))
            .values(next_attempt_at=lease_until, attempts=o.attempts + 1)
            .returning(*(o[c] for c in _COLUMNS))
        ).all()
        # RETURNING gives rows in no promised order: oldest first, one voucher's in seq order.
        return sorted((_row(r) for r in leased), key=lambda r: (r.created_at, r.id))

    def mark_delivered(self, event_ids: Sequence[str], *, now: datetime) -> None:
        if event_ids:
            self._s.exec(
                sa.update(t.outbox)
                .where(self._among(list(event_ids)))
                .values(status="delivered", delivered_at=now, last_error=None)
            )

    def _among(self, event_ids: list[str]) -> Any:
        """``id IN event_ids``: on PostgreSQL ``= ANY(array)``, one parameter, where a
        thousand-item IN list costs more to render and parse than the update takes."""
        o = t.outbox.c
        if self._s.postgres:
            return o.id == sa.any_(sa.bindparam(None, event_ids, type_=postgresql.ARRAY(sa.String)))
        return o.id.in_(event_ids)

    def retry_later(self, retries: Sequence[tuple[str, datetime]], *, error: str) -> None:
        if retries:
            o = t.outbox.c
            self._s.exec(
                sa.update(t.outbox)
                .where(o.id == sa.bindparam("event_id"), o.status == "pending")
                .values(next_attempt_at=sa.bindparam("next_at"), last_error=error[:200]),
                [{"event_id": event_id, "next_at": at} for event_id, at in retries],
            )

    def mark_dead(self, dead: Sequence[tuple[str, str]], *, now: datetime) -> None:
        if dead:
            o = t.outbox.c
            self._s.exec(
                sa.update(t.outbox)
                .where(o.id == sa.bindparam("event_id"))
                .values(status="dead", last_error=sa.bindparam("reason"), next_attempt_at=now),
                [{"event_id": event_id, "reason": reason[:200]} for event_id, reason in dead],
            )

    def dead_letters(self, *, after_id: str | None, limit: int) -> list[OutboxRow]:
        o = t.outbox.c
        query = sa.select(*(o[c] for c in _COLUMNS)).where(o.status == "dead")
        if after_id is not None:
            query = query.where(o.id > after_id)
        return [_row(r) for r in self._s.exec(query.order_by(o.id).limit(limit))]

    def replay(self, event_ids: Sequence[str] | None, *, now: datetime, limit: int) -> int:
        o = t.outbox.c
        chosen = sa.select(o.id).where(o.status == "dead")
        if event_ids is not None:
            chosen = chosen.where(o.id.in_(list(event_ids)))
        chosen = chosen.order_by(o.id).limit(limit)
        result = self._s.exec(
            sa.update(t.outbox)
            .where(o.id.in_(chosen.scalar_subquery()))
            .values(status="pending", attempts=0, next_attempt_at=now)
        )
        return int(result.rowcount)

    def backlog(self) -> dict[str, int]:
        o = t.outbox.c
        rows = self._s.exec(sa.select(o.status, sa.func.count()).group_by(o.status))
        return {status: int(n) for status, n in rows}

    def events_between(
        self, start: datetime, end: datetime, *, after_id: str | None, limit: int
    ) -> list[OutboxRow]:
        o = t.outbox.c
        query = sa.select(*(o[c] for c in _COLUMNS)).where(
            o.created_at >= start, o.created_at < end
        )
        if after_id is not None:
            query = query.where(o.id > after_id)
        return [_row(r) for r in self._s.exec(query.order_by(o.id).limit(limit))]

    def pending_of_voucher(self, voucher_id: str, limit: int) -> list[OutboxRow]:
        o = t.outbox.c
        query = (
            sa.select(*(o[c] for c in _COLUMNS))
            .where(o.voucher_id == voucher_id, o.status == "pending")
            .order_by(o.seq)
            .limit(limit)
        )
        return [_row(r) for r in self._s.exec(query)]

    def wake(self, *, now: datetime, limit: int) -> int:
        o = t.outbox.c
        waiting = (
            sa.select(o.id)
            .where(o.status == "pending", o.next_attempt_at > now, o.last_error.is_not(None))
            .order_by(o.next_attempt_at, o.id)
            .limit(limit)
        )
        result = self._s.exec(
            sa.update(t.outbox)
            .where(o.id.in_(waiting.scalar_subquery()))
            .values(next_attempt_at=now)
        )
        return int(result.rowcount)
