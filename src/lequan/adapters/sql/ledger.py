"""The ledger in SQL: double-entry postings with the budget counter they move,
the outbox of facts other systems must learn, and the hash-chained audit log."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.campaigns import SqlCampaigns
from lequan.adapters.sql.core import SqlSession, sqlite_time
from lequan.domain.audit import GENESIS_HASH, audit_line
from lequan.domain.ledger import Entry, committed_change_fen

__all__ = ["SqlLedger"]


class SqlLedger:
    """Postings, outbox, audit."""

    def __init__(self, session: SqlSession, campaigns: SqlCampaigns) -> None:
        self._s = session
        self._campaigns = campaigns

    def record(
        self,
        entry: Entry,
        *,
        campaign_id: str,
        now: datetime,
        voucher_count: int = 1,
        voucher_id: str | None = None,
        redemption_id: str | None = None,
    ) -> bool:
        """Post ``entry`` and move the campaign's budget counter by what it commits.

        False, with nothing written, when the entry would commit more than the
        budget has left. The counter update takes the campaign row's lock: on
        PostgreSQL the update and the posting go as one statement, so the lock
        is held from there to the commit and no longer.
        """
        change = committed_change_fen(entry)
        if change and self._s.postgres:
            return self._record_postgres(
                entry,
                change,
                campaign_id=campaign_id,
                now=now,
                voucher_count=voucher_count,
                voucher_id=voucher_id,
                redemption_id=redemption_id,
            )
        if change > 0 and not self._campaigns.commit_budget(campaign_id, change):
            return False
        if change < 0:
            self._campaigns.release_budget(campaign_id, -change)
        self._post(
            entry,
            campaign_id=campaign_id,
            now=now,
            voucher_count=voucher_count,
            voucher_id=voucher_id,
            redemption_id=redemption_id,
        )
        return True

    def _record_postgres(
        self,
        entry: Entry,
        change: int,
        *,
        campaign_id: str,
        now: datetime,
        voucher_count: int,
        voucher_id: str | None,
        redemption_id: str | None,
    ) -> bool:
        """``record`` as one statement: the counter's conditional update feeds the
        entry's insert, which feeds its postings'; no row moves if the budget
        cannot take it."""
        room = (
            "committed_fen + %(change)s <= budget_fen"
            if change > 0
            else "committed_fen + %(change)s >= 0"
        )
        sql = (
            "WITH c AS (UPDATE campaigns SET committed_fen = committed_fen + %(change)s "  # noqa: S608
            f"WHERE id = %(campaign_id)s AND {room} RETURNING id), "
            "e AS (INSERT INTO ledger_entries "
            "(campaign_id, kind, voucher_count, voucher_id, redemption_id, created_at) "
            "SELECT c.id, %(kind)s, %(voucher_count)s, %(voucher_id)s, %(redemption_id)s, "
            "%(now)s FROM c RETURNING id) "
            "INSERT INTO ledger_postings (entry_id, account, campaign_id, amount_fen) "
            "SELECT e.id, p.account, %(campaign_id)s, p.amount_fen FROM e CROSS JOIN "
            "unnest(%(accounts)s::text[], %(amounts)s::bigint[]) AS p(account, amount_fen)"
        )
        params = {
            "change": change,
            "campaign_id": campaign_id,
            "kind": entry.kind.value,
            "voucher_count": voucher_count,
            "voucher_id": voucher_id,
            "redemption_id": redemption_id,
            "now": now,
            "accounts": [p.account for p in entry.postings],
            "amounts": [p.amount_fen for p in entry.postings],
        }
        with self._s.driver_cursor(sql) as cursor:
            cursor.execute(sql, params)
            if self._s.pipelined:
                assert change < 0, "a pipeline cannot wait to learn whether budget was taken"
                self._s.rowcount_is(cursor, len(entry.postings), "released more than committed")
                return True
            written = cursor.rowcount == len(entry.postings)
        assert written or change > 0, "released more budget than was committed"
        return bool(written)

    def record_many(
        self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``record`` for many entries that only give budget back (redemptions):
        (entry, {campaign_id, voucher_id, redemption_id}). The counter moves once
        per campaign, campaign rows in key order, after the postings."""
        returned: dict[str, int] = {}
        for entry, where in posts:
            change = committed_change_fen(entry)
            assert change <= 0, "record_many only gives budget back"
            if change:
                campaign_id = where["campaign_id"]
                returned[campaign_id] = returned.get(campaign_id, 0) - change
        self._post_many(posts, now=now)
        for campaign_id in sorted(returned):
            self._campaigns.release_budget(campaign_id, returned[campaign_id])

    def _post(
        self,
        entry: Entry,
        *,
        campaign_id: str,
        now: datetime,
        voucher_count: int = 1,
        voucher_id: str | None = None,
        redemption_id: str | None = None,
    ) -> None:
        result = self._s.exec(
            sa.insert(t.ledger_entries).values(
                campaign_id=campaign_id,
                kind=entry.kind.value,
                voucher_count=voucher_count,
                voucher_id=voucher_id,
                redemption_id=redemption_id,
                created_at=now,
            )
        )
        entry_id = result.inserted_primary_key[0]  # type: ignore[index]  # one-row insert
        self._s.exec(
            sa.insert(t.ledger_postings),
            [
                {
                    "entry_id": entry_id,
                    "account": p.account,
                    "campaign_id": campaign_id,
                    "amount_fen": p.amount_fen,
                }
                for p in entry.postings
            ],
        )

    def _post_many(
        self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``_post`` for many entries: (entry, {campaign_id, voucher_id, redemption_id})."""
        if not posts:
            return
        if self._s.pipelined:
            self._post_many_pipelined(posts, now=now)
            return
        e = t.ledger_entries
        ids = (
            self._s.exec(
                sa.insert(e).returning(e.c.id, sort_by_parameter_order=True),
                [
                    {
                        "campaign_id": where["campaign_id"],
                        "kind": entry.kind.value,
                        "voucher_count": 1,
                        "voucher_id": where.get("voucher_id"),
                        "redemption_id": where.get("redemption_id"),
                        "created_at": now,
                    }
                    for entry, where in posts
                ],
            )
            .scalars()
            .all()
        )
        assert len(ids) == len(posts)
        self._s.insert_many(
            t.ledger_postings,
            [
                {
                    "entry_id": entry_id,
                    "account": p.account,
                    "campaign_id": where["campaign_id"],
                    "amount_fen": p.amount_fen,
                }
                for entry_id, (entry, where) in zip(ids, posts, strict=True)
                for p in entry.postings
            ],
        )

    def _post_many_pipelined(
        self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """Entries and their postings in one statement, so a pipeline need not stop for
        the entries' ids: the postings find their entry by its redemption id."""
        redemption_ids = [where["redemption_id"] for _, where in posts]
        assert None not in redemption_ids, "pipelined entries are one per redemption"
        assert len(set(redemption_ids)) == len(posts), "pipelined entries are one per redemption"
        postings = [
            (where["redemption_id"], p.account, where["campaign_id"], p.amount_fen)
            for entry, where in posts
            for p in entry.postings
        ]
        sql = (
            "WITH e AS (INSERT INTO ledger_entries "
            "(campaign_id, kind, voucher_count, voucher_id, redemption_id, created_at) "
            "SELECT u.campaign_id, u.kind, 1, u.voucher_id, u.redemption_id, %s "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) "
            "AS u(campaign_id, kind, voucher_id, redemption_id) "
            "RETURNING id, redemption_id) "
            "INSERT INTO ledger_postings (entry_id, account, campaign_id, amount_fen) "
            "SELECT e.id, p.account, p.campaign_id, p.amount_fen "
            "FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[]) "
            "AS p(redemption_id, account, campaign_id, amount_fen) "
            "JOIN e ON e.redemption_id = p.redemption_id"
        )
        params = (
            now,
            [where["campaign_id"] for _, where in posts],
            [entry.kind.value for entry, _ in posts],
            [where.get("voucher_id") for _, where in posts],
            redemption_ids,
            *([row[i] for row in postings] for i in range(4)),
        )
        with self._s.driver_cursor(sql) as cursor:
            cursor.execute(sql, params)
            self._s.rowcount_is(cursor, len(postings), "every posting found its entry")

    def balances(self, campaign_id: str) -> dict[str, int]:
        p = t.ledger_postings.c
        rows = self._s.exec(
            sa.select(p.account, sa.func.sum(p.amount_fen))
            .where(p.campaign_id == campaign_id)
            .group_by(p.account)
        )
        return {account: int(total) for account, total in rows}

    def add_outbox(
        self, *, event_id: str, topic: str, payload: Mapping[str, Any], now: datetime
    ) -> None:
        self.add_outbox_many([(event_id, topic, payload)], now=now)

    def add_outbox_many(
        self, events: Sequence[tuple[str, str, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``add_outbox`` for many (event_id, topic, payload), at most one per voucher.

        Each event of a voucher is numbered in the statement that inserts it
        (one more than the voucher's last), so the number needs no read first and
        the statement can go in a pipeline; ``ux_outbox_voucher_seq`` refuses a
        number two writers both took."""
        if not events:
            return
        vouchers = [payload.get("voucher_id") for _, _, payload in events]
        named = [v for v in vouchers if v is not None]
        assert len(set(named)) == len(named), "one event per voucher per call"
        rows = [
            (
                event_id,
                topic,
                json.dumps(payload, sort_keys=True, separators=(",", ":")),
                voucher_id,
            )
            for (event_id, topic, payload), voucher_id in zip(events, vouchers, strict=True)
        ]
        if self._s.postgres:
            sql = (
                "INSERT INTO outbox (id, topic, payload_json, status, attempts, created_at, "
                "next_attempt_at, voucher_id, seq) "
                "SELECT u.id, u.topic, u.payload_json, 'pending', 0, %b, %b, u.voucher_id, "
                "CASE WHEN u.voucher_id IS NULL THEN NULL ELSE 1 + COALESCE(("
                "SELECT max(o.seq) FROM outbox o WHERE o.voucher_id = u.voucher_id), 0) END "
                "FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) "
                "AS u(id, topic, payload_json, voucher_id)"
            )
            with self._s.driver_cursor(sql) as cursor:
                cursor.execute(sql, [now, now, *([row[i] for row in rows] for i in range(4))])
            return
        stamp = sqlite_time(now)
        self._s.driver_sql(
            "INSERT INTO outbox (id, topic, payload_json, status, attempts, created_at, "
            "next_attempt_at, voucher_id, seq) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, "
            "CASE WHEN ? IS NULL THEN NULL ELSE 1 + COALESCE(("
            "SELECT max(seq) FROM outbox WHERE voucher_id = ?), 0) END)",
            [(e, tp, pj, stamp, stamp, v, v, v) for e, tp, pj, v in rows],
        )

    def outbox_topics(self) -> dict[str, int]:
        o = t.outbox.c
        rows = self._s.exec(sa.select(o.topic, sa.func.count()).group_by(o.topic))
        return {topic: int(n) for topic, n in rows}

    def append_audit(
        self, *, actor: str, action: str, target: str, details: Mapping[str, Any], now: datetime
    ) -> None:
        """Append to the hash-chained audit log; a concurrent append collides on ``seq``."""
        a = t.audit_log.c
        last = self._s.exec(sa.select(a.seq, a.hash).order_by(a.seq.desc()).limit(1)).first()
        line = audit_line(
            seq=last.seq + 1 if last else 1,
            at=now,
            actor=actor,
            action=action,
            target=target,
            details=details,
            prev_hash=last.hash if last else GENESIS_HASH,
        )
        self._s.exec(
            sa.insert(t.audit_log).values(
                seq=line.seq,
                at=line.at,
                actor=line.actor,
                action=line.action,
                target=line.target,
                details_json=line.details_json,
                prev_hash=line.prev_hash,
                hash=line.hash,
            )
        )
