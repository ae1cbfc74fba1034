"""Trade-in rules: the national categories, the product's identifiers, and one subsidy's
arithmetic and refusals, each edge on the real 2024–2025 rates (15% at grade 2, 20% at
grade 1, at most 2,000 yuan; digital 15% of at most 6,000 yuan, at most 500 yuan)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from lequan.domain.errors import Conflict, InvalidInput, LequanError
from lequan.domain.templates import Template, TradeIn
from lequan.domain.trade_in import (
    APPLIANCES,
    DIGITAL,
    ITEMS_PER_PERSON_MAX,
    PRICE_FEN_MAX,
    Category,
    Product,
    luhn_valid,
    normalise_imei,
    normalise_invoice_number,
    normalise_serial_number,
)

TEMPLATE = TypeAdapter(Template)

FRIDGE = TradeIn(
    id="refrigerator", category=Category.REFRIGERATOR, rates_bp={1: 2000, 2: 1500}, cap_fen=200_000
)
PHONE = TradeIn(
    id="phone", category=Category.PHONE, rate_bp=1500, cap_fen=50_000, price_max_fen=600_000
)
# Wikipedia's worked example of an IMEI and its Luhn check digit.
IMEI = "490154203237518"


def fridge(**changes: Any) -> Product:
    product = Product(
        category=Category.REFRIGERATOR,
        brand="Haier",
        model="BCD-470WGHTDEDW",
        sku="100012345678",
        energy_grade=1,
        price_fen=599_900,
        serial_number="BE0L9K0E6300Q2A",
        invoice_number="24312000000012345678",
        old_appliance_handed_in=True,
    )
    return replace(product, **changes)


def phone(**changes: Any) -> Product:
    product = Product(
        category=Category.PHONE,
        brand="Huawei",
        model="Mate 60",
        price_fen=549_900,
        imei=IMEI,
        invoice_number="24312000000087654321",
    )
    return replace(product, **changes)


def refused(template: TradeIn, product: Product | None, order_fen: int | None = None) -> Any:
    with pytest.raises(LequanError) as error:
        template.subsidy_for(
            product,
            order_amount_fen=order_fen
            or (product.price_fen if product and product.price_fen else 1),
        )
    return error.value


def subsidy(template: TradeIn, product: Product, order_fen: int | None = None) -> int:
    assert product.price_fen is not None
    return template.subsidy_for(product, order_amount_fen=order_fen or product.price_fen)


# -- the categories -------------------------------------------------------------------


def test_the_categories_are_the_national_lists() -> None:
    assert len(Category) == 15
    assert {c.value for c in DIGITAL} == {"phone", "tablet", "watch"}
    assert len(APPLIANCES) == 12
    assert ITEMS_PER_PERSON_MAX[Category.AIR_CONDITIONER] == 3
    assert {n for c, n in ITEMS_PER_PERSON_MAX.items() if c is not Category.AIR_CONDITIONER} == {1}


# -- identifiers ----------------------------------------------------------------------


def _check_digit(body: str) -> int:
    """The Luhn check digit of 14 digits, computed here without the code under test:
    double every other digit from the right of the body, sum the digits of each."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n // 10 + n % 10
    return (10 - total % 10) % 10


@pytest.mark.parametrize("imei", [IMEI, "356938035643809", "000000000000000"])
def test_published_imeis_pass_the_luhn_check(imei: str) -> None:
    assert luhn_valid(imei)
    assert normalise_imei(imei) == imei
    assert int(imei[-1]) == _check_digit(imei[:-1])


@given(st.text(alphabet="0123456789", min_size=14, max_size=14), st.integers(0, 9))
def test_an_imei_is_valid_only_with_its_own_check_digit(body: str, last: int) -> None:
    assert luhn_valid(body + str(last)) == (last == _check_digit(body))


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("490154203237517", "check digit"),  # the last digit off by one
        ("490154203237581", "check digit"),  # two digits swapped
        ("49015420323751", "15 digits"),
        ("4901542032375180", "15 digits"),
        ("49015420323751A", "15 digits"),
        ("４９０１５４２０３２３７５１８", "15 digits"),  # full-width digits are not read
    ],
)
def test_a_wrong_imei_is_refused_with_its_rule(text: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        normalise_imei(text)


def test_an_imei_may_be_written_in_groups() -> None:
    assert normalise_imei("49-015420-323751-8") == IMEI
    assert normalise_imei("49 015420 323751 8") == IMEI


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("sn 12-ab", "SN12AB"),
        ("SN12AB", "SN12AB"),
        ("  c02x/l0.g_h ", "C02XL0GH"),
        ("ABCD", "ABCD"),
        ("A" * 40, "A" * 40),
    ],
)
def test_a_serial_number_is_compared_by_its_letters_and_digits(text: str, normalised: str) -> None:
    assert normalise_serial_number(text) == normalised


@pytest.mark.parametrize(
    "text", ["ABC", "A-B-C", "A" * 41, "SN12#AB", "序列号1234", "ＳＮ１２３４"]
)
def test_a_serial_number_outside_its_charset_or_length_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="serial number"):
        normalise_serial_number(text)


