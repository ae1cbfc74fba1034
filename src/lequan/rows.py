"""What the store hands back: one frozen row type per thing it keeps.

The services and the HTTP layer read these; the store port takes and
returns them; each adapter builds them from its own storage. They carry
no behaviour: the rules about them live in ``lequan.domain``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lequan.domain.campaigns import CampaignConfig, CampaignStatus
from lequan.domain.redemption_states import RedemptionStatus
from lequan.domain.trade_in import Product
from lequan.domain.vouchers import VoucherState

__all__ = [
    "AppRow",
    "CampaignRow",
    "DrawEntryRow",
    "DrawRow",
    "MerchantRow",
    "MerchantSuspension",
    "OutboxRow",
    "PayableHoldRow",
    "PersonRow",
    "ProductRow",
    "QualificationLockRow",
    "RecentRedemption",
    "RedemptionFactRow",
    "RedemptionReads",
    "RedemptionRow",
    "ReviewRow",
    "RiskBlacklistRow",
    "RiskRulesRow",
    "SealedSample",
    "SkuPriceRow",
    "StockKey",
    "VoucherRow",
]


# (campaign_id, round_id, channel_id, template_id): one template's stock in one pool.
StockKey = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class CampaignRow:
    id: str
    status: CampaignStatus
    config: CampaignConfig
    budget_fen: int
    committed_fen: int
    drafted_by: str
    approved_by: str | None
    rounds: Mapping[str, tuple[datetime, datetime]]  # round_id -> (release_at, ends_at)
    # The operators' redemption switch, apart from the status (which stops claims).
    redemptions_paused: bool = False


@dataclass(frozen=True, slots=True)
class AppRow:
    id: str
    kind: str
    name: str
    secret_key_id: str
    secret_enc: bytes
    active: bool


@dataclass(frozen=True, slots=True)
class PersonRow:
    """One human, whatever channels they registered through: their ID number. What each
    channel registered them with (name, phone, residence) is on that channel's account."""

    id: str
    id_number_bidx: str
    id_number_enc: bytes
    key_id: str
    pseudonym: str | None = None  # national, from central (OPRF), set at first use


@dataclass(frozen=True, slots=True)
class SealedSample:
    """A value the store already holds encrypted: its field (the associated data), key
    id and ciphertext, and for an ID number the blind index it is filed under."""

    field: str
    key_id: str
    ciphertext: bytes
    blind_index: str | None = None


@dataclass(frozen=True, slots=True)
class MerchantSuspension:
    """Why, by whom and since when operators suspended a merchant."""

    reason: str
    suspended_by: str
    suspended_at: datetime


@dataclass(frozen=True, slots=True)
class MerchantRow:
    id: str
    name: str
    mcc: str
    region_code: str
    modes: frozenset[str]
    acquirer_id: str
    enrolled_campaigns: frozenset[str]
    # Set by an operator, and only an operator lifts it: a merchant import never does.
    suspension: MerchantSuspension | None = None

    @property
    def suspended(self) -> bool:
        return self.suspension is not None


@dataclass(frozen=True, slots=True)
class VoucherRow:
    id: str
    campaign_id: str
    round_id: str
    channel_id: str
    template_id: str
    person_id: str
    claim_seq: int
    face_fen: int
    state: VoucherState
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime
    version: int
    redemption_id: str | None
    # The ticket of the claim a round's fair start drew it for (its answer carries it).
    draw_ticket: str | None = None


@dataclass(frozen=True, slots=True)
class RedemptionReads:
    """What ``VoucherRepository.redemption_reads`` found for a batch."""

    # (app_id, key) -> (request_hash, status_code, response_json)
    answers: dict[tuple[str, str], tuple[str, int, str]]
    # voucher id -> the voucher, locked until commit
    vouchers: dict[str, VoucherRow]
    # (channel_id, channel_user_id) -> person id
    persons: dict[tuple[str, str], str]


