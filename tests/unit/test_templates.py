"""Template arithmetic on the real campaign tables, its bounds, and the templates refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from lequan.domain.templates import (
    AMOUNT_FEN_MAX,
    FixedAmount,
    Percentage,
    Template,
    ThresholdDiscount,
)
from lequan.services.campaigns import parse_campaign

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TEMPLATE = TypeAdapter(Template)


def _threshold(threshold_yuan: int, discount_yuan: int) -> ThresholdDiscount:
    return ThresholdDiscount(
        id=f"t{threshold_yuan}-{discount_yuan}",
        threshold_fen=threshold_yuan * 100,
        discount_fen=discount_yuan * 100,
    )


# Trade-in: 15% for energy grade 2, 20% for grade 1, at most 2,000 yuan per item.
APPLIANCE_GRADE_2 = Percentage(id="appliance-g2", basis_points=1500, cap_fen=200_000)
APPLIANCE_GRADE_1 = Percentage(id="appliance-g1", basis_points=2000, cap_fen=200_000)
# Digital products priced at most 6,000 yuan: 15%, at most 500 yuan.
DIGITAL = Percentage(id="digital", basis_points=1500, cap_fen=50_000, price_max_fen=600_000)


# Dining 2024: 300/90, 500/150, 800/240, 1000/300


def test_dining_example_has_the_2024_table() -> None:
    config = parse_campaign((EXAMPLES / "shanghai-dining-2024.yaml").read_bytes())
    table = [(t.minimum_order_fen, t.face_fen) for t in config.templates]
    assert table == [(30_000, 9_000), (50_000, 15_000), (80_000, 24_000), (100_000, 30_000)]
    assert all(isinstance(t, ThresholdDiscount) for t in config.templates)


@pytest.mark.parametrize(
    ("threshold_yuan", "discount_yuan", "order_fen", "discount_fen"),
    [
        (300, 90, 0, 0),
        (300, 90, 29_999, 0),
        (300, 90, 30_000, 9_000),
        (300, 90, 49_999, 9_000),
        (300, 90, 1_000_000, 9_000),  # a bigger bill still gets the face, no more
        (500, 150, 49_999, 0),
        (500, 150, 50_000, 15_000),
        (800, 240, 79_999, 0),
        (800, 240, 80_000, 24_000),
        (1000, 300, 99_999, 0),
        (1000, 300, 100_000, 30_000),
        (1000, 300, AMOUNT_FEN_MAX, 30_000),
    ],
)
def test_dining_voucher_gives_its_discount_from_the_threshold_on(
    threshold_yuan: int, discount_yuan: int, order_fen: int, discount_fen: int
) -> None:
    assert _threshold(threshold_yuan, discount_yuan).discount_for(order_fen) == discount_fen


# Lodging: 300/90, 600/180, 900/270, 1200/360, online and in-store kept apart


def test_lodging_example_has_the_table_once_per_mode() -> None:
    config = parse_campaign((EXAMPLES / "shanghai-lodging-2024.yaml").read_bytes())
    table = [(30_000, 9_000), (60_000, 18_000), (90_000, 27_000), (120_000, 36_000)]
    for mode in ("online", "in_store"):
        mine = [t for t in config.templates if t.modes == (mode,)]
        assert [(t.minimum_order_fen, t.face_fen) for t in mine] == table


@pytest.mark.parametrize(
    ("threshold_yuan", "discount_yuan"), [(300, 90), (600, 180), (900, 270), (1200, 360)]
)
def test_lodging_voucher_takes_30_percent_of_its_threshold(
    threshold_yuan: int, discount_yuan: int
) -> None:
    template = _threshold(threshold_yuan, discount_yuan)
    assert template.discount_for(threshold_yuan * 100 - 1) == 0
    assert template.discount_for(threshold_yuan * 100) == discount_yuan * 100


# Sightseeing: 30/15, 50/25, 100/50, 150/75


@pytest.mark.parametrize(
    ("threshold_yuan", "discount_yuan"), [(30, 15), (50, 25), (100, 50), (150, 75)]
)
def test_sightseeing_voucher_halves_an_order_at_its_threshold(
    threshold_yuan: int, discount_yuan: int
) -> None:
    template = _threshold(threshold_yuan, discount_yuan)
    assert template.discount_for(threshold_yuan * 100 - 1) == 0
    assert template.discount_for(threshold_yuan * 100) == discount_yuan * 100
    assert template.discount_for(threshold_yuan * 100) * 2 == threshold_yuan * 100


# Trade-in percentages


@pytest.mark.parametrize(
    ("template", "price_fen", "subsidy_fen"),
    [
        (APPLIANCE_GRADE_2, 1_000_000, 150_000),  # 10,000 yuan fridge: 1,500 yuan
        (APPLIANCE_GRADE_2, 1_333_333, 199_999),  # just under the cap, rounded down
        (APPLIANCE_GRADE_2, 1_333_334, 200_000),  # reaches the cap
        (APPLIANCE_GRADE_2, 2_000_000, 200_000),  # capped at 2,000 yuan
        (APPLIANCE_GRADE_2, AMOUNT_FEN_MAX, 200_000),
        (APPLIANCE_GRADE_2, 333, 49),  # 49.95 fen rounds down to 49
        (APPLIANCE_GRADE_2, 6, 0),  # 0.9 fen rounds down to nothing
        (APPLIANCE_GRADE_2, 0, 0),
        (APPLIANCE_GRADE_1, 500_000, 100_000),  # grade 1: 20%
        (APPLIANCE_GRADE_1, 1_000_000, 200_000),
        (APPLIANCE_GRADE_1, 1_500_000, 200_000),
        (DIGITAL, 300_000, 45_000),  # 3,000 yuan phone: 450 yuan
        (DIGITAL, 333_333, 49_999),
        (DIGITAL, 400_000, 50_000),  # capped at 500 yuan
        (DIGITAL, 600_000, 50_000),  # exactly 6,000 yuan still qualifies
        (DIGITAL, 600_001, 0),  # a fen above 6,000 yuan gets nothing
        (DIGITAL, 1_000_000, 0),
    ],
    ids=lambda v: v.id if isinstance(v, Percentage) else str(v),
)
def test_trade_in_subsidy_is_a_rounded_down_capped_percentage(
    template: Percentage, price_fen: int, subsidy_fen: int
) -> None:
    assert template.discount_for(price_fen) == subsidy_fen


def test_trade_in_face_is_the_cap() -> None:
    assert APPLIANCE_GRADE_2.face_fen == 200_000
    assert DIGITAL.face_fen == 50_000


def test_percentage_with_a_threshold_gives_nothing_below_it() -> None:
    template = Percentage(id="p", basis_points=1000, cap_fen=10_000, threshold_fen=5_000)
    assert template.discount_for(4_999) == 0
    assert template.discount_for(5_000) == 500
    assert template.minimum_order_fen == 5_000


def test_full_percentage_pays_the_whole_order_up_to_the_cap() -> None:
    template = Percentage(id="all", basis_points=10_000, cap_fen=1_000)
    assert template.discount_for(999) == 999
    assert template.discount_for(5_000) == 1_000


# Fixed amounts


def test_fixed_amount_pays_a_small_order_in_full_and_never_gives_change() -> None:
    template = FixedAmount(id="f", amount_fen=2_000)
    assert template.discount_for(0) == 0
    assert template.discount_for(1_500) == 1_500
    assert template.discount_for(2_000) == 2_000
    assert template.discount_for(9_999) == 2_000
    assert template.minimum_order_fen == 1


# Invariants of every kind, for any order

amounts = st.integers(min_value=1, max_value=AMOUNT_FEN_MAX)
orders = st.integers(min_value=0, max_value=AMOUNT_FEN_MAX)


@st.composite
def threshold_templates(draw: st.DrawFn) -> ThresholdDiscount:
    threshold = draw(amounts)
    discount = draw(st.integers(min_value=1, max_value=threshold))
    return ThresholdDiscount(id="t", threshold_fen=threshold, discount_fen=discount)


@st.composite
def percentage_templates(draw: st.DrawFn) -> Percentage:
    price_max = draw(amounts)
    return Percentage(
        id="p",
        basis_points=draw(st.integers(min_value=1, max_value=10_000)),
        cap_fen=draw(amounts),
        threshold_fen=draw(st.integers(min_value=0, max_value=price_max)),
        price_max_fen=price_max,
    )


fixed_templates = st.builds(FixedAmount, id=st.just("f"), amount_fen=amounts)
any_template = st.one_of(threshold_templates(), percentage_templates(), fixed_templates)


@settings(max_examples=150, deadline=None)
@given(any_template, orders)
def test_discount_is_never_negative_nor_above_the_order_or_the_face(
    template: ThresholdDiscount | Percentage | FixedAmount, order_fen: int
) -> None:
    discount = template.discount_for(order_fen)
    assert 0 <= discount <= min(order_fen, template.face_fen)
    assert order_fen - discount >= 0  # what the person pays


@settings(max_examples=150, deadline=None)
@given(any_template, orders)
def test_an_order_below_the_minimum_gets_nothing(
    template: ThresholdDiscount | Percentage | FixedAmount, order_fen: int
) -> None:
    if order_fen < template.minimum_order_fen:
        assert template.discount_for(order_fen) == 0


@settings(max_examples=100, deadline=None)
@given(st.one_of(threshold_templates(), fixed_templates), orders, orders)
def test_threshold_and_fixed_discounts_never_fall_as_the_order_grows(
    template: ThresholdDiscount | FixedAmount, a: int, b: int
) -> None:
    low, high = sorted((a, b))
    assert template.discount_for(low) <= template.discount_for(high)


@settings(max_examples=100, deadline=None)
@given(percentage_templates(), st.data())
def test_percentage_discount_never_falls_as_the_price_grows_up_to_price_max(
    template: Percentage, data: st.DataObject
) -> None:
    prices = st.integers(min_value=0, max_value=template.price_max_fen)
    low, high = sorted((data.draw(prices), data.draw(prices)))
    assert template.discount_for(low) <= template.discount_for(high)


@settings(max_examples=100, deadline=None)
@given(percentage_templates(), orders)
def test_percentage_never_exceeds_its_rate(template: Percentage, order_fen: int) -> None:
    assert template.discount_for(order_fen) * 10_000 <= order_fen * template.basis_points


def test_order_outside_the_amount_range_is_a_programmer_error() -> None:
    template = _threshold(300, 90)
    with pytest.raises(AssertionError):
        template.discount_for(-1)
    with pytest.raises(AssertionError):
        template.discount_for(AMOUNT_FEN_MAX + 1)


# Templates refused by validation

VALID_THRESHOLD: dict[str, Any] = {
    "id": "d300-90",
    "kind": "threshold",
    "threshold_fen": 30_000,
    "discount_fen": 9_000,
}
VALID_PERCENTAGE: dict[str, Any] = {
    "id": "digital",
    "kind": "percentage",
    "basis_points": 1_500,
    "cap_fen": 50_000,
    "price_max_fen": 600_000,
}
VALID_FIXED: dict[str, Any] = {"id": "f20", "kind": "fixed", "amount_fen": 2_000}


@pytest.mark.parametrize("data", [VALID_THRESHOLD, VALID_PERCENTAGE, VALID_FIXED])
def test_valid_template_of_each_kind_is_accepted(data: dict[str, Any]) -> None:
    template = TEMPLATE.validate_python(data)
    assert template.kind == data["kind"]


@pytest.mark.parametrize(
    ("base", "change", "field", "rule_part"),
    [
        (VALID_THRESHOLD, {"discount_fen": 30_001}, "", "discount_fen must not exceed"),
        (VALID_THRESHOLD, {"discount_fen": 0}, "discount_fen", "greater than 0"),
        (VALID_THRESHOLD, {"discount_fen": -9_000}, "discount_fen", "greater than 0"),
        (VALID_THRESHOLD, {"threshold_fen": 0}, "threshold_fen", "greater than 0"),
        (VALID_THRESHOLD, {"threshold_fen": AMOUNT_FEN_MAX + 1}, "threshold_fen", "less than"),
        (VALID_THRESHOLD, {"discount_fen": 90.5}, "discount_fen", "integer"),
        (VALID_THRESHOLD, {"id": "D300"}, "id", "pattern"),
        (VALID_THRESHOLD, {"id": "-d300"}, "id", "pattern"),
        (VALID_THRESHOLD, {"id": ""}, "id", "pattern"),
        (VALID_THRESHOLD, {"id": "d" * 41}, "id", "pattern"),
        (VALID_THRESHOLD, {"id": "d300 90"}, "id", "pattern"),
        (VALID_THRESHOLD, {"modes": ["counter"]}, "modes", "online"),
        (VALID_THRESHOLD, {"threshold": 30_000}, "threshold", "Extra inputs"),
        (VALID_PERCENTAGE, {"basis_points": 10_001}, "basis_points", "less than or equal"),
        (VALID_PERCENTAGE, {"basis_points": 0}, "basis_points", "greater than 0"),
        (VALID_PERCENTAGE, {"cap_fen": 0}, "cap_fen", "greater than 0"),
        (VALID_PERCENTAGE, {"cap_fen": -1}, "cap_fen", "greater than 0"),
        (VALID_PERCENTAGE, {"threshold_fen": -1}, "threshold_fen", "greater than or equal"),
        (VALID_PERCENTAGE, {"threshold_fen": 600_001}, "", "threshold_fen must not exceed"),
        (VALID_PERCENTAGE, {"price_max_fen": 0}, "price_max_fen", "greater than 0"),
        (VALID_PERCENTAGE, {"discount_fen": 1}, "discount_fen", "Extra inputs"),
        (VALID_FIXED, {"amount_fen": 0}, "amount_fen", "greater than 0"),
        (VALID_FIXED, {"amount_fen": AMOUNT_FEN_MAX + 1}, "amount_fen", "less than"),
        (VALID_FIXED, {"threshold_fen": 1}, "threshold_fen", "Extra inputs"),
        (VALID_FIXED, {"kind": "lottery"}, "", "does not match any of the expected tags"),
    ],
)
def test_impossible_template_is_refused_naming_field_and_rule(
    base: dict[str, Any], change: dict[str, Any], field: str, rule_part: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        TEMPLATE.validate_python({**base, **change})
    # The first element of a location is the kind's tag; the field (if any) follows it.
    problems = [(e["loc"][1:2], e["msg"]) for e in refused.value.errors()]
    expected_loc = (field,) if field else ()
    assert any(loc == expected_loc and rule_part in msg for loc, msg in problems), problems


def test_template_without_a_kind_is_refused() -> None:
    data = {k: v for k, v in VALID_THRESHOLD.items() if k != "kind"}
    with pytest.raises(ValidationError) as refused:
        TEMPLATE.validate_python(data)
    assert "kind" in str(refused.value)


@pytest.mark.parametrize(
    "data",
    [
        {**VALID_FIXED, "amount_fen": True},
        {**VALID_THRESHOLD, "threshold_fen": True, "discount_fen": True},
        {**VALID_PERCENTAGE, "cap_fen": True},
    ],
    ids=["fixed", "threshold", "percentage"],
)
def test_amount_given_as_a_boolean_is_refused_not_read_as_one_fen(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TEMPLATE.validate_python(data)


def test_templates_are_immutable() -> None:
    template = _threshold(300, 90)
    with pytest.raises(ValidationError):
        template.discount_fen = 30_000  # type: ignore[misc]
