"""Trade-in subsidies (以旧换新): the national categories, the product a subsidy is
paid on, and the arithmetic and refusals of one subsidy.

A trade-in voucher is a person's qualification for one category (one
refrigerator; up to three air conditioners) with a rate and a cap. It is
spent on one product, described by the acquirer at redemption: category,
brand, model, SKU, energy grade, final price, serial number and/or IMEI,
invoice number, and whether an old appliance was handed in. The subsidy is
the template's rate of the product's price, rounded down to the fen, never
above the cap nor the price.

The categories are a closed set: the 2024 national list of appliances (eight,
then twelve in 2025) with grades, and the digital products of the 2025 rules
(phone, tablet, watch) without. An acquirer naming anything else is refused
as bad input.

Identifiers are compared normalised, so that ``sn 12-ab`` and ``SN12AB`` are
one serial number: a serial or invoice number keeps its letters and digits
only, upper-cased; an IMEI its 15 digits, whose last is a Luhn check digit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from lequan.domain.errors import Conflict, InvalidInput

__all__ = [
    "APPLIANCES",
    "DIGITAL",
    "ENERGY_GRADES",
    "ITEMS_PER_PERSON_MAX",
    "PRICE_FEN_MAX",
    "Category",
    "Product",
    "luhn_valid",
    "normalise_imei",
    "normalise_invoice_number",
    "normalise_serial_number",
    "subsidy_for",
]


class Category(enum.StrEnum):
    """A product category of the national trade-in programme."""

    # 2024: the eight appliance categories of the national list.
    REFRIGERATOR = "refrigerator"
    WASHING_MACHINE = "washing_machine"
    TV = "tv"
    AIR_CONDITIONER = "air_conditioner"
    COMPUTER = "computer"
    WATER_HEATER = "water_heater"
    COOKER = "cooker"
    RANGE_HOOD = "range_hood"
    # 2025: four more appliance categories.
    WATER_PURIFIER = "water_purifier"
    DISHWASHER = "dishwasher"
    RICE_COOKER = "rice_cooker"
    MICROWAVE = "microwave"
    # 2025: digital products (no energy grade; price at most 6,000 yuan).
    PHONE = "phone"
    TABLET = "tablet"
    WATCH = "watch"


DIGITAL: Final = frozenset({Category.PHONE, Category.TABLET, Category.WATCH})
# Appliances carry an energy (or water) efficiency grade, 1 the best; the subsidy
# depends on it.
APPLIANCES: Final = frozenset(Category) - DIGITAL
ENERGY_GRADES: Final = range(1, 6)
# Items one person may have subsidised per category nationwide: one, but up to
# three air conditioners (2024 national rules).
ITEMS_PER_PERSON_MAX: Final[Mapping[Category, int]] = {
    c: 3 if c is Category.AIR_CONDITIONER else 1 for c in Category
}
# The dearest product we take: 1,000,000 yuan. A household product above it is a
# typo or an attack, whatever the order amount.
PRICE_FEN_MAX: Final = 100_000_000
# Normalised identifiers: serial numbers 4 to 40 letters and digits (manufacturers'
# are 8 to 30), invoice numbers 6 to 40 (China's are 8 or 20 digits).
SERIAL_NUMBER_CHARS: Final = range(4, 41)
INVOICE_NUMBER_CHARS: Final = range(6, 41)
# What may separate the groups of an identifier as written on a label or invoice.
_SEPARATORS: Final = frozenset(" -/._")


def _letters_and_digits(text: str, what: str, chars: range) -> str:
    """``text`` upper-cased without its separators; ValueError when it holds anything
    else or is too short or long. ASCII only: a full-width digit is refused, not read."""
    kept = []
    for ch in text:
        if ch in _SEPARATORS:
            continue
        if not (ch.isascii() and ch.isalnum()):
            raise ValueError(f"{what} holds letters, digits and the separators ' -/._' only")
        kept.append(ch.upper())
    normalised = "".join(kept)
    if len(normalised) not in chars:
        raise ValueError(
            f"{what} has {chars.start} to {chars.stop - 1} letters and digits "
            f"(separators not counted)"
        )
    return normalised


def normalise_serial_number(text: str) -> str:
    """A serial number as the registry compares it: letters and digits, upper-case."""
    return _letters_and_digits(text, "a serial number", SERIAL_NUMBER_CHARS)


def normalise_invoice_number(text: str) -> str:
    """An invoice number as the registry compares it: letters and digits, upper-case."""
    return _letters_and_digits(text, "an invoice number", INVOICE_NUMBER_CHARS)


def luhn_valid(digits: str) -> bool:
    """Whether the last digit of ``digits`` is their Luhn check digit (ISO/IEC 7812);
    False for anything but ASCII digits."""
    if not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for position, ch in enumerate(reversed(digits)):
        value = int(ch)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def normalise_imei(text: str) -> str:
    """An IMEI as the registry compares it: 15 digits with a valid check digit, the
    separators some labels print between groups taken out."""
    digits = "".join(ch for ch in text if ch not in _SEPARATORS)
    if len(digits) != 15 or not (digits.isascii() and digits.isdigit()):
        raise ValueError("an IMEI is 15 digits")
    if not luhn_valid(digits):
        raise ValueError("the IMEI's check digit (its 15th, Luhn) is wrong")
    return digits


@dataclass(frozen=True, slots=True)
class Product:
    """The product a redemption pays for, as the acquirer described it; identifiers
    already normalised (``normalise_*``: the HTTP schema applies them)."""

    category: Category
    brand: str | None = None
    model: str | None = None
    sku: str | None = None
    energy_grade: int | None = None
    price_fen: int | None = None
    serial_number: str | None = None
    imei: str | None = None
    invoice_number: str | None = None
    old_appliance_handed_in: bool | None = None

    def __post_init__(self) -> None:
        assert self.energy_grade is None or self.energy_grade in ENERGY_GRADES
        assert self.price_fen is None or 0 < self.price_fen <= PRICE_FEN_MAX

    def payload(self) -> dict[str, Any]:
        """The product as JSON: kept with the redemption and sent in its events."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _missing(field: str, rule: str) -> InvalidInput:
    """A trade-in product without a field the subsidy needs, shaped as the schema's 422."""
    return InvalidInput(
        "invalid_request",
        f"product.{field}: {rule}",
        details={"errors": [{"field": f"product.{field}", "rule": rule}]},
    )


