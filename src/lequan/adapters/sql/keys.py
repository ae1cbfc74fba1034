"""The key canaries in SQL: which key ring the store's data is written under."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.rows import SealedSample

__all__ = ["SqlKeyChecks"]


class SqlKeyChecks:
    """Canaries by name, and samples of what the store holds encrypted."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def canaries(self) -> dict[str, bytes]:
        c = t.key_canaries.c
        return {row.name: bytes(row.value) for row in self._s.exec(sa.select(c.name, c.value))}

    def add_canaries(self, canaries: Mapping[str, bytes], *, now: datetime) -> None:
        self._s.exec(
            sa.insert(t.key_canaries),
            [{"name": n, "value": v, "created_at": now} for n, v in sorted(canaries.items())],
        )

    def sealed_samples(self, limit: int) -> list[SealedSample]:
        a, p = t.apps.c, t.persons.c
        apps = self._s.exec(
            sa.select(a.secret_key_id, a.secret_enc)
            .order_by(a.created_at, a.id)
            .limit(limit // 2)  # the other half for ID numbers: they test the blind index
        )
        samples = [SealedSample("app_secret", row[0], bytes(row[1])) for row in apps]
        people = self._s.exec(
            sa.select(p.key_id, p.id_number_enc, p.id_number_bidx)
            .order_by(p.created_at, p.id)
            .limit(max(0, limit - len(samples)))
        )
        samples += [SealedSample("id_number", row[0], bytes(row[1]), row[2]) for row in people]
        return samples
