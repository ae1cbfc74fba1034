"""Request and response bodies of the public API, every field bounded.

Inputs forbid unknown fields so a typo in an integration fails loudly
instead of being ignored, and are strict: an amount, a count or a flag is a
JSON number or boolean, never ``true`` read as 1 fen, ``"56800"`` or
``56800.0`` read as an integer, or ``"true"`` read as consent. Every input is
parsed from its raw JSON by ``envelope.parse_body``, on every route.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from lequan.domain.templates import AMOUNT_FEN_MAX
from lequan.domain.trade_in import (
    PRICE_FEN_MAX,
    Category,
    Product,
    normalise_imei,
    normalise_invoice_number,
    normalise_serial_number,
)

__all__ = [
    "OPERATOR_ERRORS",
    "SIGNED_ERRORS",
    "BatchClaimIn",
    "ClaimIn",
    "ErrorOut",
    "MerchantOut",
    "MerchantSwitchIn",
    "PersonIn",
    "ProductIn",
    "QuoteIn",
    "RedeemIn",
    "RedemptionSwitchIn",
    "RefundIn",
    "error_responses",
]

ChannelUserId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")]
Slug = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
RegionCode = Annotated[str, Field(pattern=r"^[0-9]{6}$")]
# JSON Schema's "integer" also matches 56800.0: the description says what the server takes.
Fen = Annotated[
    int,
    Field(
        gt=0,
        le=AMOUNT_FEN_MAX,
        description="Integer fen, as a JSON integer: not a string, a fraction or a boolean.",
    ),
]
# Free text never carries control characters (PostgreSQL refuses NUL; logs and
# files choke on the rest).
NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
OpaqueId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ErrorOut(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. sold_out.")
    message: str
    request_id: str
    details: dict[str, Any] | None = None


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (with the same Idempotency-Key).",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route can give, for its OpenAPI ``responses``: each an
    ``ErrorOut``, and a 429 or 503 says when to come back."""
    return {
        status: {"model": ErrorOut, **({"headers": _RETRY_AFTER} if status in (429, 503) else {})}
        for status in statuses
    }


# A signed call (channel or acquirer): refused unsigned (401), by app kind (403), by the
# body limit (413), its input (422), throttled or overloaded (429), a dependency down (503).
SIGNED_ERRORS = error_responses(401, 403, 404, 409, 413, 422, 429, 503)
# An operator's call: no throttle, no in-flight bound.
OPERATOR_ERRORS = error_responses(401, 403, 404, 409, 413, 422, 503)


class PersonIn(_In):
    channel_user_id: ChannelUserId
    id_number: Annotated[str, Field(min_length=1, max_length=32)]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    phone: Annotated[str, Field(min_length=1, max_length=32)]
    region_code: RegionCode = Field(description="Residence, GB/T 2260 (e.g. 310104).")
    location_region: RegionCode | None = Field(
        default=None, description="Where the person is now, as the channel located them."
    )
    consent: bool = Field(
        description="The person agreed to the use of their data, as a JSON boolean."
    )
    consent_version: Annotated[str, Field(max_length=32)] = "2024-01"


class ReasonOut(BaseModel):
    code: str
    message: str


class VerdictOut(BaseModel):
    campaign_id: str
    eligible: bool
    reasons: list[ReasonOut]


class PersonOut(BaseModel):
    person_id: str
    created: bool
    id_number_masked: str
    name_masked: str
    phone_masked: str
    region_code: str
    eligibility: list[VerdictOut]


