"""Risk control in SQL (migration 0012): the rules file's versions, the review queue,
and the device and phone blacklists."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.rows import ReviewRow, RiskBlacklistRow, RiskRulesRow

__all__ = ["SqlRisk"]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _rules_row(m: Any) -> RiskRulesRow:
    return RiskRulesRow(
        version=m["version"],
        text=m["text"],
        status=m["status"],
        drafted_by=m["drafted_by"],
        drafted_at=m["drafted_at"],
        approved_by=m["approved_by"],
        approved_at=m["approved_at"],
    )


def _review_row(m: Any) -> ReviewRow:
    outcome = m["outcome_json"]
    return ReviewRow(
        id=m["id"],
        kind=m["kind"],
        status=m["status"],
        created_at=m["created_at"],
        subject=json.loads(m["subject_json"]),
        reasons=json.loads(m["reasons_json"]),
        rules_version=m["rules_version"],
        campaign_id=m["campaign_id"],
        decided_by=m["decided_by"],
        decided_at=m["decided_at"],
        decision_reason=m["decision_reason"],
        outcome=m["outcome"],
        outcome_detail=None if outcome is None else json.loads(outcome),
    )


class SqlRisk:
    """Rules versions, reviews and the risk blacklists."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    # -- the rules file -----------------------------------------------------------------

    def add_rules(self, *, version: int, text: str, drafted_by: str, now: datetime) -> None:
        self._s.exec(
            sa.insert(t.risk_rules).values(
                version=version, text=text, status="draft", drafted_by=drafted_by, drafted_at=now
            )
        )

    def get_rules(self, version: int) -> RiskRulesRow | None:
        row = (
            self._s.exec(sa.select(t.risk_rules).where(t.risk_rules.c.version == version))
            .mappings()
            .first()
        )
        return None if row is None else _rules_row(row)

    def list_rules(self, *, limit: int) -> list[RiskRulesRow]:
        rows = self._s.exec(
            sa.select(t.risk_rules).order_by(t.risk_rules.c.version.desc()).limit(limit)
        ).mappings()
        return [_rules_row(r) for r in rows]

    def active_rules(self) -> RiskRulesRow | None:
        row = (
            self._s.exec(sa.select(t.risk_rules).where(t.risk_rules.c.status == "active"))
            .mappings()
            .first()
        )
        return None if row is None else _rules_row(row)

    def active_version(self) -> int | None:
        r = t.risk_rules.c
        found = self._s.exec(sa.select(r.version).where(r.status == "active")).scalar()
        return None if found is None else int(found)

    def latest_version(self) -> int | None:
        found = self._s.exec(sa.select(sa.func.max(t.risk_rules.c.version))).scalar()
        return None if found is None else int(found)

    def activate_rules(self, version: int, *, approved_by: str, now: datetime) -> bool:
        r = t.risk_rules.c
        draft = self._s.exec(
            sa.select(r.version).where(r.version == version, r.status == "draft")
        ).first()
        if draft is None:
            return False
        self._s.exec(sa.update(t.risk_rules).where(r.status == "active").values(status="retired"))
        result = self._s.exec(
            sa.update(t.risk_rules)
            .where(r.version == version, r.status == "draft")
            .values(status="active", approved_by=approved_by, approved_at=now)
        )
        return result.rowcount == 1

    # -- the review queue ---------------------------------------------------------------

    def add_reviews(self, rows: Sequence[ReviewRow]) -> None:
        assert all(row.status == "pending" for row in rows), "a review starts pending"
        self._s.insert_many(
            t.reviews,
            [
                {
                    "id": row.id,
                    "kind": row.kind,
                    "status": row.status,
                    "created_at": row.created_at,
                    "campaign_id": row.campaign_id,
                    "rules_version": row.rules_version,
                    "subject_json": _json(row.subject),
                    "reasons_json": _json(row.reasons),
                    "decided_by": None,
                    "decided_at": None,
                    "decision_reason": None,
                    "outcome": None,
                    "outcome_json": None,
                }
                for row in rows
            ],
        )

    def get_review(self, review_id: str) -> ReviewRow | None:
        row = (
            self._s.exec(sa.select(t.reviews).where(t.reviews.c.id == review_id)).mappings().first()
        )
        return None if row is None else _review_row(row)

    def list_reviews(
        self, *, status: str | None, kind: str | None, after_id: str | None, limit: int
    ) -> list[ReviewRow]:
        r = t.reviews.c
        query = sa.select(t.reviews).order_by(r.id).limit(limit)
        if status is not None:
            query = query.where(r.status == status)
        if kind is not None:
            query = query.where(r.kind == kind)
        if after_id is not None:
            query = query.where(r.id > after_id)
        return [_review_row(m) for m in self._s.exec(query).mappings()]

    def decide_review(
        self,
        review_id: str,
        *,
        expected: str,
        status: str,
        decided_by: str,
        reason: str,
        now: datetime,
    ) -> bool:
        r = t.reviews.c
        result = self._s.exec(
            sa.update(t.reviews)
            .where(r.id == review_id, r.status == expected)
            .values(status=status, decided_by=decided_by, decided_at=now, decision_reason=reason)
        )
        return result.rowcount == 1

    def set_review_outcome(
        self, review_id: str, *, outcome: str, detail: Mapping[str, Any] | None
    ) -> bool:
        r = t.reviews.c
        result = self._s.exec(
            sa.update(t.reviews)
            .where(r.id == review_id, r.outcome.is_(None))
            .values(outcome=outcome, outcome_json=None if detail is None else _json(detail))
        )
        return result.rowcount == 1

    # -- the blacklists -----------------------------------------------------------------

    # Both lookups start from the batch's own values, one index probe each: a list of a
    # million entries costs them nothing more. (``value = ANY($1)`` as a filter over the
    # list is what PostgreSQL's generic plan does once psycopg prepares the statement,
    # after five runs: every entry against every value, 22 ms for 1,000 of each.)

    def blacklisted_devices(self, device_ids: Sequence[str]) -> set[str]:
        if not device_ids:
            return set()
        sql = (
            f"SELECT b.value FROM {self._values('d')} "  # noqa: S608  # our names
            "JOIN risk_blacklist b ON b.kind = 'device' AND b.value = d.value"
        )
        return {row[0] for row in self._s.driver_rows(sql, (self._s.array(device_ids),))}

    def blacklisted_phones(self, channel_id: str, channel_user_ids: Sequence[str]) -> set[str]:
        if not channel_user_ids:
            return set()
        sql = (
            f"SELECT a.channel_user_id FROM {self._values('u')} "  # noqa: S608  # our names
            "JOIN person_accounts a ON a.channel_id = ? AND a.channel_user_id = u.value "
            "JOIN risk_blacklist b ON b.kind = 'phone' AND b.value = a.phone_bidx"
        )
        rows = self._s.driver_rows(sql, (self._s.array(channel_user_ids), channel_id))
        return {row[0] for row in rows}

    def _values(self, alias: str) -> str:
        """A table of the values of one array parameter, column ``value``."""
        if self._s.postgres:
            return f"unnest(?::text[]) AS {alias}(value)"
        return f"json_each(?) AS {alias}"

    def add_blacklisted(
        self, *, kind: str, value: str, reason: str, created_by: str, now: datetime
    ) -> bool:
        b = t.risk_blacklist.c
        found = self._s.exec(sa.select(b.value).where(b.kind == kind, b.value == value)).first()
        if found is not None:
            return False
        self._s.exec(
            sa.insert(t.risk_blacklist).values(
                kind=kind, value=value, reason=reason, created_by=created_by, created_at=now
            )
        )
        return True

    def remove_blacklisted(self, *, kind: str, value: str) -> bool:
        b = t.risk_blacklist.c
        result = self._s.exec(sa.delete(t.risk_blacklist).where(b.kind == kind, b.value == value))
        return result.rowcount == 1

    def list_blacklisted(
        self, *, kind: str, after: str | None, limit: int
    ) -> list[RiskBlacklistRow]:
        b = t.risk_blacklist.c
        query = sa.select(t.risk_blacklist).where(b.kind == kind).order_by(b.value).limit(limit)
        if after is not None:
            query = query.where(b.value > after)
        return [
            RiskBlacklistRow(
                kind=m["kind"],
                value=m["value"],
                reason=m["reason"],
                created_by=m["created_by"],
                created_at=m["created_at"],
            )
            for m in self._s.exec(query).mappings()
        ]
