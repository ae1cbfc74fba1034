"""The README's `make demo`, end to end: the same code path with a smaller crowd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lequan.cli import app


@pytest.mark.slow
def test_demo_replays_a_crowd_and_every_invariant_holds(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--people",
            "400",
            "--port",
            "0",
            "--no-serve",
            "--json",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["invariants_ok"] is True
    assert summary["oversold"] == 0
    assert summary["duplicates"] == 0
    assert summary["acknowledged_missing"] == 0
    assert summary["registered"] == 400
    claims = summary["claims"]
    # The crowd wants more than the stock: it sells out, and the rest hear why.
    assert claims["issued"] == summary["vouchers_issued"] <= summary["stock"]
    assert claims["sold_out"] > 0
    assert claims["ineligible"] > 0  # people outside Shanghai
    assert claims["replayed"] > 0  # retries with the same key
    redemptions = summary["redemptions"]
    assert redemptions["redeemed_one_step"] > 0
    assert redemptions["locked_then_confirmed"] > 0
    assert redemptions["second_spend_refused"] > 0
    assert redemptions.get("refunded_voucher_issued", 0) == 1
    assert 0 < summary["discount_paid_fen"] < summary["orders_fen"]
    assert summary["committed_fen"] <= summary["budget_fen"]
    # The trade-in act: central and two provinces, each its own process.
    trade_in = summary["trade_in"]
    assert trade_in["ok"] is True, trade_in
    steps = {s["step"]: (s["status"], s["refusal"]) for s in trade_in["steps"]}
    assert (409, "qualification_used_elsewhere") in steps.values()
    assert (503, "central_unavailable") in steps.values()
    assert steps["relays caught up"] == (0, "")
    assert {code for code, r in trade_in["reconciliations"].items() if r["ok"]} == {
        "310000",
        "330000",
    }


@pytest.mark.slow
def test_demo_under_python_O_still_writes_everything(tmp_path: Path) -> None:
    """``python -O`` strips asserts: a write inside one would vanish there.

    The demo claims, redeems and refunds; under ``-O`` the stock must still
    be counted out, the budget committed and the refunded voucher moved, or
    the invariants (stock counter = vouchers, ledger = budget) break.
    """
    completed = subprocess.run(
        [
            sys.executable,
            "-O",
            "-m",
            "lequan.cli",
            "demo",
            "--people",
            "200",
            "--port",
            "0",
            "--no-serve",
            "--no-trade-in",  # its provinces are processes of their own, run without -O
            "--json",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout[completed.stdout.index("{") :])
    assert summary["invariants_ok"] is True, summary
    assert summary["claims"]["issued"] > 0
    assert summary["redemptions"].get("refunded_voucher_issued", 0) == 1
    assert summary["committed_fen"] > 0
