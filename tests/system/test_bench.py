"""`lequan bench` runs and reports what it measured (speed itself is never asserted)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from lequan.bench.loadgen import build_request
from lequan.cli import app


def test_bench_reports_medians_runs_and_the_machine() -> None:
    result = CliRunner().invoke(
        app, ["bench", "--runs", "2", "--duration-s", "1", "--only", "gate_memory", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [row] = report["rows"]
    assert row["name"] == "gate_memory"
    assert len(row["runs"]) == 2
    assert row["median"] > 0
    assert report["machine"]["cores"]


def test_prepared_requests_are_well_formed_http() -> None:
    request = build_request(
        "POST", "/v1/claims", host="127.0.0.1:8000", headers={"X-A": "1"}, body=b"{}"
    )
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/claims HTTP/1.1\r\nHost: 127.0.0.1:8000")
    assert b"Content-Length: 2" in head
    assert body == b"{}"
