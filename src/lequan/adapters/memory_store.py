"""The store held in this process: every aggregate in dictionaries, for the unit
tests, the demo and embedded experiments. Not for production: nothing reaches a
disk, and every writing transaction copies the tables it writes.

Why it exists: most service tests need a store only to keep what the service
wrote, and a migrated SQLite file or PostgreSQL database costs them a second
or more each. This store answers in microseconds and passes the same contract
as the SQL store (``tests/integration/test_store_contract.py``, which is the
definition of the rules below), so those tests run on it; the hot paths and
every invariant and race test stay on the real stores.

Transactions, as SQLite's (the embedded default) with the strictness of
PostgreSQL's:

- The committed contents are one version of the tables that is never changed
  once published; ``commit()`` publishes a new one (one reference swap).
- A writable unit of work begins at its first call, as SQLite's ``BEGIN
  IMMEDIATE``: it takes the store's one write lock (writers queue; a writer
  that waits longer than ``lock_timeout_s`` gets ``StoreUnavailable``, as
  SQLite's busy timeout) and works on a fork of the committed version whose
  tables are copied on their first write. ``commit()`` publishes the fork and
  lets the lock go; ``rollback()`` or leaving the block drops it. The next
  call after either begins a new transaction.
- A readonly unit of work takes no lock and never waits for a writer: it
  reads the version committed when it began (one consistent snapshot), never
  a writer's uncommitted rows. A write in it is a programmer's error.
- Every statement checks all its rules before it changes anything, so a
  refused one changes nothing; and, as on PostgreSQL, after a ``StoreError``
  the transaction is lost: every call fails until ``rollback()``, and
  ``commit()`` refuses. A service that goes on after a refusal fails here, in
  milliseconds, instead of only on PostgreSQL.
- ``pipeline()`` sends nothing anywhere, but holds its block to what a
  PostgreSQL pipeline can carry (the port's list of writes), for the same
  reason.

Bounds: one writer at a time; a writer copies each table it writes whole,
once per transaction (O(rows): fine for thousands of vouchers, slow for
millions); strings of any length, as SQLite keeps them (PostgreSQL's
``UnstorableValue`` for a value too long for its column is the SQL store's
alone).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from lequan.domain.audit import GENESIS_HASH, AuditLine, audit_line
from lequan.domain.campaigns import CampaignConfig, CampaignStatus
from lequan.domain.ledger import Entry, committed_change_fen
from lequan.domain.redemption_states import RedemptionStatus
from lequan.domain.trade_in import Category, Product
from lequan.domain.vouchers import VoucherState
from lequan.ports.errors import ConstraintViolated, DuplicateKey, StoreError, StoreUnavailable
from lequan.rows import (
    AppRow,
    CampaignRow,
    DrawEntryRow,
    DrawRow,
    MerchantRow,
    MerchantSuspension,
    OutboxRow,
    PayableHoldRow,
    PersonRow,
    ProductRow,
    QualificationLockRow,
    RecentRedemption,
    RedemptionFactRow,
    RedemptionReads,
    RedemptionRow,
    ReviewRow,
    RiskBlacklistRow,
    RiskRulesRow,
    SealedSample,
    SkuPriceRow,
    StockKey,
    VoucherRow,
)

__all__ = ["MemoryStore", "MemoryUnitOfWork"]

# SQLite's busy timeout (adapters/sql/engine.py): how long a writer queues for the lock.
LOCK_TIMEOUT_S_DEFAULT = 30.0
# What ``schema_revisions`` answers: the tables are this code's own, always current.
SCHEMA_REVISION = "memory"

OPERATOR_ROLES = frozenset({"maker", "checker", "viewer", "analyst"})
APP_KINDS = frozenset({"channel", "acquirer"})
REDEMPTION_STATUSES = frozenset(
    {"locked", "redeemed", "voided", "lock_expired", "reversed", "refunded"}
)
# What a redemption's stored status is read back as.
redemption_status = RedemptionStatus

# The columns of the tables the port writes by name (NOT NULL; nullable with defaults).
_PERSON_COLUMNS = (
    "id",
    "id_number_bidx",
    "id_number_enc",
    "key_id",
    "consent_version",
    "consent_at",
    "created_at",
)
# What a channel registered a person with, kept on that channel's account.
_ACCOUNT_IDENTITY_COLUMNS = (
    "name_enc",
    "phone_enc",
    "phone_bidx",
    "key_id",
    "residence_region",
    "consent_version",
    "consent_at",
)

_REDEMPTION_REQUIRED = (
    "id",
    "voucher_id",
    "campaign_id",
    "acquirer_id",
    "merchant_id",
    "order_id",
    "mode",
    "order_amount_fen",
    "discount_fen",
    "pay_fen",
    "status",
    "created_at",
    "updated_at",
)

_REDEMPTION_OPTIONAL: Mapping[str, Any] = {
    "lock_expires_at": None,
    "product_json": None,
    "version": 1,
}

_ANSWER_COLUMNS = ("app_id", "key", "request_hash", "status_code", "response_json", "created_at")

K = TypeVar("K")
V = TypeVar("V")


def _utc(value: datetime) -> datetime:
    """An instant as the SQL store reads it back: aware, in UTC."""
    assert value.tzinfo is not None, "naive datetimes never reach the store"
    return value.astimezone(UTC)


class _Table(Generic[K, V]):
    """One table of one version. Read freely; written only by the transaction that
    forked it, which copies the rows on its first write, so the version it was
    forked from (committed, perhaps being read) never changes."""

    __slots__ = ("_rows", "_shared")

    def __init__(self, rows: dict[K, V] | None = None, *, shared: bool = False) -> None:
        self._rows: dict[K, V] = {} if rows is None else rows
        self._shared = shared

    def fork(self) -> _Table[K, V]:
        return _Table(self._rows, shared=True)

    def get(self, key: K) -> V | None:
        return self._rows.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> Iterable[K]:
        return self._rows.keys()

    def items(self) -> Iterable[tuple[K, V]]:
        return self._rows.items()

    def values(self) -> Iterable[V]:
        return self._rows.values()

    def put(self, key: K, value: V) -> None:
        self._own()
        self._rows[key] = value

    def delete(self, key: K) -> None:
        self._own()
        del self._rows[key]

    def _own(self) -> None:
        if self._shared:
            self._rows = dict(self._rows)
            self._shared = False


# -- what each table keeps: the row type the port hands back, and the columns it does not


@dataclass(frozen=True, slots=True)
class _Campaign:
    row: CampaignRow  # its ``rounds`` are never changed in place, only replaced
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class _Operator:
    role: str
    token_hash: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Merchant:
    name: str
    mcc: str
    region_code: str
    modes: str  # comma-joined, sorted, as the SQL column keeps them
    acquirer_id: str
    created_at: datetime
    enrolled: frozenset[str]
    suspension: MerchantSuspension | None = None


@dataclass(frozen=True, slots=True)
class _Person:
    row: PersonRow
    consent_version: str
    consent_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Account:
    person_id: str
    identity: Mapping[str, Any]  # _ACCOUNT_IDENTITY_COLUMNS
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _Voucher:
    row: VoucherRow
    updated_at: datetime
    claim: tuple[str, str, str] | None  # (app_id, key, request_hash) of the claim


@dataclass(frozen=True, slots=True)
class _Redemption:
    row: RedemptionRow
    product_json: str | None


@dataclass(frozen=True, slots=True)
class _LedgerEntry:
    campaign_id: str
    kind: str
    voucher_count: int
    voucher_id: str | None
    redemption_id: str | None
    created_at: datetime
    postings: tuple[tuple[str, int], ...]  # (account, amount_fen)


@dataclass(frozen=True, slots=True)
class _Answer:
    request_hash: str
    status_code: int
    response_json: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class _OutboxEvent:
    topic: str
    payload_json: str
    created_at: datetime
    voucher_id: str | None = None
    seq: int | None = None
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None  # None: created_at
    last_error: str | None = None
    delivered_at: datetime | None = None


def _new_table() -> _Table[Any, Any]:
    return _Table()


@dataclass(slots=True)
class _Tables:
    """One version of everything the store keeps; the indexes are the SQL schema's
    unique keys (and the lookups the port makes by something other than a key)."""

    campaigns: _Table[str, _Campaign]
    stocks: _Table[StockKey, tuple[int, int]]  # -> (initial, issued)
    operators: _Table[str, _Operator]
    operator_by_token: _Table[str, str]  # uq_operators_token_hash
    apps: _Table[str, AppRow]
    merchants: _Table[str, _Merchant]
    persons: _Table[str, _Person]
    person_by_bidx: _Table[str, str]  # uq_persons_id_number_bidx
    accounts: _Table[tuple[str, str], _Account]  # (channel, channel user) -> account
    account_of_person: _Table[tuple[str, str], str]  # (channel, person) -> channel user
    blacklist: _Table[str, tuple[str, str, datetime]]  # bidx -> (reason, by, at)
    vouchers: _Table[str, _Voucher]
    claim_slots: _Table[tuple[str, str, str, str, int], str]  # uq_vouchers_claim_slot
    claim_keys: _Table[tuple[str, str], str]  # uq_vouchers_claim_key: (key, app) -> voucher
    vouchers_of_person: _Table[str, frozenset[str]]  # ix_vouchers_person
    redemptions: _Table[str, _Redemption]
    ledger: _Table[int, _LedgerEntry]  # ids 1, 2, ... as the store gave them
    answers: _Table[tuple[str, str], _Answer]  # (key, app_id)
    outbox: _Table[str, _OutboxEvent]
    outbox_seqs: _Table[str, int]  # voucher -> its last event's seq (ux_outbox_voucher_seq)
    qualification_locks: _Table[str, QualificationLockRow]
    products: _Table[str, ProductRow]  # redemption_products, by redemption
    held_identifiers: _Table[tuple[str, str], str]  # uq_redemption_products_*: unreleased
    audit: _Table[int, AuditLine]  # seq 1, 2, ...
    key_canaries: _Table[str, bytes]
    risk_rules: _Table[int, RiskRulesRow]  # by version (ux_risk_rules_active: one active)
    reviews: _Table[str, ReviewRow]
    risk_blacklist: _Table[tuple[str, str], RiskBlacklistRow]  # (kind, value)
    risk_redemptions: _Table[str, RedemptionFactRow]
    payable_holds: _Table[str, PayableHoldRow]
    sku_prices: _Table[str, SkuPriceRow]
    draws: _Table[tuple[str, str], DrawRow]  # round_draws, by (campaign, round)
    draw_entries: _Table[tuple[str, str], tuple[DrawEntryRow, ...]]  # in rank order

    @classmethod
    def empty(cls) -> _Tables:
        return cls(**{f.name: _new_table() for f in fields(cls)})

    def fork(self) -> _Tables:
        return _Tables(**{f.name: getattr(self, f.name).fork() for f in fields(self)})


# -- the unit of work ---------------------------------------------------------------------


class MemoryUnitOfWork:
    """One transaction over every aggregate; rolled back unless committed."""

    def __init__(self, store: MemoryStore, *, readonly: bool) -> None:
        self._store = store
        self._readonly = readonly
        self._tables: _Tables | None = None  # None: no transaction begun yet
        self._locked = False
        self._failed = False
        self._pipelined = False
        self._ended = False
        self.campaigns = MemoryCampaigns(self)
        self.people = MemoryPeople(self)
        self.vouchers = MemoryVouchers(self)
        self.ledger = MemoryLedger(self)
        self.idempotency = MemoryIdempotency(self)
        self.keys = MemoryKeyChecks(self)
        self.outbox = MemoryOutbox(self)
        self.qualifications = MemoryQualifications(self)
        self.products = MemoryProducts(self)
        self.risk = MemoryRisk(self)
        self.redemption_risk = MemoryRedemptionRisk(self)
        self.draws = MemoryDraws(self)

    def read(self, *, pipelined: bool = False) -> _Tables:
        """The transaction's tables, begun now if need be."""
        assert not self._ended, "a unit of work is used inside its block only"
        if self._failed:
            raise StoreError("a statement of this transaction failed: roll it back")
        assert pipelined or not self._pipelined, "only the port's pipelined writes run there"
        if self._tables is None:
            if self._readonly:
                self._tables = self._store._committed
            else:
                self._store._lock_writer()
                self._locked = True
                self._tables = self._store._committed.fork()
        return self._tables

    def write(self, *, pipelined: bool = False) -> _Tables:
        assert not self._readonly, "a readonly unit of work promised not to write"
        return self.read(pipelined=pipelined)

    def refused(self, error: StoreError) -> StoreError:
        """``error``, the transaction lost with it (as on PostgreSQL)."""
        self._failed = True
        return error

    def commit(self) -> None:
        try:
            if self._failed:
                raise StoreError("a statement of this transaction failed: nothing committed")
            if self._tables is not None and not self._readonly:
                self._store._publish(self._tables)
        finally:
            self.close()

    def rollback(self) -> None:
        self.close()

    def close(self) -> None:
        """End the transaction, if one is begun; the next call begins another."""
        self._tables = None
        self._failed = False
        if self._locked:
            self._locked = False
            self._store._unlock_writer()

    def end(self) -> None:
        """The unit of work's block is over: it is not used again."""
        self._ended = True

    @contextmanager
    def _pipeline(self) -> Iterator[None]:
        assert not self._pipelined, "pipelines do not nest"
        self._pipelined = True
        try:
            yield
        finally:
            self._pipelined = False

    def pipeline(self) -> AbstractContextManager[None]:
        """Nothing to send ahead in memory; the block is held to the pipelined writes."""
        return self._pipeline()


