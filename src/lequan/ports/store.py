"""The store port: a unit of work with one repository per aggregate.

The store is the source of truth. A ``Store`` hands out units of work; a
unit of work is one transaction that rolls back unless ``commit()`` is
called, and its repositories all act inside it:

    uow.campaigns     campaigns, rounds, stocks (the budget counter is read here)
    uow.people        persons and accounts, operators, apps, merchants, blacklist
    uow.vouchers      vouchers and redemptions
    uow.ledger        postings with the budget counter they move, outbox, audit
    uow.outbox        the relay's side of the outbox: lease what is due, settle it
    uow.qualifications  trade-in qualification locks asked of central
    uow.products      trade-in products subsidised here: serial numbers, IMEIs, invoices
    uow.idempotency   answers stored per (app, Idempotency-Key)
    uow.keys          the key canaries: which key ring the data is written under
    uow.risk          risk rules versions, the review queue, device and phone blacklists
    uow.redemption_risk  redemptions as the redemption-time rules remember them, held
                      payables, SKU baseline prices
    uow.draws         the rounds' fair starts: sealed seeds, commitments, published draws

Every atomic step is the store's: a conditional update (``take_stock``,
``ledger.record``, ``move_voucher``) answers False rather than letting a
caller read, decide and write. Row locks are taken only through ``lock_*``
and ``redemption_reads``, always in primary-key order. Failures are the
port's own errors (``lequan.ports.errors``), never the engine's.

Implementations: ``lequan.adapters.sql`` (SQLite, PostgreSQL) and
``lequan.adapters.memory_store`` (in-process); one contract suite runs
against all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from lequan.domain.campaigns import CampaignConfig, CampaignStatus
from lequan.domain.ledger import Entry
from lequan.domain.redemption_states import RedemptionStatus
from lequan.domain.vouchers import VoucherState
from lequan.rows import (
    AppRow,
    CampaignRow,
    DrawEntryRow,
    DrawRow,
    MerchantRow,
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

__all__ = [
    "CampaignRepository",
    "DrawRepository",
    "IdempotencyRepository",
    "KeyCheckRepository",
    "LedgerRepository",
    "OutboxRepository",
    "PeopleRepository",
    "ProductRepository",
    "QualificationRepository",
    "RedemptionRiskRepository",
    "RiskRepository",
    "Store",
    "UnitOfWork",
    "VoucherRepository",
]


class CampaignRepository(Protocol):
    """The campaign aggregate: campaigns, rounds, stocks and the budget counter's reads."""

    def insert_campaign(
        self, config: CampaignConfig, *, drafted_by: str, now: datetime
    ) -> None: ...

    def campaign_exists(self, campaign_id: str) -> bool: ...

    def get_campaign(self, campaign_id: str) -> CampaignRow | None: ...

    def list_campaigns(
        self, *, statuses: Iterable[CampaignStatus] | None = None
    ) -> list[CampaignRow]: ...

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
        ...

    def set_redemptions_paused(self, campaign_id: str, *, paused: bool, now: datetime) -> bool:
        """Turn the campaign's redemption switch to ``paused``; False, with nothing
        written, when it is so already (or there is no such campaign)."""
        ...

    def set_round_times(
        self, campaign_id: str, round_id: str, *, release_at: datetime, ends_at: datetime
    ) -> None: ...

    def lock_campaign_budget(self, campaign_id: str) -> tuple[int, int]:
        """(budget_fen, committed_fen), the campaign row locked until commit."""
        ...

    def take_stock(self, key: StockKey, count: int) -> bool:
        """Count ``count`` more vouchers out of a stock, atomically, if it holds them.

        The row stays locked until commit (the claim's own transaction): a
        stock is never given out twice, whatever the gate believed.
        """
        ...

    def lock_stock(self, key: StockKey) -> tuple[int, int]:
        """(initial, issued) of a stock, the row locked until commit; (0, 0) if the
        campaign stocks no such template there."""
        ...

    def stock_issued(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        """What each stock of the campaign counted out: (round, channel, template) -> n."""
        ...

    def stock_initial(self, campaign_id: str) -> list[tuple[str, str, str, int]]:
        """(round_id, channel_id, template_id, initial) of every pool of the campaign."""
        ...


class PeopleRepository(Protocol):
    """Everyone the platform knows: persons and their channel accounts, operators,
    apps, merchants and the blacklist."""

    def add_operator(
        self, *, operator_id: str, role: str, token_hash: str, now: datetime
    ) -> None: ...

    def operator_by_token_hash(self, token_hash: str) -> tuple[str, str] | None: ...

    def operator_role(self, operator_id: str) -> str | None: ...

    def any_operator(self) -> bool:
        """Whether the store has any operator account, active or not (the first one is
        added without a token)."""
        ...

    def add_app(
        self, *, app_id: str, kind: str, name: str, key_id: str, secret_enc: bytes, now: datetime
    ) -> None: ...

    def get_app(self, app_id: str) -> AppRow | None: ...

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
        """Insert a merchant, or replace its fields and campaigns; a suspension is left
        as it is (only an operator lifts one)."""
        ...

    def get_merchant(self, merchant_id: str) -> MerchantRow | None: ...

    def suspend_merchant(
        self, merchant_id: str, *, reason: str, suspended_by: str, now: datetime
    ) -> bool:
        """Suspend a merchant; False, with nothing written, when it is suspended already
        (the first suspension's reason stays) or there is no such merchant."""
        ...

    def reinstate_merchant(self, merchant_id: str) -> bool:
        """Lift a merchant's suspension; False, with nothing written, when it has none."""
        ...

    def person_by_id_number_bidx(self, bidx: str) -> PersonRow | None: ...

    def get_person(self, person_id: str) -> PersonRow | None: ...

    def set_pseudonym(self, person_id: str, pseudonym: str) -> None:
        """Keep the national pseudonym central evaluated for the person."""
        ...

    def insert_person(self, values: Mapping[str, Any]) -> None:
        """A new person: id, id_number_bidx, id_number_enc, key_id, consent_version,
        consent_at, created_at. Never changed by a later registration."""
        ...

    def account_person(self, channel_id: str, channel_user_id: str) -> str | None: ...

    def person_account_in_channel(self, channel_id: str, person_id: str) -> str | None: ...

    def insert_account(
        self,
        *,
        channel_id: str,
        channel_user_id: str,
        person_id: str,
        identity: Mapping[str, Any],
        now: datetime,
    ) -> None:
        """Bind a channel account to a person with what that channel registered them
        with (``identity``: name_enc, phone_enc, phone_bidx, key_id, residence_region,
        consent_version, consent_at)."""
        ...

    def update_account_identity(
        self, channel_id: str, channel_user_id: str, identity: Mapping[str, Any]
    ) -> None:
        """Replace what this channel account registered (its own; no other account's)."""
        ...

    def blacklisted(self, bidxs: Sequence[str]) -> set[str]: ...

    def add_blacklist(self, *, bidx: str, reason: str, created_by: str, now: datetime) -> bool: ...

    def remove_blacklist(self, bidx: str) -> bool: ...

    def claimants(
        self, channel_id: str, channel_user_ids: Sequence[str]
    ) -> dict[str, tuple[str, str, bool]]:
        """channel_user_id -> (person_id, residence_region, blacklisted), one query; the
        region is the one this channel registered the person with."""
        ...


class VoucherRepository(Protocol):
    """Vouchers and the redemptions made with them."""

    def claimed_slots(
        self, campaign_id: str, round_id: str, channel_id: str, person_ids: Sequence[str]
    ) -> set[tuple[str, int]]:
        """(person_id, claim_seq) of the vouchers these people hold in one pool."""
        ...

    def insert_claims(
        self,
        vouchers: Sequence[VoucherRow],
        keys: Sequence[tuple[str, str, str]],
        now: datetime,
    ) -> None:
        """Voucher rows, each with the claim that issued it: (app_id, key, request_hash)."""
        ...

    def get_voucher(self, voucher_id: str) -> VoucherRow | None: ...

    def lock_voucher(self, voucher_id: str) -> VoucherRow | None:
        """The voucher, its row locked until commit (PostgreSQL; SQLite serialises writers)."""
        ...

    def get_vouchers(self, voucher_ids: Sequence[str]) -> dict[str, VoucherRow]:
        """Many vouchers by id, one query."""
        ...

    def redemption_reads(
        self,
        keys: Sequence[tuple[str, str]],
        voucher_ids: Sequence[str],
        accounts: Sequence[tuple[str, str]],
    ) -> RedemptionReads:
        """What a batch of redemptions reads before deciding: the answers stored for
        its (app_id, key)s, its vouchers locked in id order until commit, and the
        people of its (channel_id, channel_user_id)s.

        The transaction begins first (on SQLite it takes the write lock). On
        PostgreSQL the queries then go as one pipeline with the ``BEGIN``: one
        round trip instead of four. Under load a round trip cost about 1 ms
        against 0.15 ms idle (the writer, PostgreSQL and the HTTP workers share
        the cores), and a redemption batch was a chain of them.
        """
        ...

    def move_vouchers(
        self, moves: Sequence[tuple[VoucherRow, VoucherState, str | None]], *, now: datetime
    ) -> None:
        """``move_voucher`` for many, in one statement; each must still be as it was read."""
        ...

    def insert_redemptions(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def move_voucher(
        self,
        voucher: VoucherRow,
        *,
        state: VoucherState,
        now: datetime,
        redemption_id: str | None = None,
    ) -> bool:
        """Change state only if nobody changed the voucher since it was read."""
        ...

    def person_vouchers(
        self,
        person_id: str,
        *,
        channel_id: str | None,
        after_id: str | None,
        limit: int,
        states: Sequence[str] | None = None,
    ) -> list[VoucherRow]: ...

    def vouchers_past_validity(self, now: datetime, limit: int) -> list[VoucherRow]: ...

    def insert_redemption(self, values: Mapping[str, Any]) -> None: ...

    def get_redemption(self, redemption_id: str) -> RedemptionRow | None: ...

    def move_redemption(
        self, redemption: RedemptionRow, *, status: RedemptionStatus, now: datetime
    ) -> bool: ...

    def locks_past_timeout(self, now: datetime, limit: int) -> list[RedemptionRow]: ...

    def issued_counts(self, campaign_id: str) -> dict[tuple[str, str, str], int]:
        """Vouchers ever issued per (round, channel, template): what the stock gave out."""
        ...

    def claim_counts(self, campaign_id: str) -> Iterator[tuple[str, str, str, int]]:
        """(round_id, channel_id, person_id, claims) for every person who claimed."""
        ...

    def voucher_state_counts(self, campaign_id: str) -> dict[str, tuple[int, int]]:
        """state -> (vouchers, Σ face_fen) for one campaign."""
        ...


class LedgerRepository(Protocol):
    """The ledger with the budget counter it moves, the outbox and the audit log."""

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
        ...

    def record_many(
        self, posts: Sequence[tuple[Entry, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``record`` for many entries that only give budget back (redemptions):
        (entry, {campaign_id, voucher_id, redemption_id}). The counter moves once
        per campaign, campaign rows in key order, after the postings."""
        ...

    def balances(self, campaign_id: str) -> dict[str, int]: ...

    def add_outbox(
        self, *, event_id: str, topic: str, payload: Mapping[str, Any], now: datetime
    ) -> None:
        """An event for the relay to deliver. When the payload names a ``voucher_id``,
        the store numbers the event among that voucher's (``seq`` 1, 2, ...); a
        second writer giving the same number collides (``DuplicateKey``)."""
        ...

    def add_outbox_many(
        self, events: Sequence[tuple[str, str, Mapping[str, Any]]], *, now: datetime
    ) -> None:
        """``add_outbox`` for many (event_id, topic, payload), at most one per voucher."""
        ...

    def outbox_topics(self) -> dict[str, int]: ...

    def append_audit(
        self, *, actor: str, action: str, target: str, details: Mapping[str, Any], now: datetime
    ) -> None:
        """Append to the hash-chained audit log; a concurrent append collides on ``seq``."""
        ...


class OutboxRepository(Protocol):
    """The relay's side of the outbox. An event is ``pending`` until delivered or,
    after its last attempt, ``dead`` (an operator replays it)."""

    def lease_due(self, *, now: datetime, lease_until: datetime, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` pending events due at ``now``, oldest first, each counted as
        one more attempt and not due again before ``lease_until``. Two relays never
        lease one event at once (PostgreSQL: ``FOR UPDATE SKIP LOCKED``)."""
        ...

    def mark_delivered(self, event_ids: Sequence[str], *, now: datetime) -> None: ...

    def wake(self, *, now: datetime, limit: int) -> int:
        """Pending events waiting out a backoff (they failed before: ``last_error``) due
        at ``now`` again, up to ``limit``; how many. For when central is back."""
        ...

    def retry_later(self, retries: Sequence[tuple[str, datetime]], *, error: str) -> None:
        """Each (event_id, next_attempt_at): still pending, with why it failed."""
        ...

    def mark_dead(self, dead: Sequence[tuple[str, str]], *, now: datetime) -> None:
        """Each (event_id, reason): no further attempt until replayed."""
        ...

    def dead_letters(self, *, after_id: str | None, limit: int) -> list[OutboxRow]: ...

    def replay(self, event_ids: Sequence[str] | None, *, now: datetime, limit: int) -> int:
        """Dead events back to pending with no attempts (all of them, up to ``limit``,
        when ``event_ids`` is None); how many moved."""
        ...

    def backlog(self) -> dict[str, int]:
        """status -> events."""
        ...

    def events_between(
        self, start: datetime, end: datetime, *, after_id: str | None, limit: int
    ) -> list[OutboxRow]:
        """Events written in [start, end), by id (for reconciliation)."""
        ...

    def pending_of_voucher(self, voucher_id: str, limit: int) -> list[OutboxRow]:
        """The voucher's events not delivered yet (pending), in seq order."""
        ...


class QualificationRepository(Protocol):
    """Trade-in qualification locks, one row per lock asked of central."""

    def add_lock(self, row: QualificationLockRow) -> None:
        """A new lock (``DuplicateKey`` if its id is taken)."""
        ...

    def get_lock(self, lock_id: str) -> QualificationLockRow | None: ...

    def move_lock(
        self,
        lock_id: str,
        *,
        from_states: Sequence[str],
        to: str,
        now: datetime,
        voucher_id: str | None = None,
    ) -> bool:
        """Move a lock from one of ``from_states`` to ``to`` (setting its voucher when
        given); False, with nothing written, when it is in none of them."""
        ...

    def live_locks(self, person_id: str, category: str) -> int:
        """The person's held and issued locks of ``category``."""
        ...

    def locks_held_since(self, before: datetime, limit: int) -> list[QualificationLockRow]:
        """Locks still ``held`` that were created before ``before``, oldest first."""
        ...

    def lock_of_voucher(self, voucher_id: str) -> QualificationLockRow | None: ...

    def locks_between(
        self, start: datetime, end: datetime, *, after_id: str | None, limit: int
    ) -> list[QualificationLockRow]:
        """Locks created in [start, end), by id, for reconciliation."""
        ...


class IdempotencyRepository(Protocol):
    """The answers given to each (app, Idempotency-Key)."""

    def answered_keys(
        self, app_id: str, keys: Sequence[str]
    ) -> dict[str, tuple[str, int, str | None, str | None]]:
        """key -> (request_hash, status_code, response_json, voucher_id), one query.

        A claim's key is on the voucher it issued (``response_json`` None: the
        answer is the voucher's); any other key, and claims from before
        migration 0002, has its answer stored in ``idempotency_keys``
        (``voucher_id`` None).
        """
        ...

    def idempotent_answer(self, app_id: str, key: str) -> tuple[str, int, str] | None:
        """(request_hash, status_code, response_json) stored for a key, if any."""
        ...

    def store_answers(self, rows: Sequence[Mapping[str, Any]]) -> None: ...


class KeyCheckRepository(Protocol):
    """What the store remembers of the key ring its data is written under (migration 0007).

    A canary is written once and never changed: ``blind_index`` holds the
    blind-index key's digest of a fixed label, ``key:<key id>`` a fixed text
    encrypted under that key. A process whose key ring does not reproduce
    them holds another key file than the data's and is refused at start
    (``lequan.services.keys``). An in-process store keeps them in a dict.
    """

    def canaries(self) -> dict[str, bytes]:
        """Every canary by name (empty before the first start after 0007)."""
        ...

    def add_canaries(self, canaries: Mapping[str, bytes], *, now: datetime) -> None:
        """Write new canaries; ``DuplicateKey`` if another process wrote one first."""
        ...

    def sealed_samples(self, limit: int) -> list[SealedSample]:
        """Up to ``limit`` values the store already holds encrypted (app secrets, then ID
        numbers with their blind index), oldest first: what a store written before
        its canaries is checked against before they are pinned."""
        ...


class ProductRepository(Protocol):
    """The trade-in products subsidised in this province, one per redemption.

    A serial number, an IMEI and an invoice number is held by one unreleased
    product at most: the store's unique keys refuse a second (``DuplicateKey``),
    so two redemptions of one product at once cannot both be subsidised.
    Released (a refund, a reversal, a void, a lock timed out), it may be
    subsidised again. Identifiers are stored as ``domain.trade_in`` normalised them.
    """

    def add_products(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Register products: redemption_id, voucher_id, campaign_id, category, brand,
        model, sku, energy_grade, price_fen, serial_number, imei, invoice_number,
        old_appliance_handed_in, subsidy_fen, created_at. ``DuplicateKey`` when an
        identifier is held already (or twice among ``rows``); a pipelined write."""
        ...

    def held(
        self,
        *,
        serial_numbers: Sequence[str],
        imeis: Sequence[str],
        invoice_numbers: Sequence[str],
    ) -> set[tuple[str, str]]:
        """(field, value) of the given identifiers an unreleased product holds, the
        field one of serial_number, imei, invoice_number; one query."""
        ...

    def get_product(self, redemption_id: str) -> ProductRow | None: ...

    def release_product(self, redemption_id: str, *, now: datetime) -> bool:
        """Let go of the redemption's product; False when it has none, or let go already."""
        ...


class RiskRepository(Protocol):
    """Risk control (migration 0012): the rules file's versions, the review queue, and
    the blacklists of devices and of phones (by the phone's blind index)."""

    def add_rules(self, *, version: int, text: str, drafted_by: str, now: datetime) -> None:
        """A new draft; ``DuplicateKey`` when the version exists."""
        ...

    def get_rules(self, version: int) -> RiskRulesRow | None: ...

    def list_rules(self, *, limit: int) -> list[RiskRulesRow]:
        """The newest versions first."""
        ...

    def active_rules(self) -> RiskRulesRow | None: ...

    def active_version(self) -> int | None:
        """The active version's number alone: what every process polls."""
        ...

    def latest_version(self) -> int | None:
        """The highest version drafted, whatever its status."""
        ...

    def activate_rules(self, version: int, *, approved_by: str, now: datetime) -> bool:
        """Make a draft the active version and retire the one before; False, with nothing
        written, when ``version`` is not a draft. At most one version is active: a
        second approval racing this one collides (``DuplicateKey``)."""
        ...

    def add_reviews(self, rows: Sequence[ReviewRow]) -> None:
        """New review items (pending); ``DuplicateKey`` when an id is taken."""
        ...

    def get_review(self, review_id: str) -> ReviewRow | None: ...

    def list_reviews(
        self, *, status: str | None, kind: str | None, after_id: str | None, limit: int
    ) -> list[ReviewRow]:
        """Items by id (oldest first), after ``after_id``, of the status and kind given."""
        ...

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
        """Move an item from ``expected`` to ``status`` with who decided and why; False,
        with nothing written, when it is not ``expected`` (someone decided first)."""
        ...

    def set_review_outcome(
        self, review_id: str, *, outcome: str, detail: Mapping[str, Any] | None
    ) -> bool:
        """Record what a decision led to, once; False when it is recorded already."""
        ...

    def blacklisted_devices(self, device_ids: Sequence[str]) -> set[str]:
        """The given device ids that are on the device blacklist; one query."""
        ...

    def blacklisted_phones(self, channel_id: str, channel_user_ids: Sequence[str]) -> set[str]:
        """The given accounts of the channel whose phone is on the phone blacklist; one query."""
        ...

    def add_blacklisted(
        self, *, kind: str, value: str, reason: str, created_by: str, now: datetime
    ) -> bool:
        """Put a device id (``kind`` device) or a phone's blind index (``phone``) on its
        list; False when it is there already (its first reason stays)."""
        ...

    def remove_blacklisted(self, *, kind: str, value: str) -> bool: ...

    def list_blacklisted(
        self, *, kind: str, after: str | None, limit: int
    ) -> list[RiskBlacklistRow]:
        """One list's entries by value, after ``after``."""
        ...


class RedemptionRiskRepository(Protocol):
    """Redemption-time risk (migration 0014): the redemptions the rules remember, the
    payables a rule held, and the SKU baseline prices."""

    def add_facts(self, rows: Sequence[RedemptionFactRow]) -> None:
        """Remember redemptions (sent in a pipeline); ``DuplicateKey`` when one is known."""
        ...

    def get_fact(self, redemption_id: str) -> RedemptionFactRow | None: ...

    def complete_fact(self, redemption_id: str, *, now: datetime) -> RedemptionFactRow | None:
        """A locked redemption confirmed: completed ``now``; the row as it is then, or None
        when none is remembered or it was completed already."""
        ...

    def refund_fact(self, redemption_id: str, *, now: datetime, refund_after_s: int) -> bool:
        """A completed redemption refunded ``refund_after_s`` after it; False when none is
        remembered or it was refunded already."""
        ...

    def merchant_refunds(
        self, merchant_id: str, *, since: datetime, within_s: int
    ) -> tuple[int, int]:
        """(the merchant's redemptions completed since ``since``, those of them refunded
        within ``within_s``); one query on the merchant's index."""
        ...

    def payer_refunds(self, payer_id: str, *, since: datetime, within_s: int) -> int:
        """The payer token's redemptions completed since ``since`` and refunded within
        ``within_s``; one query on the payer's index."""
        ...

    def recent(self, *, since: datetime, limit: int) -> list[RecentRedemption]:
        """The redemptions completed since ``since``, newest first, ``limit`` at most."""
        ...

    def payer_redemptions(
        self, payer_id: str, *, since: datetime, limit: int
    ) -> list[RecentRedemption]:
        """The payer token's redemptions completed since ``since``, newest first,
        ``limit`` at most; one query on the payer's index."""
        ...

    def flag_facts(self, flags: Sequence[tuple[str, str]]) -> set[str]:
        """Record (redemption, review) for those no review flagged yet; the redemptions
        flagged now (a conditional update each: two processes never flag one twice)."""
        ...

    def add_holds(self, rows: Sequence[PayableHoldRow]) -> None:
        """Payables held, or clawed back unheld (sent in a pipeline); ``DuplicateKey``
        when a redemption has one already."""
        ...

    def get_hold(self, redemption_id: str) -> PayableHoldRow | None: ...

    def move_hold(
        self,
        redemption_id: str,
        *,
        expected: str,
        status: str,
        now: datetime,
        review_id: str | None = None,
    ) -> bool:
        """Move a hold from ``expected`` to ``status`` (and to ``review_id``, if given);
        False, with nothing written, when it is not ``expected``."""
        ...

    def held_fen(self, campaign_id: str) -> int:
        """What the campaign's holds hold now (status ``held``)."""
        ...

    def upsert_sku_prices(self, rows: Sequence[SkuPriceRow]) -> None:
        """Set the baseline price of each SKU, new or known."""
        ...

    def sku_prices(self, skus: Sequence[str]) -> dict[str, int]:
        """The baseline price of each given SKU that has one; one query."""
        ...

    def list_sku_prices(self, *, after: str | None, limit: int) -> list[SkuPriceRow]:
        """The SKU prices by SKU, after ``after``."""


class DrawRepository(Protocol):
    """The fair start of each round with a start window: its seed, sealed until the draw
    is published, its commitment, and the published entries (docs/risk.md)."""

    def add_draws(self, rows: Sequence[DrawRow]) -> None:
        """Insert; a round that has its draw already is ``DuplicateKey``."""
        ...

    def get_draw(self, campaign_id: str, round_id: str) -> DrawRow | None: ...

    def draws_of(self, campaign_id: str) -> list[DrawRow]:
        """The campaign's draws, by round id."""
        ...

    def unpublished(self, limit: int) -> list[DrawRow]:
        """Up to ``limit`` draws not yet published, their rounds' earliest release first."""
        ...

    def add_entries(self, campaign_id: str, round_id: str, rows: Sequence[DrawEntryRow]) -> None:
        """Insert entries of a served draw; a rank written already is ``DuplicateKey``."""
        ...

    def last_rank(self, campaign_id: str, round_id: str) -> int:
        """The highest rank written of the draw's entries; 0 for none."""
        ...

    def reveal(
        self, campaign_id: str, round_id: str, *, seed_hex: str, entries: int, now: datetime
    ) -> bool:
        """Publish the draw: its seed, its count of entries and of those won (counted
        from the entries written); False, with nothing written, if it was published."""
        ...

    def entries(
        self, campaign_id: str, round_id: str, *, after_rank: int, limit: int
    ) -> list[DrawEntryRow]:
        """Up to ``limit`` published entries ranked after ``after_rank``, in rank order."""
        ...


class UnitOfWork(Protocol):
    """One transaction over every aggregate; rolled back unless committed."""

    @property
    def campaigns(self) -> CampaignRepository: ...

    @property
    def people(self) -> PeopleRepository: ...

    @property
    def vouchers(self) -> VoucherRepository: ...

    @property
    def ledger(self) -> LedgerRepository: ...

    @property
    def idempotency(self) -> IdempotencyRepository: ...

    @property
    def keys(self) -> KeyCheckRepository: ...

    @property
    def outbox(self) -> OutboxRepository: ...

    @property
    def qualifications(self) -> QualificationRepository: ...

    @property
    def products(self) -> ProductRepository: ...

    @property
    def risk(self) -> RiskRepository: ...

    @property
    def redemption_risk(self) -> RedemptionRiskRepository: ...

    @property
    def draws(self) -> DrawRepository: ...

    def commit(self) -> None: ...

    def rollback(self) -> None:
        """Undo the transaction so far; the unit of work may go on reading."""
        ...

    def pipeline(self) -> AbstractContextManager[None]:
        """Send the block's writes without waiting for each answer, where the store can.

        Only writes that need no answer to go on may run inside
        (``move_vouchers``, ``insert_redemptions``, ``ledger.record_many``,
        ``add_outbox_many``); a failure comes back at the end of the block.
        """
        ...


class Store(Protocol):
    """Hands out units of work over the source of truth."""

    def unit_of_work(self, *, readonly: bool = False) -> AbstractContextManager[UnitOfWork]:
        """One transaction; ``readonly`` promises no write, so it need not queue behind one."""
        ...

    def ping(self) -> None:
        """Ask one trivial question; ``StoreUnavailable`` when the store does not answer."""
        ...

    def schema_revisions(self) -> tuple[str | None, str | None]:
        """(the schema the store is at, the one this version needs); None: no schema."""
        ...

    def upgrade(self) -> None:
        """Bring the schema to the one this version needs (the only way it changes)."""
        ...

    def dispose(self) -> None:
        """Close every connection; the store is not used again."""
        ...