def test_an_invoice_number_is_normalised_and_bounded() -> None:
    assert normalise_invoice_number("2431 2000 0000 1234 5678") == "24312000000012345678"
    assert normalise_invoice_number("no-12345") == "NO12345"
    for bad in ["12345", "1" * 41, "发票12345678"]:
        with pytest.raises(ValueError, match="invoice number"):
            normalise_invoice_number(bad)


# -- the template ---------------------------------------------------------------------


def test_a_trade_in_template_reads_from_a_campaign_file() -> None:
    template = TEMPLATE.validate_python(
        {
            "id": "ac",
            "kind": "trade_in",
            "category": "air_conditioner",
            "rates_bp": {1: 2000, 2: 1500},
            "cap_fen": 200_000,
            "items_per_person": 3,
        }
    )
    assert isinstance(template, TradeIn)
    assert template.face_fen == 200_000  # what a voucher commits of the budget: its cap
    assert template.items_max == 3
    assert FRIDGE.items_max == 1  # the national rule's by default
    assert TEMPLATE.validate_json(template.model_dump_json()) == template


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"category": "refrigerator", "rate_bp": 1500}, "by energy grade"),
        ({"category": "refrigerator", "rates_bp": {2: 1500}, "rate_bp": 1500}, "by energy grade"),
        ({"category": "phone", "rates_bp": {1: 1500}}, "no energy grade"),
        ({"category": "phone"}, "no energy grade"),
        ({"category": "refrigerator", "rates_bp": {}}, "at least 1 item"),
        ({"category": "refrigerator", "rates_bp": {6: 1500}}, "less than or equal to 5"),
        ({"category": "refrigerator", "rates_bp": {0: 1500}}, "greater than or equal to 1"),
        ({"category": "refrigerator", "rates_bp": {1: 10_001}}, "less than or equal to 10000"),
        ({"category": "refrigerator", "rates_bp": {1: 0}}, "greater than 0"),
        ({"category": "fridge", "rates_bp": {1: 1500}}, "refrigerator"),
        ({"category": "refrigerator", "rates_bp": {1: 2000}, "items_per_person": 2}, "allows 1"),
        ({"category": "air_conditioner", "rates_bp": {1: 2000}, "items_per_person": 4}, "3"),
        ({"category": "phone", "rate_bp": 1500, "price_max_fen": 0}, "greater than 0"),
    ],
)
def test_an_impossible_trade_in_template_is_refused(fields: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValidationError, match=rule):
        TEMPLATE.validate_python({"id": "t", "kind": "trade_in", "cap_fen": 200_000, **fields})


# -- the subsidy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grade", "price_fen", "subsidy_fen"),
    [
        (1, 599_900, 119_980),  # 20% of 5,999 yuan
        (2, 599_900, 89_985),  # 15%
        (2, 9_999, 1_499),  # 1,499.85 fen, rounded down
        (1, 1_000_000, 200_000),  # 20% of 10,000 yuan: exactly the cap
        (1, 1_000_001, 200_000),
        (2, 1_333_333, 199_999),  # 15% just under the cap
        (2, 1_333_334, 200_000),
        (2, 5_000_000, 200_000),  # a dear fridge still gets the cap, no more
        (1, 5, 1),  # the smallest subsidy
    ],
)
def test_an_appliance_gets_its_grade_s_rate_rounded_down_and_capped(
    grade: int, price_fen: int, subsidy_fen: int
) -> None:
    assert subsidy(FRIDGE, fridge(energy_grade=grade, price_fen=price_fen)) == subsidy_fen


@pytest.mark.parametrize("grade", [3, 4, 5])
def test_a_grade_the_campaign_does_not_name_is_not_subsidised(grade: int) -> None:
    error = refused(FRIDGE, fridge(energy_grade=grade))
    assert isinstance(error, Conflict)
    assert error.code == "energy_grade_not_subsidised"
    assert error.details == {"energy_grade": grade, "subsidised": [1, 2]}


def test_an_appliance_without_a_grade_is_refused() -> None:
    error = refused(FRIDGE, fridge(energy_grade=None))
    assert (type(error), error.code) == (InvalidInput, "energy_grade_required")


@pytest.mark.parametrize(
    ("price_fen", "subsidy_fen"),
    [
        (549_900, 50_000),  # 15% of 5,499 yuan is 824.85 yuan: capped at 500
        (333_333, 49_999),
        (333_334, 50_000),
        (100_000, 15_000),
        (600_000, 50_000),  # exactly 6,000 yuan: still subsidised
    ],
)
def test_a_digital_product_gets_its_one_rate_up_to_the_price_limit(
    price_fen: int, subsidy_fen: int
) -> None:
    assert subsidy(PHONE, phone(price_fen=price_fen)) == subsidy_fen
    # A grade means nothing to a phone: ignored, not refused.
    assert subsidy(PHONE, phone(price_fen=price_fen, energy_grade=5)) == subsidy_fen


