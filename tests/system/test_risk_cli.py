"""Risk control from the command line: the rules file's maker-checker, the review queue
worked by an analyst (an approval issues the held claim), the device and phone
blacklists, and refusals as clear errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lequan.bootstrap import build_runtime, start_platform
from lequan.cli import app
from lequan.config import Settings
from lequan.examples import example_merchants
from lequan.services import admin, persons, redemption, reviews
from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Idempotency
from lequan.services.redemption import RedeemOrder
from lequan.services.redemption_risk import RedemptionSignals
from lequan.services.risk import ClaimSignals
from tests.e2e.conftest import campaign_yaml
from tests.factories import ACQUIRER, EXAMPLES, dining_config, id_number

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (
        "LEQUAN_DATABASE_URL",
        "LEQUAN_REDIS_URL",
        "LEQUAN_KEY_FILE",
        "LEQUAN_OPERATOR_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEQUAN_DATA_DIR", str(tmp_path))
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    return tmp_path


def run(*args: str) -> Any:
    """A command with --json that succeeds: its result."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    return result.stderr


def held_claim(user: str) -> str:
    """Person 1 registers in wechat and claims with the channel's high risk flag, in a
    server of its own: the example rules hold the claim. Its review id."""
    rt = build_runtime(Settings())
    platform = start_platform(rt, sweep=False, relay=False)
    try:
        persons.register(
            rt,
            channel_id="wechat",
            channel_user_id=user,
            id_number=id_number(1),
            name="张三",
            phone="13900000001",
            region_code="310104",
            location_region="310104",
            consent=True,
            consent_version="2024-01",
        )
        [result] = platform.claims.claim(
            "wechat",
            [
                ClaimRequest(
                    user,
                    "sh-dining-2024",
                    "r1",
                    "d300-90",
                    "310104",
                    Idempotency("wechat", "k-1", "h"),
                    signals=ClaimSignals(channel_risk="high"),
                )
            ],
        )
    finally:
        platform.close()
    assert result.outcome == "held_for_review", result
    review_id: str = result.answer.body["review_id"]
    return review_id


def test_an_analysts_day(data_dir: Path) -> None:
    alice = run("operator", "add", "alice", "--role", "maker")["token"]
    bob = run("operator", "add", "bob", "--role", "checker", "--token", alice)["token"]
    ana = run("operator", "add", "ana", "--role", "analyst", "--token", alice)["token"]
    vera = run("operator", "add", "vera", "--role", "viewer", "--token", alice)["token"]
    campaign = data_dir / "campaign.yaml"
    opened = datetime.now(UTC) - timedelta(minutes=5)
    campaign.write_text(campaign_yaml(dining_config(release_at=opened)), encoding="utf-8")
    run("campaign", "import", str(campaign), "--token", alice)
    run("campaign", "approve", "sh-dining-2024", "--token", bob)
    run("campaign", "activate", "sh-dining-2024", "--token", bob)
    run("channel", "add", "wechat", "--token", alice)

    rules = str(EXAMPLES / "risk-rules.yaml")
    drafted = run("risk", "rules", "draft", rules, "--token", ana)
    assert (drafted["version"], drafted["status"], drafted["drafted_by"]) == (1, "draft", "ana")
    for not_a_checker in (ana, alice):
        assert "forbidden" in refused("risk", "rules", "approve", "1", "--token", not_a_checker)
    assert run("risk", "rules", "approve", "1", "--token", bob)["status"] == "active"
    assert [v["status"] for v in run("risk", "rules", "list")["versions"]] == ["active"]

    review_id = held_claim("u1")
    queue = run("review", "list", "--token", ana)["items"]
    assert [(i["review_id"], i["status"]) for i in queue] == [(review_id, "pending")]
    shown = run("review", "show", review_id, "--token", bob)  # a checker reads
    assert [f["code"] for f in shown["reasons"]] == ["channel_risk_high"]
    assert "forbidden" in refused("review", "list", "--token", vera)
    assert "forbidden" in refused(
        "review", "approve", review_id, "--reason", "mine", "--token", bob
    )
    approved = run("review", "approve", review_id, "--reason", "known customer", "--token", ana)
    assert (approved["status"], approved["decided_by"], approved["outcome"]) == (
        "approved",
        "ana",
        "issued",
    )
    assert approved["outcome_detail"]["voucher_id"].startswith("v")
    assert "review_state" in refused(
        "review", "reject", review_id, "--reason", "late", "--token", ana
    )
    human = runner.invoke(app, ["review", "show", review_id, "--token", ana])
    assert human.exit_code == 0
    assert "channel_risk_high" in human.stdout

    device = "dev-0000000042"
    assert run(
        "risk", "blacklist", "add", device, "--kind", "device", "--reason", "farm", "--token", ana
    )["added"]
    assert run(
        "risk",
        "blacklist",
        "add",
        "13900000009",
        "--kind",
        "phone",
        "--reason",
        "farm",
        "--token",
        ana,
    )["added"]
    listed = run("risk", "blacklist", "list", "--kind", "device", "--token", ana)["items"]
    assert [(i["value"], i["created_by"]) for i in listed] == [(device, "ana")]
    assert run(
        "risk", "blacklist", "remove", device, "--kind", "device", "--reason", "ok", "--token", ana
    )["removed"]
    assert "invalid_device_id" in refused(
        "risk", "blacklist", "add", "x", "--kind", "device", "--reason", "r", "--token", ana
    )