def _ip_address(value: str) -> str:
    """An IPv4 or IPv6 address, in its canonical text (``::ffff:1.2.3.4`` as 1.2.3.4)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


IpAddress = Annotated[str, Field(min_length=2, max_length=45), AfterValidator(_ip_address)]
DeviceId = Annotated[
    str,
    Field(
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The channel's stable id of the device, opaque (a hash of its own id).",
    ),
]


class ClaimSignalsIn(_In):
    """What the channel knows of the claim besides the person: every field optional, a
    missing one counts as unknown to the risk rules (docs/risk.md), never as a failure."""

    device_id: DeviceId | None = None
    ip: IpAddress | None = Field(None, description="The client's address as the channel saw it.")
    account_age_s: Annotated[int, Field(ge=0, le=30 * 365 * 86_400)] | None = Field(
        None, description="Seconds since the person's account with the channel was opened."
    )
    network_region: RegionCode | None = Field(
        None,
        description="Where the channel places the client's network (IP geolocation), "
        "against the declared `location_region`.",
    )
    channel_risk: Literal["low", "medium", "high"] | None = Field(
        None, description="The channel's own risk level for this account."
    )


class ClaimIn(_In):
    channel_user_id: ChannelUserId
    campaign_id: Slug
    round_id: Slug
    template_id: Slug
    location_region: RegionCode | None = None
    signals: ClaimSignalsIn | None = Field(
        None, description="Risk signals (docs/risk.md); not part of the claim's identity."
    )
    pressed_at: AwareDatetime | None = Field(
        None,
        description="When the person pressed claim, by the channel's clock (with its "
        "offset). A round's fair start takes a claim pressed inside its window that "
        "reaches the platform during the intake after it (docs/risk.md); a time later "
        "than the platform's counts as now. Not part of the claim's identity.",
    )


class BatchClaimItemIn(ClaimIn):
    # The characters are checked as a header's key is (``invalid_idempotency_key``); the
    # description says which.
    idempotency_key: Annotated[
        str,
        Field(min_length=1, max_length=128, json_schema_extra={"pattern": r"^[A-Za-z0-9_.:-]+$"}),
    ]


class BatchClaimIn(_In):
    # At most ``claim_batch_items_max`` items, refused ``batch_too_large`` beyond: the app's
    # description states the setting's value (``app.py``); the body limit bounds the parse.
    items: Annotated[list[BatchClaimItemIn], Field(min_length=1)]


class VoucherOut(BaseModel):
    voucher_id: str
    campaign_id: str
    round_id: str
    template_id: str
    channel_id: str
    face_fen: int
    state: str
    valid_from: str
    valid_until: str
    issued_at: str
    draw_ticket: str | None = Field(
        None,
        description="Issued by a round's fair start: the claim's ticket in the round's "
        "published draw (docs/risk.md); absent otherwise.",
    )


class ClaimOut(BaseModel):
    status: Literal["issued"]
    voucher: VoucherOut


class ClaimHeldOut(BaseModel):
    """202: a risk rule held the claim for an analyst (docs/risk.md); nothing is issued
    yet. If the analyst approves, the voucher appears in the person's wallet."""

    status: Literal["held_for_review"]
    review_id: str


class ClaimAcceptedOut(BaseModel):
    """202 with ``Prefer: respond-async``: the claim waits for its round's draw (docs/risk.md,
    "Fair start"); nothing is issued yet. Send it again with the same Idempotency-Key
    after ``retry_after_s`` for its answer."""

    status: Literal["entered", "queued"] = Field(
        description="entered: in the draw; queued: after the window, served first come, "
        "first served once the draw is."
    )
    draw_ticket: str | None = Field(None, description="entered: the claim's ticket.")
    retry_after_s: int


class BatchItemOut(BaseModel):
    index: int
    idempotency_key: str
    status_code: int
    outcome: str = Field(
        description="issued, held_for_review, or the error code (sold_out, already_claimed, ...)"
    )
    replayed: bool
    voucher: VoucherOut | None = None
    error: dict[str, Any] | None = None
    review_id: str | None = Field(
        None, description="held_for_review: the review item the claim waits in."
    )
    draw_ticket: str | None = Field(
        None, description="entered (`Prefer: respond-async`): the claim's ticket in the draw."
    )
    retry_after_s: int | None = Field(
        None,
        description="entered or queued (`Prefer: respond-async`): send the item again, with "
        "its key, after this many seconds for its answer.",
    )


class BatchClaimOut(BaseModel):
    results: list[BatchItemOut]
    outcomes: dict[str, int]


class WalletOut(BaseModel):
    items: list[VoucherOut]
    next_cursor: str | None


class OrderIn(_In):
    channel_id: Slug
    channel_user_id: ChannelUserId
    merchant_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    order_amount_fen: Fen
    mode: Literal["online", "in_store"]
    order_type: Slug = "goods"


