"""Idempotency in SQL: the answers given to each (app, Idempotency-Key).

A claim's key lives on the voucher it issued (one row per claim); every
other call's answer is a row of ``idempotency_keys``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession

__all__ = ["SqlIdempotency"]


class SqlIdempotency:
    """Stored answers by (app_id, key)."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def answered_keys(
        self, app_id: str, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str | None, str | None]]:
        """key -> (request_hash, status_code, response_json, voucher_id), one query.

        A claim's key is on the voucher it issued (``response_json`` None: the
        answer is the voucher's); any other key, and claims from before
        migration 0002, has its answer stored in ``idempotency_keys``
        (``voucher_id`` None).
        """
        rows = self._s.driver_rows(
            "SELECT key, request_hash, status_code, response_json, "  # noqa: S608
            "CAST(NULL AS TEXT) FROM idempotency_keys "
            f"WHERE app_id = ? AND {self._s.in_array('key')} "
            "UNION ALL SELECT claim_key, claim_hash, 201, CAST(NULL AS TEXT), id FROM vouchers "
            f"WHERE claim_app_id = ? AND {self._s.in_array('claim_key')}",
            (app_id, self._s.array(keys), app_id, self._s.array(keys)),
        )
        return {key: (h, int(status), body, vid) for key, h, status, body, vid in rows}

    def idempotent_answer(self, app_id: str, key: str) -> tuple[str, int, str] | None:
        """(request_hash, status_code, response_json) stored for a key, if any."""
        k = t.idempotency_keys.c
        row = self._s.exec(
            sa.select(k.request_hash, k.status_code, k.response_json).where(
                k.app_id == app_id, k.key == key
            )
        ).first()
        return (row.request_hash, row.status_code, row.response_json) if row else None

    def store_answers(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._s.insert_many(t.idempotency_keys, rows)
