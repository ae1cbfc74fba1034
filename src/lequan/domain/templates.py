"""Voucher templates and their discount arithmetic, in integer fen.

A template is what a voucher is worth: a threshold discount (满减: spend
300 get 90 off), a percentage with a cap (trade-in: 15% of the price, at most
2,000 yuan) or a fixed amount with no threshold. Whatever the kind, the
discount never exceeds the order, so the amount to pay is never negative.

Templates are validated models so that a campaign file naming an impossible
template (a discount above its threshold, a zero cap) is refused with the
field and the rule it breaks.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AMOUNT_FEN_MAX",
    "FixedAmount",
    "Percentage",
    "Template",
    "TemplateId",
    "ThresholdDiscount",
]

# The largest order or face value we accept: 100 million yuan. Anything above
# is a typo or an attack, and keeping sums far below 2**63 keeps SQL integers safe.
AMOUNT_FEN_MAX = 10_000_000_000

TemplateId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
# Strict: a YAML "yes" must not become an amount of 1 fen.
Fen = Annotated[int, Field(ge=0, le=AMOUNT_FEN_MAX, strict=True)]
PositiveFen = Annotated[int, Field(gt=0, le=AMOUNT_FEN_MAX, strict=True)]


class _Template(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: TemplateId
    # Online booking and in-store counters are different merchant sets; a
    # template may be limited to one of them (None: whatever the campaign allows).
    modes: tuple[Literal["online", "in_store"], ...] | None = None


class ThresholdDiscount(_Template):
    """满减: an order of at least ``threshold_fen`` gets ``discount_fen`` off."""

    kind: Literal["threshold"] = "threshold"
    threshold_fen: PositiveFen
    discount_fen: PositiveFen

    @model_validator(mode="after")
    def _discount_within_threshold(self) -> Self:
        if self.discount_fen > self.threshold_fen:
            raise ValueError("discount_fen must not exceed threshold_fen")
        return self

    @property
    def face_fen(self) -> int:
        """The most one voucher can cost the budget."""
        return self.discount_fen

    @property
    def minimum_order_fen(self) -> int:
        return self.threshold_fen

    def discount_for(self, order_fen: int) -> int:
        """The discount on an order of ``order_fen``; 0 below the threshold."""
        assert 0 <= order_fen <= AMOUNT_FEN_MAX, order_fen
        return self.discount_fen if order_fen >= self.threshold_fen else 0


class Percentage(_Template):
    """Trade-in style: ``basis_points``/10,000 of the order, at most ``cap_fen``.

    Rounding is down to the fen, so the subsidy never exceeds the rule; orders
    below ``threshold_fen`` or above ``price_max_fen`` get nothing (digital
    products: only those priced at most 6,000 yuan qualify).
    """

    kind: Literal["percentage"] = "percentage"
    basis_points: Annotated[int, Field(gt=0, le=10_000, strict=True)]
    cap_fen: PositiveFen
    threshold_fen: Fen = 0
    price_max_fen: PositiveFen = AMOUNT_FEN_MAX

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Self:
        if self.threshold_fen > self.price_max_fen:
            raise ValueError("threshold_fen must not exceed price_max_fen")
        return self

    @property
    def face_fen(self) -> int:
        return self.cap_fen

    @property
    def minimum_order_fen(self) -> int:
        return max(self.threshold_fen, 1)

    def discount_for(self, order_fen: int) -> int:
        assert 0 <= order_fen <= AMOUNT_FEN_MAX, order_fen
        if order_fen < self.threshold_fen or order_fen > self.price_max_fen:
            return 0
        return min(order_fen * self.basis_points // 10_000, self.cap_fen, order_fen)


class FixedAmount(_Template):
    """A fixed amount off any order; a smaller order is paid in full by it."""

    kind: Literal["fixed"] = "fixed"
    amount_fen: PositiveFen

    @property
    def face_fen(self) -> int:
        return self.amount_fen

    @property
    def minimum_order_fen(self) -> int:
        return 1

    def discount_for(self, order_fen: int) -> int:
        assert 0 <= order_fen <= AMOUNT_FEN_MAX, order_fen
        return min(self.amount_fen, order_fen)


Template = Annotated[ThresholdDiscount | Percentage | FixedAmount, Field(discriminator="kind")]