def test_a_broken_rules_file_names_the_field(data_dir: Path) -> None:
    alice = run("operator", "add", "alice", "--role", "maker")["token"]
    bad = data_dir / "rules.yaml"
    bad.write_text("version: 1\nclaim:\n  velocity_ip: {limit: 0, window_s: 60}\n", "utf-8")
    stderr = refused("risk", "rules", "draft", str(bad), "--token", alice)
    assert "invalid_risk_rules" in stderr
    assert "claim.velocity_ip.limit" in stderr
    assert run("risk", "rules", "list")["versions"] == []


def held_redemption() -> str:
    """Two people spend a voucher each at one cafe with one payer token, in a server of
    its own whose rules hold a payer's second voucher. The held redemption's review id."""
    rt = build_runtime(Settings())
    platform = start_platform(rt, sweep=False, relay=False)
    try:
        admin.add_app(rt, app_id=ACQUIRER, kind="acquirer", name="acquirer", actor="alice")
        admin.import_merchants(rt, example_merchants(dining_only=True), actor="alice")
        assert platform.risk is not None
        platform.risk.refresh()
        for n in (1, 2):
            user = f"u{n}"
            persons.register(
                rt,
                channel_id="wechat",
                channel_user_id=user,
                id_number=id_number(n),
                name="张三",
                phone=f"1390000000{n}",
                region_code="310104",
                location_region="310104",
                consent=True,
                consent_version="2024-01",
            )
            [claimed] = platform.claims.claim(
                "wechat",
                [
                    ClaimRequest(
                        user,
                        "sh-dining-2024",
                        "r1",
                        "d300-90",
                        "310104",
                        Idempotency("wechat", f"k-{n}", "h"),
                    )
                ],
            )
            assert claimed.outcome == "issued", claimed
            row, _ = redemption.redeem(
                rt,
                voucher_id=claimed.answer.body["voucher"]["voucher_id"],
                order=RedeemOrder(
                    ACQUIRER, "m-cafe-001", "wechat", user, f"o{n}", 30_000, "in_store"
                ),
                lock=False,
                signals=RedemptionSignals(payer_id="pay-0000000000000001"),
                screen=platform.redemption_screen,
            )
    finally:
        platform.close()
    items = reviews.list_reviews(
        rt, actor="ana", status="pending", kind="redemption", after_id=None, limit=10
    )
    # The second voucher the payer paid for, and the first, looked back on.
    assert len(items) == 2
    (item,) = [i for i in items if i.subject["redemption_id"] == row.id]
    return item.id


def test_an_analyst_releases_a_held_redemption_and_prices_skus(data_dir: Path) -> None:
    alice = run("operator", "add", "alice", "--role", "maker")["token"]
    bob = run("operator", "add", "bob", "--role", "checker", "--token", alice)["token"]
    ana = run("operator", "add", "ana", "--role", "analyst", "--token", alice)["token"]
    campaign = data_dir / "campaign.yaml"
    opened = datetime.now(UTC) - timedelta(minutes=5)
    campaign.write_text(campaign_yaml(dining_config(release_at=opened)), encoding="utf-8")
    run("campaign", "import", str(campaign), "--token", alice)
    run("campaign", "approve", "sh-dining-2024", "--token", bob)
    run("campaign", "activate", "sh-dining-2024", "--token", bob)
    run("channel", "add", "wechat", "--token", alice)
    rules = data_dir / "rules.yaml"
    rules.write_text(
        "version: 1\nredemption:\n  payer_many_vouchers: {limit: 1, action: hold}\n", "utf-8"
    )
    run("risk", "rules", "draft", str(rules), "--token", ana)
    approved_rules = run("risk", "rules", "approve", "1", "--token", bob)
    assert approved_rules["redemption_rules"] == ["payer_many_vouchers"]

    review_id = held_redemption()
    queue = run("review", "list", "--kind", "redemption", "--token", ana)["items"]
    assert review_id in [i["review_id"] for i in queue]
    assert {i["kind"] for i in queue} == {"redemption"}
    human = runner.invoke(app, ["review", "show", review_id, "--token", ana])
    assert human.exit_code == 0, human.output
    assert "payer_many_vouchers" in human.stdout
    assert "9000 fen held" in human.stdout
    released = run("review", "approve", review_id, "--reason", "a family card", "--token", ana)
    assert (released["status"], released["outcome"]) == ("approved", "released")

    prices = data_dir / "skus.csv"
    prices.write_text("sku,baseline_price_fen\nKFR-35GW,329900\n", "utf-8")
    assert run("risk", "sku-prices", "import", str(prices), "--token", ana) == {"imported": 1}
    listed = run("risk", "sku-prices", "list", "--token", alice)["items"]
    assert [(i["sku"], i["baseline_price_fen"], i["updated_by"]) for i in listed] == [
        ("KFR-35GW", 329_900, "ana")
    ]
    prices.write_text("sku,baseline_price_fen\nKFR-35GW,free\n", "utf-8")
    assert "invalid_sku_prices" in refused(
        "risk", "sku-prices", "import", str(prices), "--token", ana
    )
