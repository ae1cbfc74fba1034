"""Voucher templates and their discount arithmetic, in integer fen.

A template is what a voucher is worth: a threshold discount (满减: spend
300 get 90 off), a percentage with a cap (15% of the order, at most 2,000
yuan), a fixed amount with no threshold, or a trade-in subsidy (以旧换新: a
share of one product's price by its category and energy grade, capped;
the rules in ``domain/trade_in.py``). Whatever the kind, the
discount never exceeds the order, so the amount to pay is never negative.

Templates are validated models so that a campaign file naming an impossible
template (a discount above its threshold, a zero cap) is refused with the
field and the rule it breaks.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lequan.domain.trade_in import (
    APPLIANCES,
    DIGITAL,
    ENERGY_GRADES,
    ITEMS_PER_PERSON_MAX,
    Category,
    Product,
    subsidy_for,
)

__all__ = [
    "AMOUNT_FEN_MAX",
    "FixedAmount",
    "Percentage",
    "Template",
    "TemplateId",
    "ThresholdDiscount",
    "TradeIn",
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


BasisPoints = Annotated[int, Field(gt=0, le=10_000, strict=True)]
EnergyGrade = Annotated[int, Field(ge=ENERGY_GRADES.start, le=ENERGY_GRADES.stop - 1, strict=True)]


class TradeIn(_Template):
    """以旧换新: a share of one product's price, by its energy grade, at most ``cap_fen``.

    Appliances are subsidised by grade (``rates_bp``: ``{1: 2000, 2: 1500}``
    is 20% for grade 1, 15% for grade 2; a grade not named gets nothing);
    digital products, which have no grade, at one rate (``rate_bp``), only
    when priced at most ``price_max_fen``. A voucher's face value, what it
    commits of the budget, is its cap. ``items_per_person`` is how many of
    the category one person may have subsidised nationwide (the central
    platform's qualification), at most the national rule's (three air
    conditioners, one of anything else); by default the national rule's.
    """

    kind: Literal["trade_in"] = "trade_in"
    category: Category
    rates_bp: Annotated[dict[EnergyGrade, BasisPoints], Field(min_length=1)] | None = None
    rate_bp: BasisPoints | None = None
    cap_fen: PositiveFen
    price_max_fen: PositiveFen | None = None
    items_per_person: Annotated[int, Field(ge=1, le=3, strict=True)] | None = None

    @field_validator("rates_bp", mode="before")
    @classmethod
    def _grades_as_json_writes_them(cls, value: object) -> object:
        """A JSON object's keys are strings: ``{"1": 2000}`` is the grade map as JSON
        (and the admin API) writes it, the same as YAML's ``{1: 2000}``."""
        if isinstance(value, dict):
            return {
                int(k)
                if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) == 1
                else k: v
                for k, v in value.items()
            }
        return value

    @model_validator(mode="after")
    def _rates_fit_the_category(self) -> Self:
        if self.category in APPLIANCES and (self.rates_bp is None or self.rate_bp is not None):
            raise ValueError(
                f"a {self.category.value} is subsidised by energy grade: give rates_bp "
                "(e.g. {1: 2000, 2: 1500}), not rate_bp"
            )
        if self.category in DIGITAL and (self.rate_bp is None or self.rates_bp is not None):
            raise ValueError(
                f"a {self.category.value} has no energy grade: give rate_bp, not rates_bp"
            )
        national = ITEMS_PER_PERSON_MAX[self.category]
        if self.items_per_person is not None and self.items_per_person > national:
            raise ValueError(
                f"items_per_person: the national rule allows {national} {self.category.value} "
                "per person"
            )
        return self

    @property
    def face_fen(self) -> int:
        return self.cap_fen

    @property
    def minimum_order_fen(self) -> int:
        return 1

    @property
    def items_max(self) -> int:
        """How many of the category one person may have subsidised nationwide."""
        return self.items_per_person or ITEMS_PER_PERSON_MAX[self.category]

    def discount_for(self, order_fen: int) -> int:
        """Nothing without a product: a trade-in voucher is spent by ``subsidy_for``."""
        assert 0 <= order_fen <= AMOUNT_FEN_MAX, order_fen
        return 0

    def subsidy_for(self, product: Product | None, *, order_amount_fen: int) -> int:
        """The subsidy on ``product`` within an order of ``order_amount_fen``, or the
        refusal saying why not (``trade_in.subsidy_for``)."""
        return subsidy_for(
            category=self.category,
            rates_bp=self.rates_bp,
            rate_bp=self.rate_bp,
            cap_fen=self.cap_fen,
            price_max_fen=self.price_max_fen,
            product=product,
            order_amount_fen=order_amount_fen,
        )


Template = Annotated[
    ThresholdDiscount | Percentage | FixedAmount | TradeIn, Field(discriminator="kind")
]