ProductText = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_CONTROL)]


class ProductIn(_In):
    """A trade-in product, as the acquirer describes it. Identifiers are normalised as
    the registry compares them (letters and digits, upper-case; an IMEI's 15 digits
    with a valid check digit); what a trade-in voucher needs of the rest is checked
    against its template (``domain/trade_in.py``)."""

    category: Category = Field(description="One of the national trade-in categories.")
    brand: ProductText | None = None
    model: ProductText | None = None
    sku: ProductText | None = None
    energy_grade: (
        Annotated[int, Field(ge=1, le=5, description="1 to 5, as a JSON integer.")] | None
    ) = None
    price_fen: (
        Annotated[
            int,
            Field(
                gt=0,
                le=PRICE_FEN_MAX,
                description="The product's final price in integer fen, within the order.",
            ),
        ]
        | None
    ) = None
    serial_number: (
        Annotated[
            str,
            Field(min_length=1, max_length=64, description="4–40 letters and digits."),
            AfterValidator(normalise_serial_number),
        ]
        | None
    ) = None
    imei: (
        Annotated[
            str,
            Field(min_length=1, max_length=32, description="15 digits, the last a Luhn check."),
            AfterValidator(normalise_imei),
        ]
        | None
    ) = None
    invoice_number: (
        Annotated[
            str,
            Field(min_length=1, max_length=64, description="6–40 letters and digits."),
            AfterValidator(normalise_invoice_number),
        ]
        | None
    ) = None
    old_appliance_handed_in: bool | None = None

    def product(self) -> Product:
        return Product(**self.model_dump())


class QuoteIn(OrderIn):
    product: ProductIn | None = Field(
        default=None, description="A trade-in voucher is quoted only with its product."
    )


class QuoteItemOut(BaseModel):
    voucher: VoucherOut
    discount_fen: int
    pay_fen: int


class QuoteOut(BaseModel):
    quotes: list[QuoteItemOut]


class RedemptionSignalsIn(_In):
    """What the acquirer knows of the payment besides the order: every field optional."""

    payer_id: (
        Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] | None
    ) = Field(
        None,
        description="The paying card or account as the acquirer's own opaque token (a keyed "
        "hash, never the card number): the same payer, the same token.",
    )
    terminal_id: OpaqueId | None = Field(None, description="The till or POS terminal.")


class RedeemIn(OrderIn):
    voucher_id: OpaqueId
    order_id: Annotated[str, Field(min_length=1, max_length=64, pattern=NO_CONTROL)]
    capture: Literal["one_step", "lock"] = Field(
        default="one_step",
        description="one_step redeems now; lock holds the voucher until confirm or void.",
    )
    product: ProductIn | None = None
    signals: RedemptionSignalsIn | None = Field(None, description="Risk signals (docs/risk.md).")


class RedemptionOut(BaseModel):
    redemption_id: str
    voucher_id: str
    campaign_id: str
    merchant_id: str
    order_id: str
    mode: str
    order_amount_fen: int
    discount_fen: int
    pay_fen: int
    status: str
    lock_expires_at: str | None
    created_at: str
    voucher_state: str | None = None


class EmptyIn(_In):
    pass


class RefundIn(_In):
    refund_amount_fen: Fen
    reason: Annotated[str, Field(max_length=200, pattern=NO_CONTROL)] | None = None


class AppIn(_In):
    app_id: Slug
    kind: Literal["channel", "acquirer"]
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=NO_CONTROL)]


class AppOut(BaseModel):
    app_id: str
    kind: str
    name: str
    secret: str = Field(description="Shown once; sign every request with it.")


class BlacklistIn(_In):
    id_number: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_CONTROL)] = "scalper"


class BlacklistRemoveIn(_In):
    id_number: Annotated[str, Field(min_length=1, max_length=32)]


class CampaignOut(BaseModel):
    id: str
    name: str
    status: str
    budget_fen: int
    committed_fen: int
    drafted_by: str
    approved_by: str | None
    rounds: list[dict[str, Any]]
    channels: list[str]
    templates: list[dict[str, Any]]
    redemptions_paused: bool = Field(
        description="Operators stopped the spending of its vouchers: a switch of its own, "
        "apart from `status` (`paused` stops claims)."
    )
    start_window_s: int = Field(
        0, description="Each round's fair-start window in seconds (0: first come, first served)."
    )
    start_window_intake_s: int = Field(
        0,
        description="How long after each window its draw still takes in claims pressed "
        "inside it (docs/risk.md).",
    )


