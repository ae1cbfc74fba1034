"""Trade-in qualification locks in SQL: one row per lock asked of central."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.rows import QualificationLockRow

__all__ = ["SqlQualifications"]

_LIVE = ("held", "issued")


def _row(row: Any) -> QualificationLockRow:
    m = row._mapping
    return QualificationLockRow(**{f: m[f] for f in QualificationLockRow.__dataclass_fields__})


class SqlQualifications:
    """The locks of persons' trade-in qualifications."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def add_lock(self, row: QualificationLockRow) -> None:
        self._s.exec(sa.insert(t.qualification_locks).values(**asdict(row)))

    def get_lock(self, lock_id: str) -> QualificationLockRow | None:
        q = t.qualification_locks
        found = self._s.exec(sa.select(q).where(q.c.id == lock_id)).first()
        return _row(found) if found else None

    def move_lock(
        self,
        lock_id: str,
        *,
        from_states: Sequence[str],
        to: str,
        now: datetime,
        voucher_id: str | None = None,
    ) -> bool:
        q = t.qualification_locks
        values: dict[str, Any] = {"state": to, "updated_at": now}
        if voucher_id is not None:
            values["voucher_id"] = voucher_id
        result = self._s.exec(
            sa.update(q).where(q.c.id == lock_id, q.c.state.in_(list(from_states))).values(values)
        )
        return result.rowcount == 1

    def live_locks(self, person_id: str, category: str) -> int:
        q = t.qualification_locks.c
        found = self._s.exec(
            sa.select(sa.func.count()).where(
                q.person_id == person_id, q.category == category, q.state.in_(_LIVE)
            )
        ).scalar_one()
        return int(found)

    def locks_held_since(self, before: datetime, limit: int) -> list[QualificationLockRow]:
        q = t.qualification_locks
        rows = self._s.exec(
            sa.select(q)
            .where(q.c.state == "held", q.c.created_at < before)
            .order_by(q.c.created_at, q.c.id)
            .limit(limit)
        )
        return [_row(r) for r in rows]

    def lock_of_voucher(self, voucher_id: str) -> QualificationLockRow | None:
        q = t.qualification_locks
        found = self._s.exec(sa.select(q).where(q.c.voucher_id == voucher_id)).first()
        return _row(found) if found else None

    def locks_between(
        self, start: datetime, end: datetime, *, after_id: str | None, limit: int
    ) -> list[QualificationLockRow]:
        q = t.qualification_locks
        query = sa.select(q).where(q.c.created_at >= start, q.c.created_at < end)
        if after_id is not None:
            query = query.where(q.c.id > after_id)
        return [_row(r) for r in self._s.exec(query.order_by(q.c.id).limit(limit))]
