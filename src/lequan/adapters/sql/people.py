"""People in SQL: persons and their channel accounts, operators, apps, merchants
and the blacklist — everyone the platform knows, and what it knows of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.adapters.sql.core import SqlSession
from lequan.rows import AppRow, MerchantRow, MerchantSuspension, PersonRow

__all__ = ["SqlPeople"]


class SqlPeople:
    """Persons, accounts, operators, apps, merchants, blacklist."""

    def __init__(self, session: SqlSession) -> None:
        self._s = session

    def add_operator(self, *, operator_id: str, role: str, token_hash: str, now: datetime) -> None:
        self._s.exec(
            sa.insert(t.operators).values(
                id=operator_id, role=role, token_hash=token_hash, active=True, created_at=now
            )
        )

    def operator_by_token_hash(self, token_hash: str) -> tuple[str, str] | None:
        row = self._s.exec(
            sa.select(t.operators.c.id, t.operators.c.role).where(
                t.operators.c.token_hash == token_hash, t.operators.c.active.is_(True)
            )
        ).first()
        return (row.id, row.role) if row else None

    def operator_role(self, operator_id: str) -> str | None:
        row = self._s.exec(
            sa.select(t.operators.c.role).where(
                t.operators.c.id == operator_id, t.operators.c.active.is_(True)
            )
        ).first()
        return row.role if row else None

    def any_operator(self) -> bool:
        return self._s.exec(sa.select(t.operators.c.id).limit(1)).first() is not None

    def add_app(
        self, *, app_id: str, kind: str, name: str, key_id: str, secret_enc: bytes, now: datetime
    ) -> None:
        self._s.exec(
            sa.insert(t.apps).values(
                id=app_id,
                kind=kind,
                name=name,
                secret_key_id=key_id,
                secret_enc=secret_enc,
                active=True,
                created_at=now,
            )
        )

    def get_app(self, app_id: str) -> AppRow | None:
        row = self._s.exec(sa.select(t.apps).where(t.apps.c.id == app_id)).first()
        if row is None:
            return None
        m = row._mapping
        return AppRow(**{f: m[f] for f in AppRow.__dataclass_fields__})

    def upsert_merchant(
        self,
        *,
        merchant_id: str,
        name: str,
        mcc: str,
        region_code: str,
        modes: Sequence[str],
        acquirer_id: str,
        campaign_ids: Sequence[str],
        now: datetime,
    ) -> None:
        values = {
            "name": name,
            "mcc": mcc,
            "region_code": region_code,
            "modes": ",".join(sorted(modes)),
            "acquirer_id": acquirer_id,
        }
        updated = self._s.exec(
            sa.update(t.merchants).where(t.merchants.c.id == merchant_id).values(**values)
        )
        if updated.rowcount == 0:
            self._s.exec(sa.insert(t.merchants).values(id=merchant_id, created_at=now, **values))
        self._s.exec(
            sa.delete(t.merchant_campaigns).where(t.merchant_campaigns.c.merchant_id == merchant_id)
        )
        if campaign_ids:
            self._s.exec(
                sa.insert(t.merchant_campaigns),
                [{"merchant_id": merchant_id, "campaign_id": c} for c in sorted(set(campaign_ids))],
            )

    def get_merchant(self, merchant_id: str) -> MerchantRow | None:
        row = self._s.exec(sa.select(t.merchants).where(t.merchants.c.id == merchant_id)).first()
        if row is None:
            return None
        enrolled = self._s.exec(
            sa.select(t.merchant_campaigns.c.campaign_id).where(
                t.merchant_campaigns.c.merchant_id == merchant_id
            )
        ).scalars()
        m = row._mapping
        suspension = None
        if m["suspended_at"] is not None:
            suspension = MerchantSuspension(
                reason=m["suspension_reason"],
                suspended_by=m["suspended_by"],
                suspended_at=m["suspended_at"],
            )
        return MerchantRow(
            id=m["id"],
            name=m["name"],
            mcc=m["mcc"],
            region_code=m["region_code"],
            modes=frozenset(m["modes"].split(",")),
            acquirer_id=m["acquirer_id"],
            enrolled_campaigns=frozenset(enrolled),
            suspension=suspension,
        )

    def suspend_merchant(
        self, merchant_id: str, *, reason: str, suspended_by: str, now: datetime
    ) -> bool:
        m = t.merchants.c
        result = self._s.exec(
            sa.update(t.merchants)
            .where(m.id == merchant_id, m.suspended_at.is_(None))
            .values(suspended_at=now, suspended_by=suspended_by, suspension_reason=reason)
        )
        return result.rowcount == 1

    def reinstate_merchant(self, merchant_id: str) -> bool:
        m = t.merchants.c
        result = self._s.exec(
            sa.update(t.merchants)
            .where(m.id == merchant_id, m.suspended_at.is_not(None))
            .values(suspended_at=None, suspended_by=None, suspension_reason=None)
        )
        return result.rowcount == 1

    def person_by_id_number_bidx(self, bidx: str) -> PersonRow | None:
        row = self._s.exec(sa.select(t.persons).where(t.persons.c.id_number_bidx == bidx)).first()
        return self._person(row) if row else None

    def get_person(self, person_id: str) -> PersonRow | None:
        row = self._s.exec(sa.select(t.persons).where(t.persons.c.id == person_id)).first()
        return self._person(row) if row else None

    def set_pseudonym(self, person_id: str, pseudonym: str) -> None:
        p = t.persons.c
        self._s.exec(sa.update(t.persons).where(p.id == person_id).values(pseudonym=pseudonym))

    @staticmethod
    def _person(row: sa.Row[Any]) -> PersonRow:
        m = row._mapping
        return PersonRow(**{f: m[f] for f in PersonRow.__dataclass_fields__})

    def insert_person(self, values: Mapping[str, Any]) -> None:
        self._s.exec(sa.insert(t.persons).values(**values))

    def update_account_identity(
        self, channel_id: str, channel_user_id: str, identity: Mapping[str, Any]
    ) -> None:
        a = t.person_accounts.c
        self._s.exec(
            sa.update(t.person_accounts)
            .where(a.channel_id == channel_id, a.channel_user_id == channel_user_id)
            .values(**identity)
        )

    def account_person(self, channel_id: str, channel_user_id: str) -> str | None:
        a = t.person_accounts.c
        return self._s.exec(
            sa.select(a.person_id).where(
                a.channel_id == channel_id, a.channel_user_id == channel_user_id
            )
        ).scalar_one_or_none()

    def person_account_in_channel(self, channel_id: str, person_id: str) -> str | None:
        a = t.person_accounts.c
        return self._s.exec(
            sa.select(a.channel_user_id).where(a.channel_id == channel_id, a.person_id == person_id)
        ).scalar_one_or_none()

    def insert_account(
        self,
        *,
        channel_id: str,
        channel_user_id: str,
        person_id: str,
        identity: Mapping[str, Any],
        now: datetime,
    ) -> None:
        self._s.exec(
            sa.insert(t.person_accounts).values(
                channel_id=channel_id,
                channel_user_id=channel_user_id,
                person_id=person_id,
                created_at=now,
                **identity,
            )
        )

    def blacklisted(self, bidxs: Sequence[str]) -> set[str]:
        if not bidxs:
            return set()
        b = t.blacklist.c
        rows = self._s.exec(
            sa.select(b.id_number_bidx).where(b.id_number_bidx.in_(sorted(set(bidxs))))
        )
        return {r[0] for r in rows}

    def add_blacklist(self, *, bidx: str, reason: str, created_by: str, now: datetime) -> bool:
        if self.blacklisted([bidx]):
            return False
        self._s.exec(
            sa.insert(t.blacklist).values(
                id_number_bidx=bidx, reason=reason, created_by=created_by, created_at=now
            )
        )
        return True

    def remove_blacklist(self, bidx: str) -> bool:
        result = self._s.exec(sa.delete(t.blacklist).where(t.blacklist.c.id_number_bidx == bidx))
        return result.rowcount == 1

    def claimants(
        self, channel_id: str, channel_user_ids: Sequence[str]
    ) -> dict[str, tuple[str, str, bool]]:
        """channel_user_id -> (person_id, residence_region, blacklisted), one query; the
        region is the one this channel registered the person with."""
        sql = (
            "SELECT a.channel_user_id, a.person_id, a.residence_region, "  # noqa: S608
            "b.id_number_bidx IS NOT NULL "
            "FROM person_accounts a JOIN persons p ON p.id = a.person_id "
            "LEFT JOIN blacklist b ON b.id_number_bidx = p.id_number_bidx "
            f"WHERE a.channel_id = ? AND {self._s.in_array('a.channel_user_id')}"
        )
        rows = self._s.driver_rows(sql, (channel_id, self._s.array(channel_user_ids)))
        return {user: (person, region, bool(black)) for user, person, region, black in rows}
