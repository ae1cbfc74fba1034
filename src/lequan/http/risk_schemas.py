"""Bodies of the risk admin API (``routes/risk.py``): the rules file's versions, the
review queue, and the device and phone blacklists. Inputs are strict and bounded
like every input (``schemas._In``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from lequan.http.schemas import NO_CONTROL, _In

__all__ = [
    "ReviewDecisionIn",
    "ReviewListOut",
    "ReviewOut",
    "RiskBlacklistIn",
    "RiskBlacklistListOut",
    "RiskRulesListOut",
    "RiskRulesOut",
    "SkuImportOut",
    "SkuPriceListOut",
    "SkuPriceOut",
]

Reason = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_CONTROL)]


class RiskRulesOut(BaseModel):
    version: int
    status: Literal["draft", "active", "retired"]
    drafted_by: str
    drafted_at: str
    approved_by: str | None
    approved_at: str | None
    claim_rules: list[str] = Field(description="The claim rules this version turns on.")
    redemption_rules: list[str] = Field(
        default_factory=list, description="The redemption rules this version turns on."
    )
    text: str | None = Field(
        None, description="The file as uploaded (`GET /v1/admin/risk/rules/{version}`)."
    )


class RiskRulesListOut(BaseModel):
    active_version: int | None = Field(description="null: no version approved, no rule on.")
    versions: list[RiskRulesOut] = Field(description="Newest first, at most 100.")


class FiredOut(BaseModel):
    code: str = Field(description="The rule's reason code (docs/risk.md).")
    action: Literal["review", "refuse", "flag", "hold", "suspend"] = Field(
        description="A claim rule's `review` or `refuse`; a redemption rule's `flag`, `hold` "
        "or `suspend`."
    )
    figures: dict[str, int | str] = Field(
        description="What the rule saw: counts, limits, windows, regions, merchants."
    )


class ReviewOut(BaseModel):
    review_id: str
    kind: Literal["claim", "redemption"]
    status: Literal["pending", "approved", "rejected"]
    created_at: str
    campaign_id: str | None
    rules_version: int
    subject: dict[str, Any] = Field(
        description="What is held: for a claim, the channel's request and its signals; for "
        "a redemption, `redemption_id`, `moment` (redemption, refund or ring), the order, "
        "`held_fen` (the payable held, 0 when flagged only), `merchant_suspended`, "
        "`person_id` and the acquirer's `signals`."
    )
    reasons: list[FiredOut]
    decided_by: str | None
    decided_at: str | None
    decision_reason: str | None
    outcome: str | None = Field(
        description="What the decision led to. A claim's approval: `issued` "
        "(`outcome_detail.voucher_id`) or the code it was refused with (sold_out, "
        "already_claimed...). A redemption's: `released`, `not_held` (approved), "
        "`clawed_back` (rejected; `outcome_detail.amount_fen`), `nothing_to_claw_back` "
        "(refunded or reversed before), `released_already`, `clawed_back_already`. Null "
        "until known."
    )
    outcome_detail: dict[str, Any] | None


class ReviewListOut(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None


class ReviewDecisionIn(_In):
    reason: Reason


class RiskBlacklistIn(_In):
    kind: Literal["device", "phone"]
    value: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            pattern=NO_CONTROL,
            description="A device id as channels send it, or a phone number.",
        ),
    ]
    reason: Reason


class RiskBlacklistEntryOut(BaseModel):
    kind: str
    value: str = Field(description="The device id; for a phone, its blind index's first 16.")
    reason: str
    created_by: str
    created_at: str


class RiskBlacklistListOut(BaseModel):
    items: list[RiskBlacklistEntryOut]
    next_cursor: str | None


class SkuPriceOut(BaseModel):
    sku: str
    baseline_price_fen: int
    updated_by: str
    updated_at: str


class SkuPriceListOut(BaseModel):
    items: list[SkuPriceOut]
    next_cursor: str | None


class SkuImportOut(BaseModel):
    imported: int = Field(description="The SKUs whose baseline price the file set.")