def test_a_phone_above_6000_yuan_is_refused_as_above_its_category_s_limit() -> None:
    error = refused(PHONE, phone(price_fen=600_001))
    assert (type(error), error.code) == (Conflict, "price_above_category_limit")
    assert error.details == {"price_fen": 600_001, "price_max_fen": 600_000}
    assert "fen is needed" not in error.message


def test_a_trade_in_voucher_without_a_product_is_refused() -> None:
    error = refused(FRIDGE, None, order_fen=599_900)
    assert (type(error), error.code) == (InvalidInput, "product_required")


def test_a_refrigerator_voucher_spent_on_a_grade_3_washing_machine_is_a_category_mismatch() -> None:
    washer = fridge(category=Category.WASHING_MACHINE, energy_grade=3)
    error = refused(FRIDGE, washer)
    assert (type(error), error.code) == (Conflict, "product_category_mismatch")
    assert error.details == {
        "voucher_category": "refrigerator",
        "product_category": "washing_machine",
    }


@pytest.mark.parametrize(
    ("product", "field"),
    [
        (fridge(price_fen=None), "product.price_fen"),
        (fridge(serial_number=None), "product.serial_number"),
        (fridge(invoice_number=None), "product.invoice_number"),
        (phone(imei=None, serial_number="F2LXK0ABHG7F"), "product.imei"),
    ],
)
def test_a_trade_in_product_missing_what_the_subsidy_needs_is_bad_input(
    product: Product, field: str
) -> None:
    template = PHONE if product.category is Category.PHONE else FRIDGE
    error = refused(template, product, order_fen=599_900)
    assert (type(error), error.code) == (InvalidInput, "invalid_request")
    assert [e["field"] for e in error.details["errors"]] == [field]


def test_a_serial_number_or_an_imei_is_enough_for_an_appliance() -> None:
    assert subsidy(FRIDGE, fridge(serial_number=None, imei=IMEI)) == 119_980


def test_one_identifier_given_as_serial_and_imei_is_refused() -> None:
    error = refused(PHONE, phone(serial_number=IMEI))
    assert (type(error), error.code) == (InvalidInput, "serial_reused_in_request")


def test_a_product_dearer_than_its_order_is_bad_input() -> None:
    error = refused(FRIDGE, fridge(price_fen=599_900), order_fen=599_899)
    assert error.code == "invalid_request"
    assert [e["field"] for e in error.details["errors"]] == ["product.price_fen"]
    # Part of a bigger order (installation, delivery): the subsidy is on the product.
    assert subsidy(FRIDGE, fridge(price_fen=599_900), order_fen=620_000) == 119_980


def test_a_price_too_small_for_one_fen_of_subsidy_is_below_threshold() -> None:
    error = refused(FRIDGE, fridge(price_fen=4, energy_grade=1))
    assert (type(error), error.code) == (Conflict, "below_threshold")


def test_a_trade_in_template_alone_gives_nothing_without_its_product() -> None:
    assert FRIDGE.discount_for(599_900) == 0
    assert FRIDGE.minimum_order_fen == 1


@st.composite
def trade_in_cases(draw: st.DrawFn) -> tuple[TradeIn, Product, int]:
    category = draw(st.sampled_from(list(Category)))
    cap_fen = draw(st.integers(1, 10_000_000))
    rate = draw(st.integers(1, 10_000))
    grade = draw(st.integers(1, 5))
    price_fen = draw(st.integers(1, PRICE_FEN_MAX))
    if category in DIGITAL:
        template = TradeIn(id="t", category=category, rate_bp=rate, cap_fen=cap_fen)
    else:
        template = TradeIn(id="t", category=category, rates_bp={grade: rate}, cap_fen=cap_fen)
    product = Product(
        category=category,
        energy_grade=grade,
        price_fen=price_fen,
        imei=IMEI,
        invoice_number="24312000000012345678",
    )
    order_fen = price_fen + draw(st.integers(0, 1_000_000))
    return template, product, order_fen


@given(trade_in_cases())
def test_a_subsidy_is_never_above_its_cap_its_rate_or_the_price(
    case: tuple[TradeIn, Product, int],
) -> None:
    template, product, order_fen = case
    assert product.price_fen is not None
    rate = template.rate_bp or next(iter((template.rates_bp or {}).values()))
    if product.price_fen * rate < 10_000:  # not even 1 fen
        with pytest.raises(Conflict, match="at least 1 fen"):
            template.subsidy_for(product, order_amount_fen=order_fen)
        return
    given_fen = template.subsidy_for(product, order_amount_fen=order_fen)
    assert 0 < given_fen <= template.cap_fen
    assert given_fen <= product.price_fen <= order_fen
    assert given_fen * 10_000 <= product.price_fen * rate
    # Rounded down, never more: one fen more would be above the rate or the cap.
    assert given_fen == template.cap_fen or (given_fen + 1) * 10_000 > product.price_fen * rate


def test_a_product_s_payload_leaves_out_what_was_not_given() -> None:
    assert phone().payload() == {
        "category": "phone",
        "brand": "Huawei",
        "model": "Mate 60",
        "price_fen": 549_900,
        "imei": IMEI,
        "invoice_number": "24312000000087654321",
    }