@dataclass(frozen=True, slots=True)
class RedemptionRow:
    id: str
    voucher_id: str
    campaign_id: str
    acquirer_id: str
    merchant_id: str
    order_id: str
    mode: str
    order_amount_fen: int
    discount_fen: int
    pay_fen: int
    status: RedemptionStatus
    lock_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A fact another system must learn, as the relay leases it."""

    id: str
    topic: str
    payload_json: str
    created_at: datetime
    status: str  # pending | delivered | dead
    attempts: int
    voucher_id: str | None
    seq: int | None  # 1, 2, ... among the voucher's events
    last_error: str | None


@dataclass(frozen=True, slots=True)
class QualificationLockRow:
    """One lock of a person's trade-in qualification asked of central.

    ``held`` from before central is asked until the voucher commits (``issued``)
    or the application fails (``refused``); ``released`` once given back (an
    expired or void voucher, a revocation, a lock whose voucher never came).
    """

    id: str
    person_id: str
    campaign_id: str
    template_id: str
    category: str
    state: str
    voucher_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProductRow:
    """A trade-in product subsidised by one redemption (migration 0010); its serial
    number, IMEI and invoice number are held until ``released_at`` (a refund, a
    reversal, a void or a lock that timed out)."""

    redemption_id: str
    voucher_id: str
    campaign_id: str
    product: Product
    subsidy_fen: int
    created_at: datetime
    released_at: datetime | None


@dataclass(frozen=True, slots=True)
class RiskRulesRow:
    """One version of the risk rules file (migration 0012): ``draft`` until a checker
    approves it, then ``active`` until another version is approved (``retired``)."""

    version: int
    text: str  # the YAML as the maker uploaded it
    status: str  # draft | active | retired
    drafted_by: str
    drafted_at: datetime
    approved_by: str | None
    approved_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """One item of the risk review queue: a claim held (``kind`` claim) or, later, a
    payable held (``redemption``), what it holds (``subject``), the rules that fired with
    their figures (``reasons``), and an analyst's decision and its outcome."""

    id: str
    kind: str  # claim | redemption
    status: str  # pending | approved | rejected
    created_at: datetime
    subject: Mapping[str, Any]
    reasons: Sequence[Mapping[str, Any]]
    rules_version: int
    campaign_id: str | None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    # What the decision led to (a claim issued, or the code it was refused with), once known.
    outcome: str | None = None
    outcome_detail: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RiskBlacklistRow:
    """A device id or a phone's blind index on a risk blacklist, with who put it there."""

    kind: str  # device | phone
    value: str
    reason: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RedemptionFactRow:
    """A redemption as the redemption-time rules remember it (migration 0014): who, where,
    the payer's token, when it completed (None while locked) and when it was refunded."""

    redemption_id: str
    campaign_id: str
    merchant_id: str
    person_id: str
    voucher_id: str
    payer_id: str | None
    terminal_id: str | None
    order_amount_fen: int
    created_at: datetime
    redeemed_at: datetime | None
    refunded_at: datetime | None = None
    refund_after_s: int | None = None
    # The review item that flagged it first, if one did.
    review_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecentRedemption:
    """A recent completed redemption as the ring's graph reads it."""

    redemption_id: str
    person_id: str
    merchant_id: str
    flagged: bool  # a review item flagged it already


@dataclass(frozen=True, slots=True)
class PayableHoldRow:
    """A redemption's payable a risk rule held, or an analyst clawed back (migration
    0014): ``held`` (in the ledger's ``held:`` account) until ``released`` (owed again)
    or ``clawed_back`` (back in the campaign's budget, never paid)."""

    redemption_id: str
    campaign_id: str
    payable: str  # the account it was taken from: payable:<acquirer>[:<category>]
    amount_fen: int
    status: str  # held | released | clawed_back
    review_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SkuPriceRow:
    """A trade-in product's baseline price by SKU, as operators imported it."""

    sku: str
    baseline_price_fen: int
    updated_by: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DrawRow:
    """A round's fair start: its sealed seed and commitment, and once served, the seed
    revealed with the counts of its entries (docs/risk.md, "Fair start")."""

    campaign_id: str
    round_id: str
    window_s: int
    commitment: str
    seed_key_id: str
    seed_sealed: bytes
    committed_at: datetime
    seed_hex: str | None  # revealed when published
    published_at: datetime | None
    entries: int
    won: int


@dataclass(frozen=True, slots=True)
class DrawEntryRow:
    """One published entry of a draw: names no person."""

    rank: int
    ticket: str
    channel_id: str
    template_id: str
    outcome: str
