"""Campaign files: the real examples parse, and each broken file is refused naming field and rule.

Every broken file is one small change of the dining example, made on the loaded
YAML and dumped back, so the test shows exactly what an operator got wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from lequan.config import Settings
from lequan.domain.campaigns import CampaignConfig, Validity
from lequan.domain.errors import InvalidInput
from lequan.domain.templates import Percentage, ThresholdDiscount
from lequan.services.campaigns import CampaignFileLimits, parse_campaign

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DINING = EXAMPLES / "shanghai-dining-2024.yaml"
LODGING = EXAMPLES / "shanghai-lodging-2024.yaml"

Data = dict[str, Any]


def _unshared(value: Any) -> Any:
    """A copy with no shared parts: the example's ``&weekly`` stock is one object in 3 rounds."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _dining() -> Data:
    data = _unshared(yaml.safe_load(DINING.read_text(encoding="utf-8")))
    assert isinstance(data, dict)
    return data


def _dump(data: Data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _refusal(text: str | bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        parse_campaign(text)
    assert refused.value.code == "invalid_campaign_config"
    assert refused.value.kind == "invalid"
    return refused.value


def _errors(error: InvalidInput) -> list[dict[str, str]]:
    errors = error.details["errors"]
    assert isinstance(errors, list)
    return errors


# The examples


@pytest.mark.parametrize("path", [DINING, LODGING], ids=["dining", "lodging"])
def test_example_file_parses(path: Path) -> None:
    config = parse_campaign(path.read_bytes())
    assert isinstance(config, CampaignConfig)
    assert config.channels == ("wechat", "alipay", "unionpay")


@pytest.mark.parametrize("path", [DINING, LODGING], ids=["dining", "lodging"])
def test_example_budget_covers_its_stock(path: Path) -> None:
    config = parse_campaign(path.read_bytes())
    assert 0 < config.stock_face_fen() <= config.budget_fen


def test_dining_example_reads_as_the_2024_campaign() -> None:
    config = parse_campaign(DINING.read_bytes())
    assert config.budget_fen == 500_000_000 * 100
    assert [r.id for r in config.rounds] == ["r1", "r2", "r3"]
    assert config.validity.days_from_issue == 10
    assert config.eligibility.regions == ("310000",)
    assert config.eligibility.check == "location"
    assert config.scope.mcc == ("5812", "5814")
    assert "gift_card" in config.scope.excluded_order_types
    # Each weekly round holds the same stock: 350,000 vouchers per channel.
    for r in config.rounds:
        assert sum(r.stock["alipay"].values()) == 350_000
    assert config.round("r2") is not None
    assert config.round("r9") is None
    assert isinstance(config.template("d500-150"), ThresholdDiscount)
    assert config.template("d9999") is None


def test_lodging_example_is_nationwide_with_separate_online_and_in_store_vouchers() -> None:
    config = parse_campaign(LODGING.read_bytes())
    assert config.eligibility.regions == ()
    modes = {t.id: t.modes for t in config.templates}
    assert modes["online-300-90"] == ("online",)
    assert modes["store-300-90"] == ("in_store",)
    assert {"insurance_addon", "pay_at_hotel"} <= set(config.scope.excluded_order_types)


def test_stock_face_is_face_times_count_over_all_rounds_and_channels() -> None:
    data = _dining()
    data["rounds"] = data["rounds"][:1]
    data["rounds"][0]["stock"] = {"wechat": {"d300-90": 10, "d1000-300": 2}, "alipay": {}}
    config = parse_campaign(_dump(data))
    assert config.stock_face_fen() == 10 * 9_000 + 2 * 30_000


def test_round_trip_of_the_example_parses_to_the_same_campaign() -> None:
    assert parse_campaign(_dump(_dining())) == parse_campaign(DINING.read_bytes())


def test_trade_in_percentage_template_is_accepted_in_a_campaign() -> None:
    data = _dining()
    data["templates"].append(
        {"id": "fridge-g2", "kind": "percentage", "basis_points": 1500, "cap_fen": 200_000}
    )
    config = parse_campaign(_dump(data))
    assert isinstance(config.template("fridge-g2"), Percentage)


# Broken files, one small change each


def _pop(key: str) -> Callable[[Data], None]:
    def change(data: Data) -> None:
        del data[key]

    return change


def _set(*path: str | int, value: Any) -> Callable[[Data], None]:
    def change(data: Data) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


def _negative_stock(data: Data) -> None:
    data["rounds"][0]["stock"]["wechat"]["d300-90"] = -1


def _unknown_channel(data: Data) -> None:
    data["rounds"][0]["stock"]["paypal"] = {"d300-90": 100}


def _unknown_template(data: Data) -> None:
    data["rounds"][0]["stock"]["wechat"]["d2000-900"] = 100


def _duplicate_template(data: Data) -> None:
    data["templates"][1]["id"] = "d300-90"


def _release_after_end(data: Data) -> None:
    r = data["rounds"][0]
    r["release_at"], r["ends_at"] = r["ends_at"], r["release_at"]


def _overlapping_rounds(data: Data) -> None:
    data["rounds"][1]["release_at"] = data["rounds"][0]["ends_at"] - timedelta(hours=1)


def _both_validity_forms(data: Data) -> None:
    data["validity"]["valid_from"] = datetime(2024, 11, 30, 2, tzinfo=UTC)
    data["validity"]["valid_until"] = datetime(2024, 12, 31, 2, tzinfo=UTC)


def _template_mode_outside_scope(data: Data) -> None:
    data["scope"]["modes"] = ["in_store"]
    data["templates"][0]["modes"] = ["online"]


def _typo(data: Data) -> None:
    data["budget_fne"] = data.pop("budget_fen")


# (change, the field named, a part of the rule, a word the message must contain); the field
# of a cross-field rule is None here and checked by test_cross_field_error_names_the_field_path.
BROKEN: dict[str, tuple[Callable[[Data], None], str | None, str, str]] = {
    "missing budget_fen": (_pop("budget_fen"), "budget_fen", "Field required", "budget_fen"),
    "zero budget": (_set("budget_fen", value=0), "budget_fen", "greater than 0", "budget_fen"),
    "negative stock": (
        _negative_stock,
        "rounds[0].stock.wechat.d300-90",
        "greater than or equal to 0",
        "rounds[0].stock.wechat.d300-90",
    ),
    "stock naming an unknown channel": (
        _unknown_channel,
        None,
        "round r1: stock names channel 'paypal' not in channels",
        "paypal",
    ),
    "stock naming an unknown template": (
        _unknown_template,
        None,
        "round r1: stock names template 'd2000-900' not in templates",
        "d2000-900",
    ),
    "duplicate template ids": (
        _duplicate_template,
        None,
        "template ids must be unique",
        "templates",
    ),
    "discount above threshold": (
        _set("templates", 0, "discount_fen", value=30_001),
        "templates[0]",
        "discount_fen must not exceed threshold_fen",
        "templates[0]",
    ),
    "release_at after ends_at": (
        _release_after_end,
        "rounds[0]",
        "release_at must be before ends_at",
        "rounds[0]",
    ),
    "overlapping rounds": (
        _overlapping_rounds,
        None,
        "round r2 must not start before round r1 ends",
        "round r2",
    ),
    "both days_from_issue and a fixed window": (
        _both_validity_forms,
        "validity",
        "either days_from_issue or valid_from/valid_until, not both",
        "validity",
    ),
    "neither days_from_issue nor a fixed window": (
        _set("validity", value={}),
        "validity",
        "give days_from_issue, or both valid_from and valid_until",
        "validity",
    ),
    "fixed window backwards": (
        _set(
            "validity",
            value={
                "valid_from": datetime(2024, 12, 31, tzinfo=UTC),
                "valid_until": datetime(2024, 12, 1, tzinfo=UTC),
            },
        ),
        "validity",
        "valid_from must be before valid_until",
        "validity",
    ),
    "template modes outside scope modes": (
        _template_mode_outside_scope,
        None,
        "template d300-90: modes must be within scope.modes",
        "scope.modes",
    ),
    "empty channels": (_set("channels", value=[]), "channels", "at least 1 item", "channels"),
    "empty scope modes": (
        _set("scope", "modes", value=[]),
        "scope",
        "modes must name at least one",
        "scope",
    ),
    "unknown top-level field": (
        _typo,
        "budget_fne",
        "Extra inputs are not permitted",
        "budget_fne",
    ),
    "unknown template kind": (
        _set("templates", 0, "kind", value="lottery"),
        "templates[0]",
        "'lottery'",
        "templates[0]",
    ),
    "naive release time": (
        _set("rounds", 0, "release_at", value=datetime(2024, 11, 30, 10)),
        "rounds[0].release_at",
        "timezone",
        "rounds[0].release_at",
    ),
    "bad region code": (
        _set("eligibility", "regions", value=["31000"]),
        "eligibility.regions[0]",
        "pattern",
        "eligibility.regions[0]",
    ),
    "bad campaign id": (_set("id", value="SH dining"), "id", "pattern", "id"),
    "no voucher per person and round": (
        _set("limits", "per_person_per_round_per_channel", value=0),
        "limits.per_person_per_round_per_channel",
        "greater than or equal to 1",
        "per_person_per_round_per_channel",
    ),
    "validity over a year": (
        _set("validity", "days_from_issue", value=367),
        "validity.days_from_issue",
        "less than or equal to 366",
        "validity.days_from_issue",
    ),
    "unknown refund policy": (
        _set("refund_policy", value="keep_the_money"),
        "refund_policy",
        "restore_if_valid",
        "refund_policy",
    ),
}


@pytest.mark.parametrize(("change", "field", "rule", "word"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_campaign_file_is_refused_naming_field_and_rule(
    change: Callable[[Data], None], field: str | None, rule: str, word: str
) -> None:
    data = _dining()
    change(data)
    refused = _refusal(_dump(data))
    errors = _errors(refused)
    assert any(rule in e["rule"] and field in (None, e["field"]) for e in errors), errors
    assert word in refused.message
    assert len(refused.message) < 2_000


def test_negative_stock_is_reported_for_the_one_round_changed() -> None:
    data = _dining()
    _negative_stock(data)
    fields = [e["field"] for e in _errors(_refusal(_dump(data)))]
    assert "rounds[0].stock.wechat.d300-90" in fields
    assert not any(f.startswith(("rounds[1]", "rounds[2]")) for f in fields)


def test_every_broken_field_is_reported_at_once() -> None:
    data = _dining()
    del data["budget_fen"]
    data["channels"] = []
    data["validity"] = {}
    fields = {e["field"] for e in _errors(_refusal(_dump(data)))}
    assert {"budget_fen", "channels", "validity"} <= fields


# Cross-field rules: an operator's tool highlights the field named, so it should not be "(file)".

CROSS_FIELD = {
    "stock naming an unknown channel": (_unknown_channel, "rounds"),
    "stock naming an unknown template": (_unknown_template, "rounds"),
    "duplicate template ids": (_duplicate_template, "templates"),
    "overlapping rounds": (_overlapping_rounds, "rounds"),
    "template modes outside scope modes": (_template_mode_outside_scope, "templates"),
}


@pytest.mark.parametrize(("change", "prefix"), CROSS_FIELD.values(), ids=CROSS_FIELD.keys())
def test_cross_field_error_names_the_field_path(
    change: Callable[[Data], None], prefix: str
) -> None:
    data = _dining()
    change(data)
    errors = _errors(_refusal(_dump(data)))
    assert all(e["field"].startswith(prefix) for e in errors), errors


# Files that are not campaigns at all


@pytest.mark.parametrize(
    ("text", "message_part"),
    [
        ("- wechat\n- alipay\n", "must be a mapping"),
        ("just a line of text\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("42\n", "must be a mapping"),
        ("id: [sh-dining\n", "not valid YAML"),
        ("id: sh-dining\n  name: x\n\tbad: indentation\n", "not valid YAML"),
        (b"id: \xc3\x28 not utf-8\n", "not valid YAML"),
    ],
    ids=["list", "scalar", "empty", "number", "unclosed", "tab", "bad-bytes"],
)
def test_file_that_is_not_a_campaign_mapping_is_refused(
    text: str | bytes, message_part: str
) -> None:
    assert message_part in _refusal(text).message


# The defaults the CLI reads its own files with: the settings' own.
BYTES_MAX = Settings.model_construct().campaign_file_bytes_max


def test_two_megabyte_file_is_refused_before_it_is_parsed() -> None:
    refused = _refusal(b"#" * 2_000_000)
    assert f"larger than {BYTES_MAX} bytes" in refused.message


def test_file_size_limit_is_inclusive() -> None:
    base = DINING.read_bytes()
    padding = b"\n#" + b"x" * (BYTES_MAX - len(base) - 2)
    at_limit = base + padding
    assert len(at_limit) == BYTES_MAX
    assert parse_campaign(at_limit).id == "sh-dining-2024"
    assert f"larger than {BYTES_MAX} bytes" in _refusal(at_limit + b"x").message


def test_two_megabyte_file_given_as_text_is_refused() -> None:
    text = "# " + "乐" * 700_000 + "\n" + DINING.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) > 2_000_000
    assert f"larger than {BYTES_MAX} bytes" in _refusal(text).message


def _limits(**changes: int) -> CampaignFileLimits:
    return CampaignFileLimits(
        **{"bytes_max": BYTES_MAX, "depth_max": 32, "nodes_max": 200_000, **changes}
    )


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        "{a: " * 3000 + "1" + "}" * 3000,
        "a:\n" + "".join(f"{' ' * n}- \n" for n in range(1, 40)),
    ],
)
def test_a_file_nested_too_deep_is_refused_not_a_recursion_error(text: str) -> None:
    assert "nests deeper than 32 levels" in _refusal(text).message


def test_depth_and_nodes_are_bounded_inclusively() -> None:
    text = DINING.read_text(encoding="utf-8")
    parsed = parse_campaign(text)
    # The example nests six levels deep: the file, rounds, a round, its stock, a
    # channel's, a count.
    assert parse_campaign(text, limits=_limits(depth_max=6)) == parsed
    refused = _refusal_with(text, _limits(depth_max=5))
    assert "nests deeper than 5 levels" in refused.message
    assert refused.details == {"errors": [{"field": "(file)", "rule": refused.message}]}
    refused = _refusal_with(text, _limits(nodes_max=50))
    assert "more than 50 values" in refused.message


def test_aliases_count_as_what_they_expand_to() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    refused = _refusal("\n".join(lines))
    assert "more than 200000 values, aliases expanded" in refused.message
    # A few aliases within the bound are read as YAML reads them.
    few = "\n".join(lines[:3])
    assert "must be a mapping" not in _refusal(few).message


def _refusal_with(text: str, limits: CampaignFileLimits) -> InvalidInput:
    with pytest.raises(InvalidInput) as refused:
        parse_campaign(text, limits=limits)
    return refused.value


@pytest.mark.parametrize(
    "change",
    [
        _set("budget_fen", value=True),
        _set("rounds", 0, "stock", "wechat", "d300-90", value=True),
    ],
    ids=["budget", "stock"],
)
def test_boolean_where_an_amount_is_due_is_refused(change: Callable[[Data], None]) -> None:
    data = _dining()
    change(data)
    _refusal(_dump(data))


# Validity windows

ISSUED_AT = datetime(2024, 11, 30, 2, 0, 15, tzinfo=UTC)


def test_days_from_issue_window_starts_at_issue() -> None:
    validity = Validity(days_from_issue=10)
    assert validity.window(ISSUED_AT) == (ISSUED_AT, ISSUED_AT + timedelta(days=10))


def test_fixed_window_is_the_same_whenever_issued() -> None:
    start = datetime(2024, 11, 30, 2, tzinfo=UTC)
    end = datetime(2024, 12, 31, 16, tzinfo=UTC)
    validity = Validity(valid_from=start, valid_until=end)
    assert validity.window(ISSUED_AT) == (start, end)
    assert validity.window(ISSUED_AT + timedelta(days=20)) == (start, end)


def test_lodging_example_has_a_fixed_window() -> None:
    config = parse_campaign(LODGING.read_bytes())
    start, end = config.validity.window(ISSUED_AT)
    assert start.isoformat() == "2024-11-30T10:00:00+08:00"
    assert end.isoformat() == "2024-12-31T23:59:59+08:00"


@pytest.mark.parametrize(
    "fields",
    [
        {"days_from_issue": 0},
        {"days_from_issue": 367},
        {"valid_from": datetime(2024, 12, 1, tzinfo=UTC)},
        {"valid_until": datetime(2024, 12, 1, tzinfo=UTC)},
        {
            "valid_from": datetime(2024, 12, 1, tzinfo=UTC),
            "valid_until": datetime(2024, 12, 1, tzinfo=UTC),
        },
    ],
    ids=["zero-days", "over-a-year", "from-only", "until-only", "empty-window"],
)
def test_impossible_validity_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"days_from_issue|valid_from|valid_until"):
        Validity(**fields)
