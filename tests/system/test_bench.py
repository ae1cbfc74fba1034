"""`python -m benchmarks` runs and reports what it measured (speed itself is never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from benchmarks.cli import app
from benchmarks.loadgen import build_request

ROOT = Path(__file__).resolve().parents[2]


def test_bench_reports_medians_runs_and_the_machine() -> None:
    result = CliRunner().invoke(
        app, ["--runs", "2", "--duration-s", "1", "--only", "gate_memory", "--json"]
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


def test_the_bench_options_are_refused_before_a_command() -> None:
    result = CliRunner().invoke(app, ["--json", "simulate", "--people", "100"])
    assert result.exit_code == 2
    assert "simulate" in result.output


def test_it_runs_as_a_module_from_the_repository() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--duration-s" in result.stdout
    assert "simulate" in result.stdout