class FairnessOut(BaseModel):
    """A round's fair start: the commitment from approval on, the seed once served."""

    campaign_id: str
    round_id: str
    algorithm: str = Field(description="The draw's specification: `lequan-fair-start-v1`.")
    start_window_s: int
    release_at: str
    window_closes_at: str
    start_window_intake_s: int = Field(
        description="How long after the window the draw still took in claims the channels "
        "said were pressed inside it (`pressed_at`)."
    )
    intake_closes_at: str = Field(
        description="When the draw stopped taking entries and began to be served."
    )
    commitment: str = Field(description="SHA-256 (hex) of the commitment text with the seed.")
    committed_at: str
    seed: str | None = Field(description="The seed (64 hex), once the draw is published.")
    published_at: str | None
    entries: int | None = Field(description="Entries drawn, once published.")
    won: int | None = Field(description="Entries that won a voucher, once published.")


class FairnessListOut(BaseModel):
    items: list[FairnessOut]


class DrawEntryOut(BaseModel):
    rank: int = Field(description="The entry's place in the order (1 is served first).")
    ticket: str = Field(description="The ticket its claim's answer carried (32 hex).")
    channel_id: str
    template_id: str
    outcome: str = Field(
        description="won, sold_out, already_claimed, claim_limit_reached, unavailable or "
        "interrupted (docs/risk.md)"
    )


class DrawEntriesOut(BaseModel):
    items: list[DrawEntryOut]
    next_after_rank: int | None = Field(description="Pass as `after_rank` for the next page.")


class CampaignListOut(BaseModel):
    items: list[CampaignOut]


class CampaignCheckOut(BaseModel):
    campaign_id: str
    ok: bool
    problems: list[str]
    vouchers_by_state: dict[str, int]
    issued: int
    stock_initial: int
    budget_fen: int
    committed_fen: int
    balances: dict[str, int]


class MerchantImportOut(BaseModel):
    imported: int


# An operator's reason for pulling a switch, kept in the audit log.
Reason = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_CONTROL)]


class RedemptionSwitchIn(_In):
    """The body of pausing or resuming a campaign's redemptions: optional, as is its reason."""

    reason: Reason | None = None


class MerchantSwitchIn(_In):
    """Why a merchant is suspended or reinstated: the audit log keeps it."""

    reason: Reason


class MerchantSuspensionOut(BaseModel):
    reason: str
    suspended_by: str
    suspended_at: str


class MerchantOut(BaseModel):
    id: str
    name: str
    mcc: str
    region_code: str
    modes: list[str]
    acquirer_id: str
    campaigns: list[str] = Field(description="The campaigns it is enrolled in.")
    suspended: bool = Field(description="Operators suspended it: it takes no voucher.")
    suspension: MerchantSuspensionOut | None = Field(
        description="Why, by whom and since when; null when not suspended."
    )


class BlacklistAddOut(BaseModel):
    added: bool = Field(description="False: the person was blacklisted already.")


class BlacklistRemoveOut(BaseModel):
    removed: bool = Field(description="False: the person was not blacklisted.")


# -- the outbox delivered to central (admin) ---------------------------------------------


class OutboxOut(BaseModel):
    pending: int
    dead: int
    delivered: int


class OutboxEventOut(BaseModel):
    event_id: str
    topic: str
    voucher_id: str | None
    seq: int | None
    attempts: int
    last_error: str | None
    created_at: str


class OutboxDeadOut(BaseModel):
    items: list[OutboxEventOut]
    next_cursor: str | None


class OutboxReplayIn(_In):
    # The events to replay, or every dead one (at most ``limit``) when omitted.
    event_ids: (
        Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=1000)] | None
    ) = None
    limit: Annotated[int, Field(ge=1, le=100_000)] = 10_000


class OutboxReplayOut(BaseModel):
    replayed: int