def check_complete(product: Product) -> None:
    """What every trade-in product must carry, whatever its template: the price the
    subsidy is a share of, an identifier the registry holds it by (a phone's IMEI),
    and the invoice that names the buyer."""
    if product.price_fen is None:
        raise _missing("price_fen", "a trade-in product needs its final price")
    if product.category is Category.PHONE and product.imei is None:
        raise _missing("imei", "a phone is subsidised by its IMEI")
    if product.serial_number is None and product.imei is None:
        raise _missing("serial_number", "a trade-in product needs serial_number or imei")
    if product.invoice_number is None:
        raise _missing("invoice_number", "a trade-in product needs its invoice number")
    if product.serial_number is not None and product.serial_number == product.imei:
        raise InvalidInput(
            "serial_reused_in_request",
            "the product gives one identifier as both serial_number and imei: "
            "send an IMEI once, as imei",
            details={"field": "product.serial_number"},
        )


def subsidy_for(
    *,
    category: Category,
    rates_bp: Mapping[int, int] | None,
    rate_bp: int | None,
    cap_fen: int,
    price_max_fen: int | None,
    product: Product | None,
    order_amount_fen: int,
) -> int:
    """The subsidy of one trade-in voucher on ``product``, or the refusal saying why not.

    ``rates_bp`` (by energy grade; a grade it does not name is not subsidised)
    or ``rate_bp`` (one rate, for categories without grades) in basis points;
    ``price_max_fen`` the dearest product subsidised at all. Checked in the
    order a cashier would explain: no product, an incomplete one, another
    category, the grade, the price limit. The subsidy is
    ``price × rate / 10,000`` rounded down to the fen, at most ``cap_fen``;
    the product is part of the order, so it is never above the order either.
    """
    assert (rates_bp is None) != (rate_bp is None), "a template has one form of rate"
    assert order_amount_fen > 0, order_amount_fen
    if product is None:
        raise InvalidInput(
            "product_required",
            f"a {category.value} trade-in voucher is redeemed with the product's details",
        )
    check_complete(product)
    assert product.price_fen is not None
    if product.category is not category:
        raise Conflict(
            "product_category_mismatch",
            f"a {category.value} voucher cannot subsidise a {product.category.value}",
            details={
                "voucher_category": category.value,
                "product_category": product.category.value,
            },
        )
    if product.price_fen > order_amount_fen:
        raise _missing("price_fen", "the product's price must not exceed order_amount_fen")
    if rates_bp is not None:
        if product.energy_grade is None:
            raise InvalidInput(
                "energy_grade_required",
                f"a {category.value} is subsidised by its energy grade: give energy_grade",
            )
        rate = rates_bp.get(product.energy_grade)
        if rate is None:
            graded = ", ".join(str(g) for g in sorted(rates_bp))
            raise Conflict(
                "energy_grade_not_subsidised",
                f"energy grade {product.energy_grade} is not subsidised (grades {graded} are)",
                details={"energy_grade": product.energy_grade, "subsidised": sorted(rates_bp)},
            )
    else:
        assert rate_bp is not None
        rate = rate_bp
    if price_max_fen is not None and product.price_fen > price_max_fen:
        raise Conflict(
            "price_above_category_limit",
            f"a {category.value} priced above {price_max_fen} fen is not subsidised",
            details={"price_fen": product.price_fen, "price_max_fen": price_max_fen},
        )
    subsidy = min(product.price_fen * rate // 10_000, cap_fen)
    if subsidy <= 0:
        raise Conflict("below_threshold", "the price is too small for a subsidy of at least 1 fen")
    assert subsidy <= product.price_fen <= order_amount_fen
    return subsidy
