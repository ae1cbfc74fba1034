"""The claim-time risk rules (``domain/risk.py``): each rule's edges — below, at and
above its threshold, and its feature unknown — and how the verdict combines the rules
that fired. The rules file is checked whole, each broken field named by its path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lequan.config import Settings
from lequan.domain.errors import InvalidInput
from lequan.domain.risk import (
    ClaimFeatures,
    ClaimReason,
    ClaimRules,
    CompiledClaimRules,
    RulesFile,
    compile_claim_rules,
    regions_differ,
    subnet_of,
)
from lequan.services.campaigns import CampaignFileLimits
from lequan.services.risk_rules import parse_rules

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "risk-rules.yaml"
LIMITS = CampaignFileLimits.of(Settings.model_construct())
NOTHING = ClaimFeatures()


def only(rule: str, **config: Any) -> CompiledClaimRules:
    compiled = compile_claim_rules(ClaimRules.model_validate({rule: config}))
    assert compiled is not None
    return compiled


def fired(rules: CompiledClaimRules, **features: Any) -> list[tuple[str, str]]:
    verdict = rules.judge(replace(NOTHING, **features))
    return [] if verdict is None else [(f.code.value, f.action) for f in verdict.fired]


# -- counted rules: over the limit fires, at it does not ----------------------------------

COUNTED = [
    ("velocity_device", "device_claims"),
    ("velocity_ip", "ip_claims"),
    ("velocity_subnet", "subnet_claims"),
    ("identities_per_device", "device_identities"),
    ("devices_per_identity", "identity_devices"),
]


@pytest.mark.parametrize(("rule", "feature"), COUNTED)
def test_a_counted_rule_fires_above_its_limit_only(rule: str, feature: str) -> None:
    rules = only(rule, limit=3, window_s=60, action="refuse")
    assert fired(rules, **{feature: 2}) == []
    assert fired(rules, **{feature: 3}) == []
    assert fired(rules, **{feature: 4}) == [(rule, "refuse")]
    assert fired(rules, **{feature: None}) == []  # unknown: never fires


@pytest.mark.parametrize(("rule", "feature"), COUNTED)
def test_a_counted_rule_reports_what_it_saw(rule: str, feature: str) -> None:
    rules = only(rule, limit=1, window_s=600)
    features: dict[str, Any] = {"device_id": "dev-12345678", feature: 2}
    verdict = rules.judge(replace(NOTHING, **features))
    assert verdict is not None
    figures = dict(verdict.fired[0].figures)
    assert figures["limit"] == 1
    assert figures["window_s"] == 600
    assert 2 in figures.values()
    assert verdict.action == "review"  # the default action of a counted rule


def test_velocity_figures_name_the_address_and_the_network() -> None:
    ip = only("velocity_ip", limit=1, window_s=60).judge(
        replace(NOTHING, ip="1.2.3.4", ip_claims=2)
    )
    subnet = only("velocity_subnet", limit=1, window_s=60).judge(
        replace(NOTHING, subnet="1.2.3.0/24", subnet_claims=2)
    )
    assert ip is not None
    assert subnet is not None
    assert ip.fired[0].figures["ip"] == "1.2.3.4"
    assert subnet.fired[0].figures["subnet"] == "1.2.3.0/24"


# -- region ----------------------------------------------------------------------------


def test_region_mismatch_compares_at_its_level_for_a_local_campaign() -> None:
    province = only("region_mismatch", level="province")
    city = only("region_mismatch", level="city")
    local = {"local_only": True, "declared_region": "310104"}
    assert fired(province, **local, network_region="310115") == []  # both Shanghai
    assert fired(province, **local, network_region="440305") == [("region_mismatch", "review")]
    assert fired(city, **local, network_region="310115") == []  # both Shanghai city
    assert fired(city, **local, network_region="320102") == [("region_mismatch", "review")]
    district = only("region_mismatch", level="district")
    assert fired(district, **local, network_region="310115") == [("region_mismatch", "review")]
    assert fired(district, **local, network_region="310104") == []


def test_region_mismatch_needs_both_regions_and_a_local_campaign() -> None:
    rules = only("region_mismatch")
    assert fired(rules, local_only=True, declared_region="310104") == []
    assert fired(rules, local_only=True, network_region="440305") == []
    assert fired(rules, declared_region="310104", network_region="440305") == []  # nationwide


def test_a_coarse_network_region_is_no_inconsistency() -> None:
    assert not regions_differ("310104", "310000", "district")  # the province only
    assert not regions_differ("310104", "310100", "district")  # the city only
    assert regions_differ("310104", "440000", "district")
    assert regions_differ("310104", "320100", "city")


# -- flags -------------------------------------------------------------------------------

FLAGS = [
    ("blacklisted_person", "person_blacklisted"),
    ("blacklisted_device", "device_blacklisted"),
    ("blacklisted_phone", "phone_blacklisted"),
]


@pytest.mark.parametrize(("rule", "feature"), FLAGS)
def test_a_blacklist_fires_when_listed_only(rule: str, feature: str) -> None:
    rules = only(rule)
    assert fired(rules, **{feature: True}) == [(rule, "refuse")]  # refuse by default
    assert fired(rules, **{feature: False}) == []
    assert fired(rules, **{feature: None}) == []


def test_channel_risk_high_fires_on_high_only() -> None:
    rules = only("channel_risk_high", action="review")
    assert fired(rules, channel_risk="high") == [("channel_risk_high", "review")]
    assert fired(rules, channel_risk="medium") == []
    assert fired(rules, channel_risk="low") == []
    assert fired(rules, channel_risk=None) == []


def test_new_account_fires_below_its_minimum_only() -> None:
    rules = only("new_account", min_before_release_s=600)
    assert fired(rules, opened_before_release_s=601) == []
    assert fired(rules, opened_before_release_s=600) == []
    assert fired(rules, opened_before_release_s=599) == [("new_account", "review")]
    assert fired(rules, opened_before_release_s=-30) == [("new_account", "review")]  # after
    assert fired(rules, opened_before_release_s=None) == []


# -- the verdict -----------------------------------------------------------------------


def test_no_rule_on_compiles_to_nothing() -> None:
    assert compile_claim_rules(ClaimRules()) is None
    assert RulesFile.model_validate({"version": 1}).claim.empty


def test_one_refusal_refuses_and_every_rule_that_fired_is_named() -> None:
    rules = compile_claim_rules(
        ClaimRules.model_validate(
            {
                "velocity_device": {"limit": 1, "window_s": 60, "action": "review"},
                "blacklisted_device": {"action": "refuse"},
                "channel_risk_high": {"action": "review"},
            }
        )
    )
    assert rules is not None
    verdict = rules.judge(
        replace(NOTHING, device_claims=2, device_blacklisted=True, channel_risk="high")
    )
    assert verdict is not None
    assert verdict.action == "refuse"
    assert verdict.codes == ["velocity_device", "blacklisted_device", "channel_risk_high"]
    held = rules.judge(replace(NOTHING, device_claims=2, channel_risk="high"))
    assert held is not None
    assert held.action == "review"
    assert rules.judge(replace(NOTHING, device_claims=1, channel_risk="low")) is None


@given(
    st.lists(st.sampled_from([c.value for c in ClaimReason]), unique=True),
    st.lists(st.sampled_from(["review", "refuse"]), min_size=11, max_size=11),
)
def test_the_verdict_is_the_strictest_action_of_the_rules_that_fired(
    on: list[str], actions: list[str]
) -> None:
    config: dict[str, Any] = {}
    action = dict(zip([c.value for c in ClaimReason], actions, strict=True))
    for code in on:
        config[code] = {"action": action[code]}
        if code in {rule for rule, _ in COUNTED}:
            config[code] |= {"limit": 1, "window_s": 60}
        elif code == "new_account":
            config[code] |= {"min_before_release_s": 60}
    rules = compile_claim_rules(ClaimRules.model_validate(config))
    everything = ClaimFeatures(
        device_claims=9,
        ip_claims=9,
        subnet_claims=9,
        device_identities=9,
        identity_devices=9,
        local_only=True,
        declared_region="310104",
        network_region="440305",
        person_blacklisted=True,
        device_blacklisted=True,
        phone_blacklisted=True,
        opened_before_release_s=0,
        channel_risk="high",
    )
    if rules is None:
        assert on == []
        return
    verdict = rules.judge(everything)
    assert verdict is not None
    assert sorted(verdict.codes) == sorted(on)
    expected = "refuse" if any(action[c] == "refuse" for c in on) else "review"
    assert verdict.action == expected
    assert rules.judge(NOTHING) is None  # nothing known: nothing fires


# -- subnets ---------------------------------------------------------------------------


def test_subnets_of_both_families() -> None:
    assert subnet_of("203.0.113.77", ipv4_prefix=24, ipv6_prefix=64) == "203.0.113.0/24"
    assert subnet_of("203.0.113.77", ipv4_prefix=16, ipv6_prefix=64) == "203.0.0.0/16"
    assert subnet_of("2001:db8:1:2:3::9", ipv4_prefix=24, ipv6_prefix=64) == "2001:db8:1:2::/64"
    assert subnet_of("2001:db8:1:2:3::9", ipv4_prefix=24, ipv6_prefix=48) == "2001:db8:1::/48"


# -- the rules file --------------------------------------------------------------------


def test_the_example_file_turns_every_claim_rule_on() -> None:
    rules = parse_rules(EXAMPLE.read_text(encoding="utf-8"), limits=LIMITS)
    assert rules.version == 1
    assert {name for name in ClaimRules.model_fields if getattr(rules.claim, name)} == {
        c.value for c in ClaimReason
    }


def test_an_invalid_file_is_refused_whole_with_each_field_path() -> None:
    text = (
        "version: 3\n"
        "claim:\n"
        "  velocity_device: {limit: 0, window_s: 60}\n"
        "  velocity_ip: {limit: 5, window_s: 60, action: block}\n"
        "  no_such_rule: {action: refuse}\n"
        "redemption: {merchant_rate_spike: {floor: 0}, no_such_rule: {}}\n"
    )
    with pytest.raises(InvalidInput) as refused:
        parse_rules(text, limits=LIMITS)
    assert refused.value.code == "invalid_risk_rules"
    fields = {e["field"] for e in refused.value.details["errors"]}
    assert fields == {
        "claim.velocity_device.limit",
        "claim.velocity_ip.action",
        "claim.no_such_rule",
        "redemption.merchant_rate_spike.floor",
        "redemption.no_such_rule",
    }


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("- a list\n", "the rules file must be a mapping"),
        ("version: [1\n", "not valid YAML"),
        ("claim: {}\n", "Field required"),
        ("version: '2'\n", "Input should be a valid integer"),
        ("version: 1.0\n", "Input should be a valid integer"),
        ("version: 1\nclaim: {velocity_ip: {limit: true, window_s: 60}}\n", "valid integer"),
        ("version: 1\nclaim: {velocity_ip: {limit: 5, window_s: 86401}}\n", "less than or"),
    ],
)
def test_invalid_files(text: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_rules(text, limits=LIMITS)
    assert refused.value.code == "invalid_risk_rules"
    assert any(rule in e["rule"] for e in refused.value.details["errors"]), refused.value.details


def test_a_file_past_its_bounds_is_refused() -> None:
    small = CampaignFileLimits(bytes_max=1024, depth_max=8, nodes_max=1000)
    with pytest.raises(InvalidInput) as big:
        parse_rules("version: 1\n" + "# padding\n" * 200, limits=small)
    assert "larger than 1024 bytes" in big.value.message
    with pytest.raises(InvalidInput) as deep:
        parse_rules("version: 1\nclaim: " + "[" * 20 + "]" * 20 + "\n", limits=small)
    assert "nests deeper" in deep.value.message


def test_empty_sections_are_empty_mappings() -> None:
    rules = parse_rules("version: 7\nclaim:\nredemption:\n", limits=LIMITS)
    assert rules.claim.empty
    assert rules.version == 7
