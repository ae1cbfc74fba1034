"""The shipped alert rules (deploy/prometheus/lequan-alerts.yml): valid for Prometheus,
each one firing on its trouble and quiet without it (promtool's rule unit tests, on
synthetic series), each with a runbook section, and none waiting on a series the
platform does not export."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "lequan-alerts.yml"
RULE_TESTS = PROMETHEUS / "lequan-alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], check=False, cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_and_the_example_configuration_pass_promtools_checks(promtool: str) -> None:
    checked = _promtool(promtool, "check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in checked.stdout + checked.stderr
    config = _promtool(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_each_alert_fires_on_its_trouble_and_stays_quiet_without_it(promtool: str) -> None:
    tested = _promtool(promtool, "test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_each_alert_has_a_firing_case_and_a_quiet_case() -> None:
    cases = [
        check
        for test in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
        for check in test.get("alert_rule_test", [])
    ]
    for alert in _alerts():
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} is never seen firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} is never seen quiet"


def _anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings (GitHub's way)."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    headings = re.findall(r"^#+\s+(.+?)\s*$", prose, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_each_alert_has_a_runbook_section_in_the_operations_guide() -> None:
    anchors = _anchors(OPERATIONS.read_text(encoding="utf-8"))
    for alert in _alerts():
        runbook = alert["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        assert page == "docs/operations.md", runbook
        assert anchor == alert["alert"].lower(), runbook
        assert anchor in anchors, f"docs/operations.md has no section {alert['alert']}"


def metric_names(expression: str) -> set[str]:
    """The lequan series an expression reads."""
    return set(re.findall(r"\blequan_[a-z0-9_]+\b", expression))


def test_the_rules_read_only_series_the_platform_exports(exported: frozenset[str]) -> None:
    for alert in _alerts():
        names = metric_names(alert["expr"])
        assert names, alert["alert"]
        assert names <= exported, (alert["alert"], names - exported)
