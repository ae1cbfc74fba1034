"""The redemption-time risk rules (``domain/redemption_risk.py``): each rule's edges —
below, at and above its threshold, and its features unknown — the strictest action
winning, the ring's graph, and the ``redemption:`` section of the rules file checked
field by field."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lequan.config import Settings
from lequan.domain.errors import InvalidInput
from lequan.domain.redemption_risk import (
    BusinessHours,
    CompiledRedemptionRules,
    RedemptionFeatures,
    RedemptionReason,
    RedemptionRules,
    RefundFeatures,
    Ring,
    RingRule,
    compile_redemption_rules,
    find_rings,
    minute_of_day,
    ring_of,
)
from lequan.services.campaigns import CampaignFileLimits
from lequan.services.risk_rules import parse_rules

LIMITS = CampaignFileLimits.of(Settings.model_construct())
# 12:00 in Shanghai.
NOON = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)
PLAIN = RedemptionFeatures(merchant_id="m-1", campaign_id="c-1", redeemed_at=NOON)


def only(rule: str, **config: Any) -> CompiledRedemptionRules:
    compiled = compile_redemption_rules(RedemptionRules.model_validate({rule: config}))
    assert compiled is not None
    return compiled


def codes(rules: CompiledRedemptionRules, features: RedemptionFeatures) -> list[str]:
    verdict = rules.judge(features)
    return [] if verdict is None else verdict.codes


def test_no_rule_on_compiles_to_nothing() -> None:
    assert compile_redemption_rules(RedemptionRules()) is None


def test_a_redemption_with_nothing_known_fires_no_rule() -> None:
    everything = RedemptionRules.model_validate({name: {} for name in RedemptionRules.model_fields})
    compiled = compile_redemption_rules(everything)
    assert compiled is not None
    assert compiled.judge(PLAIN) is None
    assert (
        compiled.judge_refund(RefundFeatures(merchant_id="m-1", since_redemption_s=10**6)) is None
    )


# -- merchant_rate_spike ----------------------------------------------------------------


def test_rate_spike_edges() -> None:
    rules = only(
        "merchant_rate_spike", baseline_minutes=10, factor=5, floor=20, relative_to_platform=False
    )

    def spike(minute: int | None, baseline: int | None) -> list[str]:
        return codes(
            rules,
            replace(
                PLAIN, merchant_minute_redemptions=minute, merchant_baseline_redemptions=baseline
            ),
        )

    # A baseline of 20 over 10 minutes is 2 a minute: 5 times that is 10, the floor 20.
    assert spike(19, 20) == []
    assert spike(20, 20) == ["merchant_rate_spike"]
    # A baseline of 60 (6 a minute): 30 is 5 times it, 29 is not.
    assert spike(29, 60) == []
    assert spike(30, 60) == ["merchant_rate_spike"]
    # No baseline yet (nothing before, or unknown): never.
    assert spike(10_000, 0) == []
    assert spike(10_000, None) == []
    assert spike(None, 60) == []


def test_rate_spike_against_the_platform() -> None:
    rules = only("merchant_rate_spike", baseline_minutes=10, factor=5, floor=20)

    def spike(everyone: int | None, everyone_before: int | None) -> list[str]:
        return codes(
            rules,
            replace(
                PLAIN,
                merchant_minute_redemptions=100,
                merchant_baseline_redemptions=100,  # 10 a minute: 100 is ten times that
                platform_minute_redemptions=everyone,
                platform_baseline_redemptions=everyone_before,
            ),
        )

    # A release day: the platform is ten times busier too, the merchant's share the same.
    assert spike(10_000, 10_000) == []
    # Its share went from 1 % to 5 %: five times it.
    assert spike(2000, 10_000) == ["merchant_rate_spike"]
    assert spike(2001, 10_000) == []
    # The platform's figures unknown: the rule does not fire.
    assert spike(None, 10_000) == []
    assert spike(2000, None) == []


def test_rate_spike_figures() -> None:
    rules = only("merchant_rate_spike", baseline_minutes=30, factor=3, floor=5)
    verdict = rules.judge(
        replace(
            PLAIN,
            merchant_minute_redemptions=9,
            merchant_baseline_redemptions=30,
            platform_minute_redemptions=10,
            platform_baseline_redemptions=300,
        )
    )
    assert verdict is not None
    (fired,) = verdict.fired
    assert fired.action == "flag"
    assert dict(fired.figures) == {
        "merchant_id": "m-1",
        "minute_redemptions": 9,
        "baseline_redemptions": 30,
        "baseline_minutes": 30,
        "floor": 5,
        "platform_minute_redemptions": 10,
        "platform_baseline_redemptions": 300,
    }


# -- amount_just_over_threshold ---------------------------------------------------------


def test_just_over_edges() -> None:
    rules = only("amount_just_over_threshold", margin_fen=100, redemptions_min=10, share_min_pct=30)

    def judged(over: int | None, total: int | None = 10, just: int | None = 3) -> list[str]:
        return codes(
            rules,
            replace(
                PLAIN,
                over_threshold_fen=over,
                merchant_window_redemptions=total,
                merchant_window_just_over=just,
            ),
        )

    assert judged(1) == ["amount_just_over_threshold"]
    assert judged(100) == ["amount_just_over_threshold"]
    # At the threshold exactly, or more than the margin over it: an ordinary bill.
    assert judged(0) == []
    assert judged(101) == []
    # The merchant's share: 3 of 10 is 30 %, 2 of 10 is not.
    assert judged(50, 10, 2) == []
    # Too few orders to judge a share on.
    assert judged(50, 9, 9) == []
    # Unknown: a template without a threshold, or counts the counters could not give.
    assert judged(None) == []
    assert judged(50, None, 3) == []
    assert judged(50, 10, None) == []


def test_one_order_just_over_alone_never_fires() -> None:
    rules = only("amount_just_over_threshold", redemptions_min=1, share_min_pct=100)
    one = replace(
        PLAIN, over_threshold_fen=1, merchant_window_redemptions=1, merchant_window_just_over=1
    )
    # Its own merchant's only order: the share is 100 %, and redemptions_min 1 allows it.
    assert codes(rules, one) == ["amount_just_over_threshold"]
    # With the default redemptions_min a single order never fires.
    default = only("amount_just_over_threshold")
    assert codes(default, one) == []


# -- payer_many_vouchers ----------------------------------------------------------------


def test_payer_edges() -> None:
    rules = only("payer_many_vouchers", limit=5, window_s=86400)
    assert codes(rules, replace(PLAIN, payer_id="pay-00000001", payer_vouchers=5)) == []
    verdict = rules.judge(replace(PLAIN, payer_id="pay-00000001", payer_vouchers=6))
    assert verdict is not None
    assert verdict.action == "hold"
    assert dict(verdict.fired[0].figures) == {
        "vouchers": 6,
        "limit": 5,
        "window_s": 86400,
        "payer_id": "pay-00000001",
    }
    # No payer token sent: unknown.
    assert codes(rules, replace(PLAIN, payer_vouchers=None)) == []


# -- outside_business_hours -------------------------------------------------------------


def at_cst(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 8, hour, minute, tzinfo=UTC) - timedelta(hours=8)


def test_hours_default_and_edges() -> None:
    rules = only("outside_business_hours")  # 06:00 to 23:00
    assert codes(rules, replace(PLAIN, redeemed_at=at_cst(6, 0))) == []
    assert codes(rules, replace(PLAIN, redeemed_at=at_cst(22, 59))) == []
    assert codes(rules, replace(PLAIN, redeemed_at=at_cst(5, 59))) == ["outside_business_hours"]
    verdict = rules.judge(replace(PLAIN, redeemed_at=at_cst(23, 0)))
    assert verdict is not None
    assert dict(verdict.fired[0].figures) == {
        "merchant_id": "m-1",
        "local_time": "23:00",
        "hours": "06:00-23:00",
    }


def test_hours_of_a_campaign_and_of_a_merchant() -> None:
    rules = only(
        "outside_business_hours",
        campaigns={"c-1": {"opens_at": "10:00", "closes_at": "02:00"}},
        merchants={"m-bar": {"opens_at": "18:00", "closes_at": "18:00"}},
    )
    # The campaign's hours run past midnight.
    assert codes(rules, replace(PLAIN, redeemed_at=at_cst(1, 30))) == []
    assert codes(rules, replace(PLAIN, redeemed_at=at_cst(2, 0))) == ["outside_business_hours"]
    assert codes(rules, replace(PLAIN, redeemed_at=at_cst(9, 59))) == ["outside_business_hours"]
    # Another campaign keeps the default hours.
    assert codes(rules, replace(PLAIN, campaign_id="c-2", redeemed_at=at_cst(1, 30))) == [
        "outside_business_hours"
    ]
    # A merchant open round the clock (the same opening and closing time).
    assert codes(rules, replace(PLAIN, merchant_id="m-bar", redeemed_at=at_cst(4, 0))) == []


def test_hours_as_yaml_writes_them() -> None:
    # Unquoted, YAML 1.1 reads 06:30 as 390 (base 60): the minutes of the day.
    rules = parse_rules(
        "version: 1\nredemption:\n"
        "  outside_business_hours: {opens_at: 06:30, closes_at: '24:00'}\n",
        limits=LIMITS,
    ).redemption.outside_business_hours
    assert rules is not None
    assert (rules.opens_at, rules.closes_at) == (390, 1440)
    assert rules.open_at(23 * 60 + 59)
    assert not rules.open_at(6 * 60 + 29)


@pytest.mark.parametrize("value", ["6:00", "25:00", "12:60", "noon", 1441, -1, True])
def test_invalid_hours_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        BusinessHours.model_validate({"opens_at": value})


@given(st.integers(0, 1439), st.integers(0, 1440), st.integers(0, 1440))
def test_hours_open_exactly_within_their_span(minute: int, opens: int, closes: int) -> None:
    hours = BusinessHours(opens_at=opens, closes_at=closes)
    span = (closes - opens) % 1440 or 1440
    assert hours.open_at(minute) == ((minute - opens) % 1440 < span)


def test_minute_of_day_is_shanghai_time() -> None:
    assert minute_of_day(NOON) == 12 * 60
    assert minute_of_day(datetime(2026, 12, 8, 16, 30, tzinfo=UTC)) == 30


# -- price_above_sku_baseline -----------------------------------------------------------


def test_sku_price_edges() -> None:
    rules = only("price_above_sku_baseline", margin_pct=20)

    def priced(price: int | None, baseline: int | None) -> list[str]:
        return codes(
            rules, replace(PLAIN, sku="KFR-35GW", price_fen=price, sku_baseline_fen=baseline)
        )

    assert priced(12_000, 10_000) == []
    assert priced(12_001, 10_000) == ["price_above_sku_baseline"]
    # No baseline imported for the SKU, or no price (not a trade-in product): unknown.
    assert priced(50_000, None) == []
    assert priced(None, 10_000) == []
    exact = only("price_above_sku_baseline", margin_pct=0)
    assert codes(exact, replace(PLAIN, price_fen=10_000, sku_baseline_fen=10_000)) == []
    assert codes(exact, replace(PLAIN, price_fen=10_001, sku_baseline_fen=10_000)) == [
        "price_above_sku_baseline"
    ]


# -- refund_soon_after ------------------------------------------------------------------


def test_refund_soon_after_alone() -> None:
    rules = only("refund_soon_after", within_s=600)
    assert rules.judge_refund(RefundFeatures("m-1", since_redemption_s=601)) is None
    verdict = rules.judge_refund(RefundFeatures("m-1", since_redemption_s=600))
    assert verdict is not None
    assert verdict.codes == ["refund_soon_after"]
    assert dict(verdict.fired[0].figures) == {
        "since_redemption_s": 600,
        "within_s": 600,
        "merchant_id": "m-1",
    }
    # A refund is judged by the refund rule alone, never by the redemption's rules.
    assert rules.judge(PLAIN) is None
    assert not rules.judges_redemptions


def test_refund_soon_after_at_a_merchant_that_refunds_often() -> None:
    rules = only(
        "refund_soon_after", within_s=600, merchant_refunds_min=3, merchant_share_min_pct=10
    )

    def refund(quick: int | None, total: int | None) -> list[str]:
        verdict = rules.judge_refund(
            RefundFeatures(
                "m-1",
                since_redemption_s=5,
                merchant_quick_refunds=quick,
                merchant_redemptions=total,
            )
        )
        return [] if verdict is None else verdict.codes

    assert refund(2, 10) == []  # too few
    assert refund(3, 31) == []  # 9.7 %
    assert refund(3, 30) == ["refund_soon_after"]
    assert refund(3, None) == []
    assert refund(None, 30) == []


def test_refund_soon_after_by_a_payer_who_refunds_often() -> None:
    rules = only("refund_soon_after", within_s=600, payer_refunds_min=2)

    def refund(payer: str | None, quick: int | None) -> list[str]:
        verdict = rules.judge_refund(
            RefundFeatures("m-1", since_redemption_s=5, payer_id=payer, payer_quick_refunds=quick)
        )
        return [] if verdict is None else verdict.codes

    # A customer who sent a dish back, once.
    assert refund("pay-00000001", 1) == []
    assert refund("pay-00000001", 2) == ["refund_soon_after"]
    # No payer token sent: unknown.
    assert refund(None, None) == []
    verdict = rules.judge_refund(
        RefundFeatures("m-1", since_redemption_s=5, payer_id="pay-1", payer_quick_refunds=3)
    )
    assert verdict is not None
    assert verdict.fired[0].figures["payer_quick_refunds"] == 3


# -- the verdict ------------------------------------------------------------------------


def test_the_strictest_action_wins_and_every_rule_is_listed() -> None:
    rules = compile_redemption_rules(
        RedemptionRules.model_validate(
            {
                "payer_many_vouchers": {"limit": 1, "action": "flag"},
                "outside_business_hours": {"action": "suspend"},
                "price_above_sku_baseline": {"margin_pct": 0, "action": "hold"},
            }
        )
    )
    assert rules is not None
    features = replace(
        PLAIN,
        payer_vouchers=2,
        redeemed_at=at_cst(3),
        price_fen=2,
        sku_baseline_fen=1,
    )
    verdict = rules.judge(features)
    assert verdict is not None
    assert verdict.action == "suspend"
    assert verdict.codes == [
        "payer_many_vouchers",
        "outside_business_hours",
        "price_above_sku_baseline",
    ]
    held = rules.judge(replace(features, redeemed_at=NOON))
    assert held is not None
    assert held.action == "hold"


def test_every_reason_code_has_its_rule() -> None:
    assert set(RedemptionRules.model_fields) == {r.value for r in RedemptionReason}


# -- rings ------------------------------------------------------------------------------

RING = RingRule(
    persons_min=3,
    merchants_max=2,
    redemptions_min=2,
    person_share_min_pct=80,
    merchant_share_min_pct=50,
)


def rows(*spec: tuple[str, str, int]) -> list[tuple[str, str]]:
    return [(person, merchant) for person, merchant, n in spec for _ in range(n)]


def test_a_ring_of_few_people_and_few_merchants() -> None:
    found = find_rings(
        rows(
            ("p1", "m1", 2),
            ("p2", "m1", 1),
            ("p2", "m2", 1),
            ("p3", "m2", 3),
            # Honest customers of the ring's merchants, once each.
            ("h1", "m1", 1),
            ("h2", "m2", 1),
        ),
        RING,
    )
    assert found == [
        Ring(
            merchants=frozenset({"m1", "m2"}),
            persons=frozenset({"p1", "p2", "p3"}),
            redemptions=7,
            merchant_share_pct=77,
        )
    ]
    assert ring_of(found, "p2", "m2") is found[0]
    assert ring_of(found, "h1", "m1") is None


def test_too_few_people_make_no_ring() -> None:
    assert find_rings(rows(("p1", "m1", 2), ("p2", "m1", 2)), RING) == []


def test_regulars_of_a_busy_shop_make_no_ring() -> None:
    # Three regulars, but most of the shop's customers come once.
    spec = [("p1", "m1", 2), ("p2", "m1", 2), ("p3", "m1", 2)]
    spec += [(f"h{n}", "m1", 1) for n in range(7)]
    assert find_rings(rows(*spec), RING) == []


def test_people_who_spend_everywhere_make_no_ring() -> None:
    # Each repeat customer spends under 80 % of their redemptions at the candidate merchants.
    spec = [(f"p{n}", "m1", 1) for n in range(4)]
    spec += [(f"p{n}", f"x{n}", 1) for n in range(4)]
    assert find_rings(rows(*spec), RING) == []


def test_the_ring_is_bounded_in_merchants() -> None:
    # Repeat customers spread over four merchants: two at most are a candidate.
    spec = [(f"p{n}", f"m{n % 4}", 1) for n in range(8)]
    spec += [(f"p{n}", f"m{(n + 1) % 4}", 1) for n in range(8)]
    for ring in find_rings(rows(*spec), RING):
        assert len(ring.merchants) <= RING.merchants_max


@given(
    st.lists(
        st.tuples(st.sampled_from([f"p{n}" for n in range(8)]), st.sampled_from(["a", "b", "c"])),
        max_size=60,
    )
)
def test_every_ring_found_meets_the_rule(found_rows: list[tuple[str, str]]) -> None:
    for ring in find_rings(found_rows, RING):
        assert len(ring.persons) >= RING.persons_min
        assert 1 <= len(ring.merchants) <= RING.merchants_max
        assert ring.merchant_share_pct >= RING.merchant_share_min_pct
        for person in ring.persons:
            mine = [m for p, m in found_rows if p == person]
            assert len(mine) >= RING.redemptions_min
            inside = sum(1 for m in mine if m in ring.merchants)
            assert inside * 100 >= RING.person_share_min_pct * len(mine)


def test_a_ring_fires_for_its_people_at_its_merchants() -> None:
    rules = only("ring")
    ring = Ring(frozenset({"m-1"}), frozenset({"p1"}), 20, 90)
    verdict = rules.judge(replace(PLAIN, ring=ring))
    assert verdict is not None
    assert verdict.action == "hold"
    assert dict(verdict.fired[0].figures) == {
        "persons": 1,
        "merchants": 1,
        "merchant_ids": "m-1",
        "ring_redemptions": 20,
        "merchant_share_pct": 90,
        "window_s": 86400,
    }
    assert rules.judge(replace(PLAIN, merchant_id="m-2", ring=ring)) is None


# -- the file ---------------------------------------------------------------------------


def test_an_invalid_redemption_section_names_each_field() -> None:
    text = (
        "version: 2\n"
        "redemption:\n"
        "  merchant_rate_spike: {factor: 0.5}\n"
        "  payer_many_vouchers: {limit: 5, action: refuse}\n"
        "  ring: {merchants_max: 50, window_s: 86401}\n"
        "  outside_business_hours: {merchants: {'bad id!': {opens_at: '09:00'}}}\n"
    )
    with pytest.raises(InvalidInput) as refused:
        parse_rules(text, limits=LIMITS)
    fields = {e["field"] for e in refused.value.details["errors"]}
    assert fields == {
        "redemption.merchant_rate_spike.factor",
        "redemption.payer_many_vouchers.action",
        "redemption.ring.merchants_max",
        "redemption.ring.window_s",
        "redemption.outside_business_hours.merchants.bad id!.[key]",
    }


def test_the_example_file_turns_every_redemption_rule_on() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "risk-rules.yaml"
    rules = parse_rules(example.read_text(encoding="utf-8"), limits=LIMITS)
    assert set(rules.redemption.on) == {r.value for r in RedemptionReason}
