"""A trade-in campaign file: the example imports through the operator's path with the
national categories and rates, and a file breaking a trade-in rule is refused naming
the field."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lequan.adapters.memory_store import MemoryStore
from lequan.domain.campaigns import CampaignConfig
from lequan.domain.errors import InvalidInput
from lequan.domain.templates import TradeIn
from lequan.domain.trade_in import APPLIANCES, DIGITAL, Category
from lequan.services import admin, campaigns
from lequan.services.campaigns import parse_campaign
from tests.factories import make_world

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRADE_IN = EXAMPLES / "shanghai-trade-in-2024.yaml"
MERCHANTS = EXAMPLES / "merchants-trade-in.csv"

Data = dict[str, Any]


def _example() -> Data:
    data = yaml.safe_load(TRADE_IN.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    unshared: Data = _unshared(data)
    return unshared


def _unshared(value: Any) -> Any:
    """A copy with no shared parts: the example's stock is one mapping in 3 channels."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _refused(data: Data) -> list[dict[str, str]]:
    with pytest.raises(InvalidInput) as refused:
        parse_campaign(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
    assert refused.value.code == "invalid_campaign_config"
    errors = refused.value.details["errors"]
    assert isinstance(errors, list)
    return errors


def test_the_example_has_the_national_categories_and_rates() -> None:
    config = parse_campaign(TRADE_IN.read_bytes())
    assert config.trade_in
    templates = [t for t in config.templates if isinstance(t, TradeIn)]
    assert len(templates) == len(config.templates) == 15
    assert {t.category for t in templates} == set(Category)
    for t in templates:
        if t.category in APPLIANCES:
            assert (t.rates_bp, t.rate_bp, t.cap_fen, t.price_max_fen) == (
                {1: 2000, 2: 1500},
                None,
                200_000,
                None,
            )
        else:
            assert t.category in DIGITAL
            assert (t.rates_bp, t.rate_bp, t.cap_fen, t.price_max_fen) == (
                None,
                1500,
                50_000,
                600_000,
            )
        assert t.items_max == (3 if t.category is Category.AIR_CONDITIONER else 1)
    assert config.scope.modes == ("in_store", "online")
    assert 0 < config.stock_face_fen() <= config.budget_fen


def test_the_example_imports_with_its_merchants_online_and_in_store(tmp_path: Path) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        for acquirer in ("acq-jd", "acq-suning"):
            admin.add_app(world.rt, app_id=acquirer, kind="acquirer", name=acquirer, actor="alice")
        row = campaigns.import_campaign(
            world.rt, parse_campaign(TRADE_IN.read_bytes()), actor="alice"
        )
        assert row.config.trade_in
        text = MERCHANTS.read_text(encoding="utf-8")
        imported = admin.import_merchants(world.rt, text, actor="alice").imported
    rows = list(csv.DictReader(text.splitlines()))
    assert imported == len(rows)
    assert {r["acquirer_id"] for r in rows if r["modes"] == "online"} >= {"acq-jd", "acq-suning"}
    assert any("in_store" in r["modes"] for r in rows)
    assert {r["mcc"] for r in rows} <= set(row.config.scope.mcc)


def test_a_campaign_mixing_trade_in_and_other_templates_is_refused_on_templates() -> None:
    data = _example()
    data["templates"].append(
        {"id": "d300-90", "kind": "threshold", "threshold_fen": 30000, "discount_fen": 9000}
    )
    errors = _refused(data)
    assert [e["field"] for e in errors] == ["templates"]
    assert "all of kind trade_in" in errors[0]["rule"]


def test_a_trade_in_template_breaking_its_rule_names_its_field() -> None:
    data = _example()
    data["templates"][0]["rates_bp"] = {3: 1000, 6: 1500}
    data["templates"][12]["rates_bp"] = {1: 1500}  # the phone
    fields = {e["field"] for e in _refused(data)}
    assert fields == {"templates[0].rates_bp[6].[key]", "templates[12]"}


def test_an_unknown_category_is_refused() -> None:
    data = _example()
    data["templates"][0]["category"] = "bicycle"
    errors = _refused(data)
    assert [e["field"] for e in errors] == ["templates[0].category"]


@pytest.mark.parametrize(
    ("budgets", "rule"),
    [
        ({"refrigerator": 2_999_999_999}, "refrigerator: its stock at its cap (3000000000 fen)"),
        ({"bicycle": 1}, "Input should be"),
        ({"phone": 0}, "greater than 0"),
        (
            {"refrigerator": 15_000_000_000, "tv": 15_000_000_001},
            "more than the campaign's budget_fen",
        ),
    ],
)
def test_a_budget_per_category_must_hold_its_stock_and_fit_the_campaign(
    budgets: dict[str, int], rule: str
) -> None:
    data = _example()
    data["category_budgets_fen"] = budgets
    errors = _refused(data)
    assert all(e["field"].startswith("category_budgets_fen") for e in errors), errors
    assert any(rule in e["rule"] for e in errors), errors


def test_a_budget_per_category_needs_a_trade_in_campaign_with_that_category() -> None:
    data = _example()
    data["templates"] = [t for t in data["templates"] if t["category"] != "tv"]
    for per_channel in data["rounds"][0]["stock"].values():
        del per_channel["tv"]
    data["category_budgets_fen"] = {"tv": 1_000}
    assert any("no template of this category" in e["rule"] for e in _refused(data))
    dining = yaml.safe_load((EXAMPLES / "shanghai-dining-2024.yaml").read_text(encoding="utf-8"))
    dining["category_budgets_fen"] = {"tv": 1_000}
    assert any("only a trade-in campaign" in e["rule"] for e in _refused(dining))


def test_a_campaign_exported_as_json_imports_again() -> None:
    """The admin API answers templates as JSON, whose object keys are strings: an
    operator who saves a campaign that way and imports it gets the same campaign."""
    config = CampaignConfig.model_validate(_example())
    again = CampaignConfig.model_validate(json.loads(config.model_dump_json()))
    assert again == config
    fridge = again.template("refrigerator")
    assert fridge is not None
    assert fridge.model_dump()["rates_bp"] == {1: 2000, 2: 1500}
    for bad in ({"x": 2000}, {"01": 2000}, {"6": 2000}, {True: 2000}):
        data = _example()
        data["templates"][0]["rates_bp"] = bad
        assert _refused(data)