class _Repository:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._u = uow

    def _columns(
        self,
        table: str,
        values: Mapping[str, Any],
        required: Iterable[str],
        optional: Mapping[str, Any],
    ) -> dict[str, Any]:
        """A row given by column name, checked as the table would: a column it lacks
        is the caller's bug, a NOT NULL one missing is ``ConstraintViolated``; the
        optional ones take their defaults."""
        required = tuple(required)
        unknown = set(values) - set(required) - set(optional)
        assert not unknown, f"{table} has no column {sorted(unknown)}"
        missing = sorted(c for c in required if values.get(c) is None)
        if missing:
            raise self._u.refused(ConstraintViolated(f"{table}: {missing} may not be null"))
        row = {**optional, **values}
        for name, value in row.items():
            if isinstance(value, datetime):
                row[name] = _utc(value)
        return row


class MemoryCampaigns(_Repository):
    """Campaigns, rounds, stocks and the budget counter."""

    def insert_campaign(self, config: CampaignConfig, *, drafted_by: str, now: datetime) -> None:
        t = self._u.write()
        if config.id in t.campaigns:
            raise self._u.refused(DuplicateKey("campaigns.id"))
        if config.budget_fen < 0:
            raise self._u.refused(ConstraintViolated("campaigns: within_budget"))
        round_ids = [r.id for r in config.rounds]
        if len(set(round_ids)) != len(round_ids):
            raise self._u.refused(DuplicateKey("rounds.(campaign_id, round_id)"))
        stocks = {
            (config.id, r.id, channel, template_id): count
            for r in config.rounds
            for channel, per_template in r.stock.items()
            for template_id, count in per_template.items()
        }
        if any(count < 0 for count in stocks.values()):
            raise self._u.refused(ConstraintViolated("stocks: within_stock"))
        row = CampaignRow(
            id=config.id,
            status=CampaignStatus.DRAFT,
            config=config,
            budget_fen=config.budget_fen,
            committed_fen=0,
            drafted_by=drafted_by,
            approved_by=None,
            rounds={r.id: (_utc(r.release_at), _utc(r.ends_at)) for r in config.rounds},
        )
        t.campaigns.put(config.id, _Campaign(row, created_at=_utc(now), updated_at=_utc(now)))
        for key, count in stocks.items():
            t.stocks.put(key, (count, 0))

    def campaign_exists(self, campaign_id: str) -> bool:
        return campaign_id in self._u.read().campaigns

    def get_campaign(self, campaign_id: str) -> CampaignRow | None:
        found = self._u.read().campaigns.get(campaign_id)
        return None if found is None else _campaign_row(found)

    def list_campaigns(
        self, *, statuses: Iterable[CampaignStatus] | None = None
    ) -> list[CampaignRow]:
        wanted = None if statuses is None else set(statuses)
        campaigns = self._u.read().campaigns
        rows = [campaigns.get(campaign_id) for campaign_id in sorted(campaigns.keys())]
        return [
            _campaign_row(found)
            for found in rows
            if found is not None and (wanted is None or found.row.status in wanted)
        ]

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
        t = self._u.write()
        found = t.campaigns.get(campaign_id)
        if found is None or found.row.status is not expected:
            return False
        row = replace(found.row, status=status)
        if approved_by is not None:
            row = replace(row, approved_by=approved_by)
        t.campaigns.put(campaign_id, replace(found, row=row, updated_at=_utc(now)))
        return True

    def set_redemptions_paused(self, campaign_id: str, *, paused: bool, now: datetime) -> bool:
        t = self._u.write()
        found = t.campaigns.get(campaign_id)
        if found is None or found.row.redemptions_paused is paused:
            return False
        row = replace(found.row, redemptions_paused=paused)
        t.campaigns.put(campaign_id, replace(found, row=row, updated_at=_utc(now)))
        return True

    def set_round_times(
        self, campaign_id: str, round_id: str, *, release_at: datetime, ends_at: datetime
    ) -> None:
        t = self._u.write()
        found = t.campaigns.get(campaign_id)
        if found is None or round_id not in found.row.rounds:
            return
        rounds = {**found.row.rounds, round_id: (_utc(release_at), _utc(ends_at))}
        t.campaigns.put(campaign_id, replace(found, row=replace(found.row, rounds=rounds)))

    def lock_campaign_budget(self, campaign_id: str) -> tuple[int, int]:
        """(budget_fen, committed_fen); the lock is the store's one writer lock."""
        found = self._u.read().campaigns.get(campaign_id)
        if found is None:
            raise self._u.refused(StoreError(f"no campaign {campaign_id!r} to lock"))
        return found.row.budget_fen, found.row.committed_fen

    def take_stock(self, key: StockKey, count: int) -> bool:
        """Count ``count`` more vouchers out of a stock, atomically, if it holds them."""
        assert count > 0
        t = self._u.write()
        found = t.stocks.get(key)
        if found is None:
            return False
        initial, issued = found
        if issued + count > initial:
            return False
        t.stocks.put(key, (initial, issued + count))
        return True

    def lock_stock(self, key: StockKey) -> tuple[int, int]:
        """(initial, issued) of a stock; (0, 0) if the campaign stocks no such template."""
        return self._u.read().stocks.get(key) or (0, 0)

    def stock_issued(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        return {
            (r, c, tpl): issued
            for (campaign, r, c, tpl), (_, issued) in sorted(self._u.read().stocks.items())
            if campaign == campaign_id
        }

    def stock_initial(self, campaign_id: str) -> list[tuple[str, str, str, int]]:
        return [
            (r, c, tpl, initial)
            for (campaign, r, c, tpl), (initial, _) in sorted(self._u.read().stocks.items())
            if campaign == campaign_id
        ]


def _campaign_row(found: _Campaign) -> CampaignRow:
    # A mapping of the caller's own, as the SQL store builds one per read.
    return replace(found.row, rounds=dict(found.row.rounds))


class MemoryPeople(_Repository):
    """Persons, accounts, operators, apps, merchants, blacklist."""

    def add_operator(self, *, operator_id: str, role: str, token_hash: str, now: datetime) -> None:
        t = self._u.write()
        if operator_id in t.operators:
            raise self._u.refused(DuplicateKey("operators.id"))
        if token_hash in t.operator_by_token:
            raise self._u.refused(DuplicateKey("operators.token_hash"))
        if role not in OPERATOR_ROLES:
            raise self._u.refused(ConstraintViolated("operators: role"))
        t.operators.put(operator_id, _Operator(role, token_hash, _utc(now)))
        t.operator_by_token.put(token_hash, operator_id)

    def operator_by_token_hash(self, token_hash: str) -> tuple[str, str] | None:
        t = self._u.read()
        operator_id = t.operator_by_token.get(token_hash)
        if operator_id is None:
            return None
        operator = t.operators.get(operator_id)
        assert operator is not None
        return operator_id, operator.role

    def operator_role(self, operator_id: str) -> str | None:
        operator = self._u.read().operators.get(operator_id)
        return None if operator is None else operator.role

    def add_app(
        self, *, app_id: str, kind: str, name: str, key_id: str, secret_enc: bytes, now: datetime
    ) -> None:
        t = self._u.write()
        if app_id in t.apps:
            raise self._u.refused(DuplicateKey("apps.id"))
        if kind not in APP_KINDS:
            raise self._u.refused(ConstraintViolated("apps: kind"))
        t.apps.put(app_id, AppRow(app_id, kind, name, key_id, bytes(secret_enc), active=True))

    def get_app(self, app_id: str) -> AppRow | None:
        return self._u.read().apps.get(app_id)

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
        t = self._u.write()
        if any(c not in t.campaigns for c in campaign_ids):
            raise self._u.refused(ConstraintViolated("merchant_campaigns: campaign_id"))
        before = t.merchants.get(merchant_id)
        t.merchants.put(
            merchant_id,
            _Merchant(
                name=name,
                mcc=mcc,
                region_code=region_code,
                modes=",".join(sorted(modes)),
                acquirer_id=acquirer_id,
                created_at=_utc(now) if before is None else before.created_at,
                enrolled=frozenset(campaign_ids),
                suspension=None if before is None else before.suspension,
            ),
        )

    def get_merchant(self, merchant_id: str) -> MerchantRow | None:
        found = self._u.read().merchants.get(merchant_id)
        if found is None:
            return None
        return MerchantRow(
            id=merchant_id,
            name=found.name,
            mcc=found.mcc,
            region_code=found.region_code,
            modes=frozenset(found.modes.split(",")),
            acquirer_id=found.acquirer_id,
            enrolled_campaigns=found.enrolled,
            suspension=found.suspension,
        )

    def suspend_merchant(
        self, merchant_id: str, *, reason: str, suspended_by: str, now: datetime
    ) -> bool:
        t = self._u.write()
        found = t.merchants.get(merchant_id)
        if found is None or found.suspension is not None:
            return False
        suspension = MerchantSuspension(reason, suspended_by, _utc(now))
        t.merchants.put(merchant_id, replace(found, suspension=suspension))
        return True

    def reinstate_merchant(self, merchant_id: str) -> bool:
        t = self._u.write()
        found = t.merchants.get(merchant_id)
        if found is None or found.suspension is None:
            return False
        t.merchants.put(merchant_id, replace(found, suspension=None))
        return True

    def get_person(self, person_id: str) -> PersonRow | None:
        found = self._u.read().persons.get(person_id)
        return found.row if found else None

    def set_pseudonym(self, person_id: str, pseudonym: str) -> None:
        t = self._u.write()
        found = t.persons.get(person_id)
        if found is not None:
            t.persons.put(person_id, replace(found, row=replace(found.row, pseudonym=pseudonym)))

    def person_by_id_number_bidx(self, bidx: str) -> PersonRow | None:
        t = self._u.read()
        person_id = t.person_by_bidx.get(bidx)
        if person_id is None:
            return None
        found = t.persons.get(person_id)
        assert found is not None
        return found.row

    def insert_person(self, values: Mapping[str, Any]) -> None:
        t = self._u.write()
        v = self._columns("persons", values, _PERSON_COLUMNS, {})
        if v["id"] in t.persons:
            raise self._u.refused(DuplicateKey("persons.id"))
        if v["id_number_bidx"] in t.person_by_bidx:
            raise self._u.refused(DuplicateKey("persons.id_number_bidx"))
        t.persons.put(v["id"], _person(v))
        t.person_by_bidx.put(v["id_number_bidx"], v["id"])

    def account_person(self, channel_id: str, channel_user_id: str) -> str | None:
        found = self._u.read().accounts.get((channel_id, channel_user_id))
        return None if found is None else found.person_id

    def person_account_in_channel(self, channel_id: str, person_id: str) -> str | None:
        return self._u.read().account_of_person.get((channel_id, person_id))

    def insert_account(
        self,
        *,
        channel_id: str,
        channel_user_id: str,
        person_id: str,
        identity: Mapping[str, Any],
        now: datetime,
    ) -> None:
        t = self._u.write()
        kept = self._columns("person_accounts", identity, _ACCOUNT_IDENTITY_COLUMNS, {})
        if (channel_id, channel_user_id) in t.accounts:
            raise self._u.refused(DuplicateKey("person_accounts.(channel_id, channel_user_id)"))
        if (channel_id, person_id) in t.account_of_person:
            raise self._u.refused(DuplicateKey("person_accounts.(channel_id, person_id)"))
        if person_id not in t.persons:
            raise self._u.refused(ConstraintViolated("person_accounts: person_id"))
        t.accounts.put((channel_id, channel_user_id), _Account(person_id, kept, _utc(now)))
        t.account_of_person.put((channel_id, person_id), channel_user_id)

    def update_account_identity(
        self, channel_id: str, channel_user_id: str, identity: Mapping[str, Any]
    ) -> None:
        t = self._u.write()
        found = t.accounts.get((channel_id, channel_user_id))
        if found is None:
            return
        kept = self._columns(
            "person_accounts", {**found.identity, **identity}, _ACCOUNT_IDENTITY_COLUMNS, {}
        )
        t.accounts.put((channel_id, channel_user_id), replace(found, identity=kept))

    def any_operator(self) -> bool:
        return len(self._u.read().operators) > 0

    def blacklisted(self, bidxs: Sequence[str]) -> set[str]:
        t = self._u.read()
        return {bidx for bidx in bidxs if bidx in t.blacklist}

    def add_blacklist(self, *, bidx: str, reason: str, created_by: str, now: datetime) -> bool:
        t = self._u.write()
        if bidx in t.blacklist:
            return False
        t.blacklist.put(bidx, (reason, created_by, _utc(now)))
        return True

    def remove_blacklist(self, bidx: str) -> bool:
        t = self._u.write()
        if bidx not in t.blacklist:
            return False
        t.blacklist.delete(bidx)
        return True

    def claimants(
        self, channel_id: str, channel_user_ids: Sequence[str]
    ) -> dict[str, tuple[str, str, bool]]:
        """channel_user_id -> (person_id, residence_region, blacklisted)."""
        t = self._u.read()
        found: dict[str, tuple[str, str, bool]] = {}
        for user in channel_user_ids:
            account = t.accounts.get((channel_id, user))
            if account is None:
                continue
            person = t.persons.get(account.person_id)
            assert person is not None
            found[user] = (
                account.person_id,
                account.identity["residence_region"],
                person.row.id_number_bidx in t.blacklist,
            )
        return found


def _person(v: Mapping[str, Any]) -> _Person:
    return _Person(
        row=PersonRow(
            id=v["id"],
            id_number_bidx=v["id_number_bidx"],
            id_number_enc=bytes(v["id_number_enc"]),
            key_id=v["key_id"],
        ),
        consent_version=v["consent_version"],
        consent_at=v["consent_at"],
        created_at=v["created_at"],
    )


class MemoryVouchers(_Repository):
    """Vouchers and the redemptions made with them."""

    def claimed_slots(
        self, campaign_id: str, round_id: str, channel_id: str, person_ids: Sequence[str]
    ) -> set[tuple[str, int]]:
        t = self._u.read()
        slots: set[tuple[str, int]] = set()
        for person_id in set(person_ids):
            for voucher_id in t.vouchers_of_person.get(person_id) or ():
                found = t.vouchers.get(voucher_id)
                assert found is not None
                v = found.row
                if (v.campaign_id, v.round_id, v.channel_id) == (campaign_id, round_id, channel_id):
                    slots.add((person_id, v.claim_seq))
        return slots

    def insert_claims(
        self,
        vouchers: Sequence[VoucherRow],
        keys: Sequence[tuple[str, str, str]],
        now: datetime,
    ) -> None:
        """Voucher rows, each with the claim that issued it: (app_id, key, request_hash)."""
        assert len(vouchers) == len(keys)
        t = self._u.write()
        ids: set[str] = set()
        slots: set[tuple[str, str, str, str, int]] = set()
        claim_keys: set[tuple[str, str]] = set()
        for v, (app_id, key, _) in zip(vouchers, keys, strict=True):
            slot = (v.campaign_id, v.round_id, v.channel_id, v.person_id, v.claim_seq)
            if v.id in t.vouchers or v.id in ids:
                raise self._u.refused(DuplicateKey("vouchers.id"))
            if slot in t.claim_slots or slot in slots:
                raise self._u.refused(DuplicateKey("uq_vouchers_claim_slot"))
            if (key, app_id) in t.claim_keys or (key, app_id) in claim_keys:
                raise self._u.refused(DuplicateKey("uq_vouchers_claim_key"))
            if v.face_fen <= 0:
                raise self._u.refused(ConstraintViolated("vouchers: face_positive"))
            ids.add(v.id)
            slots.add(slot)
            claim_keys.add((key, app_id))
        stamp = _utc(now)
        for v, claim in zip(vouchers, keys, strict=True):
            row = replace(
                v,
                valid_from=_utc(v.valid_from),
                valid_until=_utc(v.valid_until),
                issued_at=_utc(v.issued_at),
            )
            t.vouchers.put(v.id, _Voucher(row, updated_at=stamp, claim=claim))
            t.claim_slots.put(
                (v.campaign_id, v.round_id, v.channel_id, v.person_id, v.claim_seq), v.id
            )
            t.claim_keys.put((claim[1], claim[0]), v.id)
            held = t.vouchers_of_person.get(v.person_id) or frozenset()
            t.vouchers_of_person.put(v.person_id, held | {v.id})

    def get_voucher(self, voucher_id: str) -> VoucherRow | None:
        found = self._u.read().vouchers.get(voucher_id)
        return None if found is None else found.row

    def lock_voucher(self, voucher_id: str) -> VoucherRow | None:
        """The voucher; the lock is the store's one writer lock."""
        return self.get_voucher(voucher_id)

    def get_vouchers(self, voucher_ids: Sequence[str]) -> dict[str, VoucherRow]:
        t = self._u.read()
        found = {i: t.vouchers.get(i) for i in sorted(set(voucher_ids))}
        return {i: v.row for i, v in found.items() if v is not None}

    def redemption_reads(
        self,
        keys: Sequence[tuple[str, str]],
        voucher_ids: Sequence[str],
        accounts: Sequence[tuple[str, str]],
    ) -> RedemptionReads:
        """The stored answers of the batch's keys, its vouchers (held by the writer lock
        this begins with) and the people of its accounts."""
        t = self._u.read()
        reads = RedemptionReads({}, self.get_vouchers(voucher_ids), {})
        for app_id, key in keys:
            answer = t.answers.get((key, app_id))
            if answer is not None:
                reads.answers[(app_id, key)] = (
                    answer.request_hash,
                    answer.status_code,
                    answer.response_json,
                )
        for account in accounts:
            found = t.accounts.get(account)
            if found is not None:
                reads.persons[account] = found.person_id
        return reads

    def move_vouchers(
        self, moves: Sequence[tuple[VoucherRow, VoucherState, str | None]], *, now: datetime
    ) -> None:
        """``move_voucher`` for many; each must still be as it was read."""
        t = self._u.write(pipelined=True)
        stale = [voucher.id for voucher, _, _ in moves if not self._unchanged(t, voucher)]
        assert not stale, f"a locked voucher changed under its lock: {stale}"
        for voucher, state, redemption_id in moves:
            self._move(t, voucher, state, redemption_id, now)

    def insert_redemptions(self, rows: Sequence[Mapping[str, Any]]) -> None:
        t = self._u.write(pipelined=True)
        redemptions = [self._redemption(t, values) for values in rows]
        ids = [r.row.id for r in redemptions]
        if len(set(ids)) != len(ids):
            raise self._u.refused(DuplicateKey("redemptions.id"))
        for redemption in redemptions:
            t.redemptions.put(redemption.row.id, redemption)

    def move_voucher(
        self,
        voucher: VoucherRow,
        *,
        state: VoucherState,
        now: datetime,
        redemption_id: str | None = None,
    ) -> bool:
        """Change state only if nobody changed the voucher since it was read."""
        t = self._u.write()
        if not self._unchanged(t, voucher):
            return False
        self._move(t, voucher, state, redemption_id, now)
        return True

    @staticmethod
    def _unchanged(t: _Tables, voucher: VoucherRow) -> bool:
        found = t.vouchers.get(voucher.id)
        return (
            found is not None
            and found.row.version == voucher.version
            and found.row.state is voucher.state
        )

    @staticmethod
    def _move(
        t: _Tables,
        voucher: VoucherRow,
        state: VoucherState,
        redemption_id: str | None,
        now: datetime,
    ) -> None:
        found = t.vouchers.get(voucher.id)
        assert found is not None
        row = replace(
            found.row, state=state, version=found.row.version + 1, redemption_id=redemption_id
        )
        t.vouchers.put(voucher.id, replace(found, row=row, updated_at=_utc(now)))

    def person_vouchers(
        self,
        person_id: str,
        *,
        channel_id: str | None,
        after_id: str | None,
        limit: int,
        states: Sequence[str] | None = None,
    ) -> list[VoucherRow]:
        assert limit >= 0
        t = self._u.read()
        rows: list[VoucherRow] = []
        for voucher_id in sorted(t.vouchers_of_person.get(person_id) or ()):
            if len(rows) == limit:
                break
            found = t.vouchers.get(voucher_id)
            assert found is not None
            v = found.row
            if channel_id is not None and v.channel_id != channel_id:
                continue
            if after_id is not None and v.id <= after_id:
                continue
            if states is not None and v.state.value not in states:
                continue
            rows.append(v)
        return rows

    def vouchers_past_validity(self, now: datetime, limit: int) -> list[VoucherRow]:
        assert limit >= 0
        due = [
            found.row
            for found in self._u.read().vouchers.values()
            if found.row.state is VoucherState.ISSUED and found.row.valid_until <= now
        ]
        due.sort(key=lambda v: (v.valid_until, v.id))
        return due[:limit]

    def _redemption(self, t: _Tables, values: Mapping[str, Any]) -> _Redemption:
        """A redemption row checked as its table would check it; not yet stored."""
        v = self._columns("redemptions", values, _REDEMPTION_REQUIRED, _REDEMPTION_OPTIONAL)
        if v["id"] in t.redemptions:
            raise self._u.refused(DuplicateKey("redemptions.id"))
        if v["voucher_id"] not in t.vouchers:
            raise self._u.refused(ConstraintViolated("redemptions: voucher_id"))
        order, discount, pay = v["order_amount_fen"], v["discount_fen"], v["pay_fen"]
        if not (0 < discount <= order and pay == order - discount):
            raise self._u.refused(ConstraintViolated("redemptions: amounts"))
        if v["status"] not in REDEMPTION_STATUSES:
            raise self._u.refused(ConstraintViolated("redemptions: status"))
        row = RedemptionRow(
            id=v["id"],
            voucher_id=v["voucher_id"],
            campaign_id=v["campaign_id"],
            acquirer_id=v["acquirer_id"],
            merchant_id=v["merchant_id"],
            order_id=v["order_id"],
            mode=v["mode"],
            order_amount_fen=order,
            discount_fen=discount,
            pay_fen=pay,
            status=redemption_status(v["status"]),
            lock_expires_at=v["lock_expires_at"],
            created_at=v["created_at"],
            updated_at=v["updated_at"],
            version=v["version"],
        )
        return _Redemption(row, product_json=v["product_json"])

    def insert_redemption(self, values: Mapping[str, Any]) -> None:
        t = self._u.write()
        redemption = self._redemption(t, values)
        t.redemptions.put(redemption.row.id, redemption)

    def get_redemption(self, redemption_id: str) -> RedemptionRow | None:
        found = self._u.read().redemptions.get(redemption_id)
        return None if found is None else found.row

    def move_redemption(self, redemption: RedemptionRow, *, status: str, now: datetime) -> bool:
        t = self._u.write()
        found = t.redemptions.get(redemption.id)
        if (
            found is None
            or found.row.version != redemption.version
            or found.row.status != redemption.status
        ):
            return False
        if status not in REDEMPTION_STATUSES:
            raise self._u.refused(ConstraintViolated("redemptions: status"))
        row = replace(
            found.row,
            status=redemption_status(status),
            updated_at=_utc(now),
            version=found.row.version + 1,
        )
        t.redemptions.put(redemption.id, replace(found, row=row))
        return True

    def locks_past_timeout(self, now: datetime, limit: int) -> list[RedemptionRow]:
        assert limit >= 0
        due = [
            found.row
            for found in self._u.read().redemptions.values()
            if found.row.status == "locked"
            and found.row.lock_expires_at is not None
            and found.row.lock_expires_at <= now
        ]
        due.sort(key=lambda r: (r.lock_expires_at, r.id))
        return due[:limit]

    def _of_campaign(self, campaign_id: str) -> Iterator[VoucherRow]:
        for found in self._u.read().vouchers.values():
            if found.row.campaign_id == campaign_id:
                yield found.row

    def issued_counts(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for v in self._of_campaign(campaign_id):
            counts[(v.round_id, v.channel_id, v.template_id)] += 1
        return dict(counts)

    def claim_counts(self, campaign_id: str) -> Iterator[tuple[str, str, str, int]]:
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for v in self._of_campaign(campaign_id):
            counts[(v.round_id, v.channel_id, v.person_id)] += 1
        for (round_id, channel_id, person_id), n in sorted(counts.items()):
            yield round_id, channel_id, person_id, n

    def voucher_state_counts(self, campaign_id: str) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for v in self._of_campaign(campaign_id):
            n, face = counts.get(v.state.value, (0, 0))
            counts[v.state.value] = (n + 1, face + v.face_fen)
        return counts


class MemoryLedger(_Repository):
    """Postings with the budget counter they move, outbox, audit."""

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
        """Post ``entry`` and move the campaign's budget counter by what it commits;
        False, with nothing written, when the budget cannot take it."""
        t = self._u.write()
        self._check_postings(entry)
        change = committed_change_fen(entry)
        if change:
            found = t.campaigns.get(campaign_id)
            if change > 0 and (
                found is None or found.row.committed_fen + change > found.row.budget_fen
            ):
                return False
            assert found is not None, "released budget of no campaign"
            assert found.row.committed_fen + change >= 0, "released more budget than was committed"
            self._move_counter(t, found, change)
        self._post(
            t,
            entry,
            campaign_id=campaign_id,
            now=now,
            voucher_count=voucher_count,
            voucher_id=voucher_id,
            redemption_id=redemption_id,
        )
        return True

    def record_many(
        self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``record`` for many entries that only give budget back (redemptions)."""
        t = self._u.write(pipelined=True)
        returned: dict[str, int] = defaultdict(int)
        for entry, where in posts:
            self._check_postings(entry)
            change = committed_change_fen(entry)
            assert change <= 0, "record_many only gives budget back"
            returned[where["campaign_id"]] -= change
        for campaign_id, amount in returned.items():
            found = t.campaigns.get(campaign_id)
            if amount:
                assert found is not None, "released budget of no campaign"
                assert found.row.committed_fen >= amount, "released more budget than committed"
        for entry, where in posts:
            self._post(
                t,
                entry,
                campaign_id=where["campaign_id"],
                now=now,
                voucher_count=1,
                voucher_id=where.get("voucher_id"),
                redemption_id=where.get("redemption_id"),
            )
        for campaign_id in sorted(returned):
            found = t.campaigns.get(campaign_id)
            if returned[campaign_id]:
                assert found is not None
                self._move_counter(t, found, -returned[campaign_id])

    def _check_postings(self, entry: Entry) -> None:
        accounts = [p.account for p in entry.postings]
        if len(set(accounts)) != len(accounts):
            raise self._u.refused(DuplicateKey("ledger_postings.(entry_id, account)"))

    @staticmethod
    def _move_counter(t: _Tables, found: _Campaign, change: int) -> None:
        row = replace(found.row, committed_fen=found.row.committed_fen + change)
        t.campaigns.put(row.id, replace(found, row=row))

    @staticmethod
    def _post(
        t: _Tables,
        entry: Entry,
        *,
        campaign_id: str,
        now: datetime,
        voucher_count: int,
        voucher_id: str | None,
        redemption_id: str | None,
    ) -> None:
        t.ledger.put(
            len(t.ledger) + 1,
            _LedgerEntry(
                campaign_id=campaign_id,
                kind=entry.kind.value,
                voucher_count=voucher_count,
                voucher_id=voucher_id,
                redemption_id=redemption_id,
                created_at=_utc(now),
                # Plain text, as the SQL store reads accounts back (not the Account enum).
                postings=tuple((str(p.account), p.amount_fen) for p in entry.postings),
            ),
        )

    def balances(self, campaign_id: str) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for entry in self._u.read().ledger.values():
            if entry.campaign_id == campaign_id:
                for account, amount_fen in entry.postings:
                    totals[account] += amount_fen
        return dict(totals)

    def add_outbox(
        self, *, event_id: str, topic: str, payload: Mapping[str, Any], now: datetime
    ) -> None:
        self._add_events([(event_id, topic, payload)], now, self._u.write())

    def add_outbox_many(
        self, events: Sequence[tuple[str, str, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        self._add_events(events, now, self._u.write(pipelined=True))

    def _add_events(
        self, events: Sequence[tuple[str, str, Mapping[str, Any]]], now: datetime, t: _Tables
    ) -> None:
        ids = [event_id for event_id, _, _ in events]
        if len(set(ids)) != len(ids) or any(event_id in t.outbox for event_id in ids):
            raise self._u.refused(DuplicateKey("outbox.id"))
        vouchers = [payload.get("voucher_id") for _, _, payload in events]
        named = [v for v in vouchers if v is not None]
        assert len(set(named)) == len(named), "one event per voucher per call"
        for (event_id, topic, payload), voucher_id in zip(events, vouchers, strict=True):
            payload_json = json.dumps(payload, sort_keys=True, separators=(",", ":"))
            seq = None
            if voucher_id is not None:
                seq = (t.outbox_seqs.get(voucher_id) or 0) + 1
                t.outbox_seqs.put(voucher_id, seq)
            t.outbox.put(event_id, _OutboxEvent(topic, payload_json, _utc(now), voucher_id, seq))

    def outbox_topics(self) -> dict[str, int]:
        topics: dict[str, int] = defaultdict(int)
        for event in self._u.read().outbox.values():
            topics[event.topic] += 1
        return dict(topics)

    def append_audit(
        self, *, actor: str, action: str, target: str, details: Mapping[str, Any], now: datetime
    ) -> None:
        """Append to the hash-chained audit log (writers queue, so ``seq`` never collides)."""
        t = self._u.write()
        last = t.audit.get(len(t.audit))
        line = audit_line(
            seq=last.seq + 1 if last else 1,
            at=now,
            actor=actor,
            action=action,
            target=target,
            details=details,
            prev_hash=last.hash if last else GENESIS_HASH,
        )
        t.audit.put(line.seq, replace(line, at=_utc(line.at)))


def _outbox_row(event_id: str, e: _OutboxEvent) -> OutboxRow:
    return OutboxRow(
        id=event_id,
        topic=e.topic,
        payload_json=e.payload_json,
        created_at=e.created_at,
        status=e.status,
        attempts=e.attempts,
        voucher_id=e.voucher_id,
        seq=e.seq,
        last_error=e.last_error,
    )


class MemoryOutbox(_Repository):
    """The relay's side of the outbox (one writer at a time: no lease is contended)."""

    def lease_due(self, *, now: datetime, lease_until: datetime, limit: int) -> list[OutboxRow]:
        t = self._u.write()
        now = _utc(now)
        due = sorted(
            (
                (e.next_attempt_at or e.created_at, event_id)
                for event_id, e in t.outbox.items()
                if e.status == "pending" and (e.next_attempt_at or e.created_at) <= now
            )
        )[:limit]
        leased = []
        for _, event_id in due:
            e = t.outbox.get(event_id)
            assert e is not None
            e = replace(e, attempts=e.attempts + 1, next_attempt_at=_utc(lease_until))
            t.outbox.put(event_id, e)
            leased.append(_outbox_row(event_id, e))
        return sorted(leased, key=lambda r: (r.created_at, r.id))

    def _update(self, event_id: str, **changes: Any) -> None:
        t = self._u.write()
        e = t.outbox.get(event_id)
        if e is not None:
            t.outbox.put(event_id, replace(e, **changes))

    def mark_delivered(self, event_ids: Sequence[str], *, now: datetime) -> None:
        for event_id in event_ids:
            self._update(event_id, status="delivered", delivered_at=_utc(now), last_error=None)

    def wake(self, *, now: datetime, limit: int) -> int:
        t = self._u.write()
        now = _utc(now)
        waiting = sorted(
            (
                (e.next_attempt_at or e.created_at, event_id)
                for event_id, e in t.outbox.items()
                if e.status == "pending"
                and e.last_error is not None
                and (e.next_attempt_at or e.created_at) > now
            )
        )[:limit]
        for _, event_id in waiting:
            self._update(event_id, next_attempt_at=now)
        return len(waiting)

    def retry_later(self, retries: Sequence[tuple[str, datetime]], *, error: str) -> None:
        t = self._u.write()
        for event_id, at in retries:
            e = t.outbox.get(event_id)
            if e is not None and e.status == "pending":
                t.outbox.put(event_id, replace(e, next_attempt_at=_utc(at), last_error=error[:200]))

    def mark_dead(self, dead: Sequence[tuple[str, str]], *, now: datetime) -> None:
        for event_id, reason in dead:
            self._update(
                event_id, status="dead", last_error=reason[:200], next_attempt_at=_utc(now)
            )

    def dead_letters(self, *, after_id: str | None, limit: int) -> list[OutboxRow]:
        t = self._u.read()
        found = sorted(
            (event_id, e)
            for event_id, e in t.outbox.items()
            if e.status == "dead" and (after_id is None or event_id > after_id)
        )[:limit]
        return [_outbox_row(event_id, e) for event_id, e in found]

    def replay(self, event_ids: Sequence[str] | None, *, now: datetime, limit: int) -> int:
        t = self._u.write()
        wanted = None if event_ids is None else set(event_ids)
        chosen = sorted(
            event_id
            for event_id, e in t.outbox.items()
            if e.status == "dead" and (wanted is None or event_id in wanted)
        )[:limit]
        for event_id in chosen:
            self._update(event_id, status="pending", attempts=0, next_attempt_at=_utc(now))
        return len(chosen)

    def backlog(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for e in self._u.read().outbox.values():
            counts[e.status] += 1
        return dict(counts)

    def pending_of_voucher(self, voucher_id: str, limit: int) -> list[OutboxRow]:
        found = sorted(
            (
                (e.seq or 0, event_id, e)
                for event_id, e in self._u.read().outbox.items()
                if e.voucher_id == voucher_id and e.status == "pending"
            ),
        )[:limit]
        return [_outbox_row(event_id, e) for _, event_id, e in found]

    def events_between(
        self, start: datetime, end: datetime, *, after_id: str | None, limit: int
    ) -> list[OutboxRow]:
        start, end = _utc(start), _utc(end)
        found = sorted(
            (event_id, e)
            for event_id, e in self._u.read().outbox.items()
            if start <= e.created_at < end and (after_id is None or event_id > after_id)
        )[:limit]
        return [_outbox_row(event_id, e) for event_id, e in found]


_LIVE_LOCKS = frozenset({"held", "issued"})
_LOCK_STATES = frozenset({"held", "issued", "released", "refused"})


class MemoryQualifications(_Repository):
    """Trade-in qualification locks."""

    def add_lock(self, row: QualificationLockRow) -> None:
        t = self._u.write()
        if row.id in t.qualification_locks:
            raise self._u.refused(DuplicateKey("qualification_locks.id"))
        if row.state not in _LOCK_STATES:
            raise self._u.refused(ConstraintViolated("ck_qualification_locks_state"))
        if row.voucher_id is not None and self._voucher_taken(t, row.voucher_id):
            raise self._u.refused(DuplicateKey("qualification_locks.voucher_id"))
        t.qualification_locks.put(
            row.id, replace(row, created_at=_utc(row.created_at), updated_at=_utc(row.updated_at))
        )

    @staticmethod
    def _voucher_taken(t: _Tables, voucher_id: str) -> bool:
        return any(q.voucher_id == voucher_id for q in t.qualification_locks.values())

    def get_lock(self, lock_id: str) -> QualificationLockRow | None:
        return self._u.read().qualification_locks.get(lock_id)

    def move_lock(
        self,
        lock_id: str,
        *,
        from_states: Sequence[str],
        to: str,
        now: datetime,
        voucher_id: str | None = None,
    ) -> bool:
        t = self._u.write()
        found = t.qualification_locks.get(lock_id)
        if found is None or found.state not in from_states:
            return False
        if to not in _LOCK_STATES:
            raise self._u.refused(ConstraintViolated("ck_qualification_locks_state"))
        if (
            voucher_id is not None
            and voucher_id != found.voucher_id
            and self._voucher_taken(t, voucher_id)
        ):
            raise self._u.refused(DuplicateKey("qualification_locks.voucher_id"))
        t.qualification_locks.put(
            lock_id,
            replace(
                found,
                state=to,
                updated_at=_utc(now),
                voucher_id=found.voucher_id if voucher_id is None else voucher_id,
            ),
        )
        return True

    def live_locks(self, person_id: str, category: str) -> int:
        return sum(
            1
            for q in self._u.read().qualification_locks.values()
            if q.person_id == person_id and q.category == category and q.state in _LIVE_LOCKS
        )

    def locks_held_since(self, before: datetime, limit: int) -> list[QualificationLockRow]:
        before = _utc(before)
        held = sorted(
            (q for q in self._u.read().qualification_locks.values() if q.state == "held"),
            key=lambda q: (q.created_at, q.id),
        )
        return [q for q in held if q.created_at < before][:limit]

    def lock_of_voucher(self, voucher_id: str) -> QualificationLockRow | None:
        for q in self._u.read().qualification_locks.values():
            if q.voucher_id == voucher_id:
                return q
        return None

    def locks_between(
        self, start: datetime, end: datetime, *, after_id: str | None, limit: int
    ) -> list[QualificationLockRow]:
        start, end = _utc(start), _utc(end)
        found = sorted(
            (
                q
                for q in self._u.read().qualification_locks.values()
                if start <= q.created_at < end and (after_id is None or q.id > after_id)
            ),
            key=lambda q: q.id,
        )
        return found[:limit]


class MemoryKeyChecks(_Repository):
    """The key canaries, and samples of what the store holds encrypted."""

    def canaries(self) -> dict[str, bytes]:
        return dict(self._u.read().key_canaries.items())

    def add_canaries(self, canaries: Mapping[str, bytes], *, now: datetime) -> None:
        t = self._u.write()
        for name in sorted(canaries):
            if name in t.key_canaries:
                raise self._u.refused(DuplicateKey(f"key_canaries.name {name}"))
        for name, value in canaries.items():
            t.key_canaries.put(name, bytes(value))

    def sealed_samples(self, limit: int) -> list[SealedSample]:
        t = self._u.read()
        apps = sorted(t.apps.values(), key=lambda a: a.id)[: limit // 2]
        samples = [SealedSample("app_secret", a.secret_key_id, a.secret_enc) for a in apps]
        people = sorted(t.persons.values(), key=lambda p: (p.created_at, p.row.id))
        samples += [
            SealedSample("id_number", p.row.key_id, p.row.id_number_enc, p.row.id_number_bidx)
            for p in people[: max(0, limit - len(samples))]
        ]
        return samples


class MemoryIdempotency(_Repository):
    """Stored answers by (app_id, key)."""

    def answered_keys(
        self, app_id: str, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str | None, str | None]]:
        """key -> (request_hash, status_code, response_json, voucher_id): a claim's key
        is on its voucher (response_json None), any other's answer is stored."""
        t = self._u.read()
        found: dict[str, tuple[str, int, str | None, str | None]] = {}
        for key in keys:
            answer = t.answers.get((key, app_id))
            if answer is not None:
                found[key] = (answer.request_hash, answer.status_code, answer.response_json, None)
        for key in keys:
            voucher_id = t.claim_keys.get((key, app_id))
            if voucher_id is not None:
                voucher = t.vouchers.get(voucher_id)
                assert voucher is not None
                assert voucher.claim is not None
                found[key] = (voucher.claim[2], 201, None, voucher_id)
        return found

    def idempotent_answer(self, app_id: str, key: str) -> tuple[str, int, str] | None:
        answer = self._u.read().answers.get((key, app_id))
        if answer is None:
            return None
        return answer.request_hash, answer.status_code, answer.response_json

    def store_answers(self, rows: Sequence[Mapping[str, Any]]) -> None:
        t = self._u.write(pipelined=True)
        checked = [self._columns("idempotency_keys", r, _ANSWER_COLUMNS, {}) for r in rows]
        keys = [(r["key"], r["app_id"]) for r in checked]
        if len(set(keys)) != len(keys) or any(k in t.answers for k in keys):
            raise self._u.refused(DuplicateKey("idempotency_keys.(key, app_id)"))
        for key, r in zip(keys, checked, strict=True):
            t.answers.put(
                key,
                _Answer(r["request_hash"], r["status_code"], r["response_json"], r["created_at"]),
            )


_PRODUCT_REQUIRED = (
    "redemption_id",
    "voucher_id",
    "campaign_id",
    "category",
    "price_fen",
    "invoice_number",
    "subsidy_fen",
    "created_at",
)
_PRODUCT_OPTIONAL: Mapping[str, Any] = dict.fromkeys(
    ("brand", "model", "sku", "energy_grade", "serial_number", "imei", "old_appliance_handed_in")
)
_HELD_FIELDS = ("serial_number", "imei", "invoice_number")


class MemoryProducts(_Repository):
    """Subsidised trade-in products; an identifier held by one unreleased row at most."""

    def add_products(self, rows: Sequence[Mapping[str, Any]]) -> None:
        t = self._u.write(pipelined=True)
        checked = [
            self._columns("redemption_products", r, _PRODUCT_REQUIRED, _PRODUCT_OPTIONAL)
            for r in rows
        ]
        ids = [r["redemption_id"] for r in checked]
        if len(set(ids)) != len(ids) or any(i in t.products for i in ids):
            raise self._u.refused(DuplicateKey("redemption_products.redemption_id"))
        held = [(f, r[f]) for r in checked for f in _HELD_FIELDS if r[f] is not None]
        if len(set(held)) != len(held) or any(h in t.held_identifiers for h in held):
            raise self._u.refused(DuplicateKey("uq_redemption_products"))
        for r in checked:
            if r["serial_number"] is None and r["imei"] is None:
                raise self._u.refused(ConstraintViolated("ck_redemption_products_identified"))
            if not 0 < r["subsidy_fen"] <= r["price_fen"]:
                raise self._u.refused(ConstraintViolated("ck_redemption_products_amounts"))
            if r["energy_grade"] is not None and not 1 <= r["energy_grade"] <= 5:
                raise self._u.refused(ConstraintViolated("ck_redemption_products_energy_grade"))
        for r in checked:
            product = Product(
                **{f: r[f] for f in Product.__dataclass_fields__ if f != "category"},
                category=Category(r["category"]),
            )
            t.products.put(
                r["redemption_id"],
                ProductRow(
                    redemption_id=r["redemption_id"],
                    voucher_id=r["voucher_id"],
                    campaign_id=r["campaign_id"],
                    product=product,
                    subsidy_fen=r["subsidy_fen"],
                    created_at=r["created_at"],
                    released_at=None,
                ),
            )
            for f in _HELD_FIELDS:
                if r[f] is not None:
                    t.held_identifiers.put((f, r[f]), r["redemption_id"])

    def held(
        self,
        *,
        serial_numbers: Sequence[str],
        imeis: Sequence[str],
        invoice_numbers: Sequence[str],
    ) -> set[tuple[str, str]]:
        t = self._u.read()
        wanted = zip(_HELD_FIELDS, (serial_numbers, imeis, invoice_numbers), strict=True)
        return {(f, v) for f, values in wanted for v in values if (f, v) in t.held_identifiers}

    def get_product(self, redemption_id: str) -> ProductRow | None:
        return self._u.read().products.get(redemption_id)

    def release_product(self, redemption_id: str, *, now: datetime) -> bool:
        t = self._u.write()
        found = t.products.get(redemption_id)
        if found is None or found.released_at is not None:
            return False
        t.products.put(redemption_id, replace(found, released_at=_utc(now)))
        for f in _HELD_FIELDS:
            value = getattr(found.product, f)
            if value is not None:
                t.held_identifiers.delete((f, value))
        return True


RULES_STATUSES = frozenset({"draft", "active", "retired"})
REVIEW_KINDS = frozenset({"claim", "redemption"})
REVIEW_STATUSES = frozenset({"pending", "approved", "rejected"})
BLACKLIST_KINDS = frozenset({"device", "phone"})


class MemoryRisk(_Repository):
    """Rules versions, reviews and the risk blacklists."""

    def add_rules(self, *, version: int, text: str, drafted_by: str, now: datetime) -> None:
        t = self._u.write()
        if version in t.risk_rules:
            raise self._u.refused(DuplicateKey("risk_rules.version"))
        t.risk_rules.put(
            version, RiskRulesRow(version, text, "draft", drafted_by, _utc(now), None, None)
        )

    def get_rules(self, version: int) -> RiskRulesRow | None:
        return self._u.read().risk_rules.get(version)

    def list_rules(self, *, limit: int) -> list[RiskRulesRow]:
        t = self._u.read()
        return [row for _, row in sorted(t.risk_rules.items(), reverse=True)[:limit]]

    def active_rules(self) -> RiskRulesRow | None:
        return next((r for r in self._u.read().risk_rules.values() if r.status == "active"), None)

    def active_version(self) -> int | None:
        found = self.active_rules()
        return None if found is None else found.version

    def latest_version(self) -> int | None:
        return max(self._u.read().risk_rules.keys(), default=None)

    def activate_rules(self, version: int, *, approved_by: str, now: datetime) -> bool:
        t = self._u.write()
        found = t.risk_rules.get(version)
        if found is None or found.status != "draft":
            return False
        for row in list(t.risk_rules.values()):
            if row.status == "active":
                t.risk_rules.put(row.version, replace(row, status="retired"))
        t.risk_rules.put(
            version, replace(found, status="active", approved_by=approved_by, approved_at=_utc(now))
        )
        return True

    def add_reviews(self, rows: Sequence[ReviewRow]) -> None:
        t = self._u.write(pipelined=True)
        ids = [row.id for row in rows]
        if len(set(ids)) != len(ids) or any(i in t.reviews for i in ids):
            raise self._u.refused(DuplicateKey("reviews.id"))
        for row in rows:
            if row.kind not in REVIEW_KINDS or row.status != "pending":
                raise self._u.refused(ConstraintViolated("reviews: kind or status"))
        for row in rows:
            # As the SQL store keeps them: JSON, so what comes back is plain data.
            t.reviews.put(
                row.id,
                replace(
                    row,
                    created_at=_utc(row.created_at),
                    subject=json.loads(json.dumps(row.subject)),
                    reasons=json.loads(json.dumps(row.reasons)),
                ),
            )

    def get_review(self, review_id: str) -> ReviewRow | None:
        return self._u.read().reviews.get(review_id)

    def list_reviews(
        self, *, status: str | None, kind: str | None, after_id: str | None, limit: int
    ) -> list[ReviewRow]:
        t = self._u.read()
        found = [
            row
            for review_id, row in sorted(t.reviews.items())
            if (status is None or row.status == status)
            and (kind is None or row.kind == kind)
            and (after_id is None or review_id > after_id)
        ]
        return found[:limit]

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
        t = self._u.write()
        found = t.reviews.get(review_id)
        if found is None or found.status != expected:
            return False
        if status not in REVIEW_STATUSES or status == "pending":
            raise self._u.refused(ConstraintViolated("ck_reviews_decision_whole"))
        t.reviews.put(
            review_id,
            replace(
                found,
                status=status,
                decided_by=decided_by,
                decided_at=_utc(now),
                decision_reason=reason,
            ),
        )
        return True

    def set_review_outcome(
        self, review_id: str, *, outcome: str, detail: Mapping[str, Any] | None
    ) -> bool:
        t = self._u.write()
        found = t.reviews.get(review_id)
        if found is None or found.outcome is not None:
            return False
        kept = None if detail is None else json.loads(json.dumps(detail))
        t.reviews.put(review_id, replace(found, outcome=outcome, outcome_detail=kept))
        return True

    def blacklisted_devices(self, device_ids: Sequence[str]) -> set[str]:
        t = self._u.read()
        return {d for d in device_ids if ("device", d) in t.risk_blacklist}

    def blacklisted_phones(self, channel_id: str, channel_user_ids: Sequence[str]) -> set[str]:
        t = self._u.read()
        found: set[str] = set()
        for user in channel_user_ids:
            account = t.accounts.get((channel_id, user))
            if account is not None and ("phone", account.identity["phone_bidx"]) in (
                t.risk_blacklist
            ):
                found.add(user)
        return found

    def add_blacklisted(
        self, *, kind: str, value: str, reason: str, created_by: str, now: datetime
    ) -> bool:
        t = self._u.write()
        if kind not in BLACKLIST_KINDS:
            raise self._u.refused(ConstraintViolated("ck_risk_blacklist_kind"))
        if (kind, value) in t.risk_blacklist:
            return False
        t.risk_blacklist.put(
            (kind, value), RiskBlacklistRow(kind, value, reason, created_by, _utc(now))
        )
        return True

    def remove_blacklisted(self, *, kind: str, value: str) -> bool:
        t = self._u.write()
        if (kind, value) not in t.risk_blacklist:
            return False
        t.risk_blacklist.delete((kind, value))
        return True

    def list_blacklisted(
        self, *, kind: str, after: str | None, limit: int
    ) -> list[RiskBlacklistRow]:
        t = self._u.read()
        found = [
            row
            for (k, value), row in sorted(t.risk_blacklist.items())
            if k == kind and (after is None or value > after)
        ]
        return found[:limit]


HOLD_STATUSES = frozenset({"held", "released", "clawed_back"})


class MemoryRedemptionRisk(_Repository):
    """Remembered redemptions, held payables, SKU prices."""

    def add_facts(self, rows: Sequence[RedemptionFactRow]) -> None:
        t = self._u.write(pipelined=True)
        ids = [row.redemption_id for row in rows]
        if len(set(ids)) != len(ids) or any(i in t.risk_redemptions for i in ids):
            raise self._u.refused(DuplicateKey("risk_redemptions.redemption_id"))
        for row in rows:
            if (row.refunded_at is None) != (row.refund_after_s is None):
                raise self._u.refused(ConstraintViolated("ck_risk_redemptions_refund_whole"))
        for row in rows:
            t.risk_redemptions.put(
                row.redemption_id,
                replace(
                    row,
                    created_at=_utc(row.created_at),
                    redeemed_at=None if row.redeemed_at is None else _utc(row.redeemed_at),
                    refunded_at=None if row.refunded_at is None else _utc(row.refunded_at),
                ),
            )

    def get_fact(self, redemption_id: str) -> RedemptionFactRow | None:
        return self._u.read().risk_redemptions.get(redemption_id)

    def complete_fact(self, redemption_id: str, *, now: datetime) -> RedemptionFactRow | None:
        t = self._u.write()
        found = t.risk_redemptions.get(redemption_id)
        if found is None or found.redeemed_at is not None:
            return None
        done = replace(found, redeemed_at=_utc(now))
        t.risk_redemptions.put(redemption_id, done)
        return done

    def refund_fact(self, redemption_id: str, *, now: datetime, refund_after_s: int) -> bool:
        t = self._u.write()
        found = t.risk_redemptions.get(redemption_id)
        if found is None or found.redeemed_at is None or found.refunded_at is not None:
            return False
        t.risk_redemptions.put(
            redemption_id, replace(found, refunded_at=_utc(now), refund_after_s=refund_after_s)
        )
        return True

    def merchant_refunds(
        self, merchant_id: str, *, since: datetime, within_s: int
    ) -> tuple[int, int]:
        t = self._u.read()
        since = _utc(since)
        recent = [
            row
            for row in t.risk_redemptions.values()
            if row.merchant_id == merchant_id
            and row.redeemed_at is not None
            and row.redeemed_at >= since
        ]
        quick = sum(
            1 for row in recent if row.refund_after_s is not None and row.refund_after_s <= within_s
        )
        return len(recent), quick

    def payer_refunds(self, payer_id: str, *, since: datetime, within_s: int) -> int:
        t = self._u.read()
        since = _utc(since)
        return sum(
            1
            for row in t.risk_redemptions.values()
            if row.payer_id == payer_id
            and row.redeemed_at is not None
            and row.redeemed_at >= since
            and row.refund_after_s is not None
            and row.refund_after_s <= within_s
        )

    def recent(self, *, since: datetime, limit: int) -> list[RecentRedemption]:
        return self._recent(since, limit, lambda row: True)

    def _recent(
        self, since: datetime, limit: int, chosen: Callable[[RedemptionFactRow], bool]
    ) -> list[RecentRedemption]:
        t = self._u.read()
        since = _utc(since)
        found = sorted(
            (
                row
                for row in t.risk_redemptions.values()
                if row.redeemed_at is not None and row.redeemed_at >= since and chosen(row)
            ),
            key=lambda row: row.redeemed_at or since,
            reverse=True,
        )
        return [
            RecentRedemption(
                row.redemption_id, row.person_id, row.merchant_id, row.review_id is not None
            )
            for row in found[:limit]
        ]

    def payer_redemptions(
        self, payer_id: str, *, since: datetime, limit: int
    ) -> list[RecentRedemption]:
        return self._recent(since, limit, lambda row: row.payer_id == payer_id)

    def flag_facts(self, flags: Sequence[tuple[str, str]]) -> set[str]:
        t = self._u.write()
        flagged: set[str] = set()
        for redemption_id, review_id in sorted(flags):
            found = t.risk_redemptions.get(redemption_id)
            if found is not None and found.review_id is None:
                t.risk_redemptions.put(redemption_id, replace(found, review_id=review_id))
                flagged.add(redemption_id)
        return flagged

    def add_holds(self, rows: Sequence[PayableHoldRow]) -> None:
        t = self._u.write(pipelined=True)
        ids = [row.redemption_id for row in rows]
        if len(set(ids)) != len(ids) or any(i in t.payable_holds for i in ids):
            raise self._u.refused(DuplicateKey("payable_holds.redemption_id"))
        for row in rows:
            if row.amount_fen <= 0:
                raise self._u.refused(ConstraintViolated("ck_payable_holds_amount"))
            if row.status not in HOLD_STATUSES:
                raise self._u.refused(ConstraintViolated("ck_payable_holds_status"))
        for row in rows:
            t.payable_holds.put(
                row.redemption_id,
                replace(row, created_at=_utc(row.created_at), updated_at=_utc(row.updated_at)),
            )

    def get_hold(self, redemption_id: str) -> PayableHoldRow | None:
        return self._u.read().payable_holds.get(redemption_id)

    def move_hold(
        self,
        redemption_id: str,
        *,
        expected: str,
        status: str,
        now: datetime,
        review_id: str | None = None,
    ) -> bool:
        t = self._u.write()
        found = t.payable_holds.get(redemption_id)
        if found is None or found.status != expected:
            return False
        if status not in HOLD_STATUSES:
            raise self._u.refused(ConstraintViolated("ck_payable_holds_status"))
        t.payable_holds.put(
            redemption_id,
            replace(
                found,
                status=status,
                updated_at=_utc(now),
                review_id=found.review_id if review_id is None else review_id,
            ),
        )
        return True

    def held_fen(self, campaign_id: str) -> int:
        return sum(
            row.amount_fen
            for row in self._u.read().payable_holds.values()
            if row.campaign_id == campaign_id and row.status == "held"
        )

    def upsert_sku_prices(self, rows: Sequence[SkuPriceRow]) -> None:
        t = self._u.write()
        for row in rows:
            if row.baseline_price_fen <= 0:
                raise self._u.refused(ConstraintViolated("ck_sku_prices_price"))
        for row in rows:
            t.sku_prices.put(row.sku, replace(row, updated_at=_utc(row.updated_at)))

    def sku_prices(self, skus: Sequence[str]) -> dict[str, int]:
        t = self._u.read()
        return {
            sku: found.baseline_price_fen
            for sku in skus
            if (found := t.sku_prices.get(sku)) is not None
        }

    def list_sku_prices(self, *, after: str | None, limit: int) -> list[SkuPriceRow]:
        t = self._u.read()
        found = [row for sku, row in sorted(t.sku_prices.items()) if after is None or sku > after]
        return found[:limit]


class MemoryDraws(_Repository):
    """The rounds' fair starts; a draw is published once."""

    def add_draws(self, rows: Sequence[DrawRow]) -> None:
        t = self._u.write()
        keys = [(r.campaign_id, r.round_id) for r in rows]
        if len(set(keys)) != len(keys) or any(k in t.draws for k in keys):
            raise self._u.refused(DuplicateKey("pk_round_draws"))
        for key, row in zip(keys, rows, strict=True):
            if row.window_s <= 0:
                raise self._u.refused(ConstraintViolated("ck_round_draws_window_positive"))
            campaign = t.campaigns.get(row.campaign_id)
            if campaign is None or row.round_id not in campaign.row.rounds:
                raise self._u.refused(ConstraintViolated("fk_round_draws_campaign_id_rounds"))
            t.draws.put(key, replace(row, committed_at=_utc(row.committed_at)))

    def get_draw(self, campaign_id: str, round_id: str) -> DrawRow | None:
        return self._u.read().draws.get((campaign_id, round_id))

    def draws_of(self, campaign_id: str) -> list[DrawRow]:
        t = self._u.read()
        return sorted(
            (row for (c, _r), row in t.draws.items() if c == campaign_id),
            key=lambda row: row.round_id,
        )

    def unpublished(self, limit: int) -> list[DrawRow]:
        t = self._u.read()

        def release_at(row: DrawRow) -> datetime:
            campaign = t.campaigns.get(row.campaign_id)
            assert campaign is not None, "a draw's round is a campaign's (its foreign key)"
            return campaign.row.rounds[row.round_id][0]

        waiting = [row for row in t.draws.values() if row.published_at is None]
        waiting.sort(key=lambda row: (release_at(row), row.campaign_id, row.round_id))
        return waiting[:limit]

    def add_entries(self, campaign_id: str, round_id: str, rows: Sequence[DrawEntryRow]) -> None:
        t = self._u.write()
        if (campaign_id, round_id) not in t.draws:
            raise self._u.refused(ConstraintViolated("fk_draw_entries_campaign_id_round_draws"))
        listed = t.draw_entries.get((campaign_id, round_id)) or ()
        ranks = [e.rank for e in rows]
        if len(set(ranks)) != len(ranks) or set(ranks) & {e.rank for e in listed}:
            raise self._u.refused(DuplicateKey("pk_draw_entries"))
        merged = sorted((*listed, *rows), key=lambda e: e.rank)
        t.draw_entries.put((campaign_id, round_id), tuple(merged))

    def last_rank(self, campaign_id: str, round_id: str) -> int:
        listed = self._u.read().draw_entries.get((campaign_id, round_id)) or ()
        return listed[-1].rank if listed else 0

    def reveal(
        self, campaign_id: str, round_id: str, *, seed_hex: str, entries: int, now: datetime
    ) -> bool:
        t = self._u.write()
        found = t.draws.get((campaign_id, round_id))
        if found is None or found.published_at is not None:
            return False
        listed = t.draw_entries.get((campaign_id, round_id)) or ()
        t.draws.put(
            (campaign_id, round_id),
            replace(
                found,
                seed_hex=seed_hex,
                published_at=_utc(now),
                entries=entries,
                won=sum(1 for e in listed if e.outcome == "won"),
            ),
        )
        return True

    def entries(
        self, campaign_id: str, round_id: str, *, after_rank: int, limit: int
    ) -> list[DrawEntryRow]:
        listed = self._u.read().draw_entries.get((campaign_id, round_id)) or ()
        return [e for e in listed if e.rank > after_rank][:limit]


# -- the store ----------------------------------------------------------------------------


class MemoryStore:
    """The source of truth in this process's memory: hands out units of work over it."""

    def __init__(self, *, lock_timeout_s: float = LOCK_TIMEOUT_S_DEFAULT) -> None:
        if lock_timeout_s <= 0:
            raise ValueError(f"lock_timeout_s must be positive, got {lock_timeout_s}")
        self._lock_timeout_s = lock_timeout_s
        self._write_lock = threading.Lock()
        self._writer: int | None = None  # the thread holding the write lock
        self._committed = _Tables.empty()

    @contextmanager
    def unit_of_work(self, *, readonly: bool = False) -> Iterator[MemoryUnitOfWork]:
        """One transaction; rolled back unless ``commit()`` was called."""
        uow = MemoryUnitOfWork(self, readonly=readonly)
        try:
            yield uow
        finally:
            uow.close()
            uow.end()

    def _lock_writer(self) -> None:
        """Take the one write lock, queueing behind the writer that holds it."""
        me = threading.get_ident()
        assert self._writer != me, "a writable unit of work inside another on one thread"
        if not self._write_lock.acquire(timeout=self._lock_timeout_s):
            raise StoreUnavailable("another writer held the memory store too long")
        self._writer = me

    def _unlock_writer(self) -> None:
        self._writer = None
        self._write_lock.release()

    def _publish(self, tables: _Tables) -> None:
        """Make a writer's tables the committed version (the writer holds the lock)."""
        assert self._writer is not None, "only the writer commits"
        self._committed = tables

    def ping(self) -> None:
        """Always answers: the store is this process."""

    def schema_revisions(self) -> tuple[str | None, str | None]:
        """The tables are this code's own: always the schema it needs."""
        return SCHEMA_REVISION, SCHEMA_REVISION

    def upgrade(self) -> None:
        """Nothing to migrate."""

    def dispose(self) -> None:
        """No connection to close; what was committed stays readable."""

    def audit_log(self) -> list[AuditLine]:
        """The committed audit log in order, as an auditor reads it (the port has no read)."""
        audit = self._committed.audit
        return [entry for seq in sorted(audit.keys()) if (entry := audit.get(seq)) is not None]
