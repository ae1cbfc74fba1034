"""`python -m benchmarks simulate` runs a real crowd against a real server and checks the store.

Small crowds here (the million is for the benchmark); what is asserted is
what a pipeline would check in the JSON: every voucher issued once, to
nobody twice, every acknowledged voucher stored; never a speed. So these
run beside other tests (not ``serial``): the simulator sends every "retry
later" answer again with its key, as a channel does, and a busy machine
only makes the crowd slower.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from benchmarks.cli import app

KEYS = {
    "people",
    "stock",
    "issued",
    "oversold",
    "duplicates",
    "acknowledged_missing",
    "sold_out_after_s",
    "answered_per_s",
    "p99_ms",
    "bot_people_share",
    "bot_voucher_share",
    "invariants_ok",
}


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("postgres+redis, 2 workers", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def stack_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "embedded":
        return []
    postgres_url: str = request.getfixturevalue("postgres_url")
    redis_url: str = request.getfixturevalue("redis_url")
    return [
        "--database-url",
        postgres_url,
        "--redis-url",
        redis_url,
        "--workers",
        "2",
        "--gate-buckets",
        "4",
    ]


@pytest.mark.slow
def test_a_small_crowd_sells_out_exactly_and_the_summary_says_so(stack_args: list[str]) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--people", "1500", "--stock", "300", *stack_args, "--json"]
    )

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) >= KEYS
    assert summary["people"] == 1500
    assert summary["issued"] == summary["stock"] == 300
    assert summary["oversold"] == summary["duplicates"] == summary["acknowledged_missing"] == 0
    assert summary["invariants_ok"] is True
    assert summary["sold_out_after_s"] is not None
    assert 0 < summary["bot_people_share"] < 0.1


def test_many_processes_need_a_shared_gate() -> None:
    result = CliRunner().invoke(app, ["simulate", "--people", "100", "--workers", "2"])
    assert result.exit_code == 2
    assert "redis" in result.output.lower()
