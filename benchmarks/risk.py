"""What claim-time risk costs the batch claim path: the same batches, with the channel's
signals in every item, measured with every claim rule on and with none, in one run
on one server.

Every claim is an honest person's (a device, an address and a network of their
own; an old account; the network where they say they are), so every rule is asked
and none fires: what is measured is the judging, not refusals. The blacklists hold
entries (none of them these people's), so their lookups find nothing the hard way.

The two are measured in four segments, A B B A (a run that is odd starts with the
rules off, an even one with them on), and each rate is its segments' claims over
their time: the store growing and the machine's load drifting during a run weigh
on both alike. On this shared machine, one segment each way differed by 25 % in
either direction from run to run.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from benchmarks.scenarios import Figure, Stack, batch_claims
from lequan.examples import EXAMPLES_DIR
from lequan.services import admin, reviews, risk_rules

__all__ = ["risk_row_names", "risk_rows"]

BLACKLISTED = 1_000  # devices and phones on the lists, none a bench person's
RULES_VERSION = re.compile(r"^lequan_risk_rules_version ([0-9.]+)$", re.M)
RULES_WAIT_S = 30.0


def risk_row_names(stack_name: str) -> tuple[str, str]:
    """(rules off, rules on): the two rows of one stack."""
    return f"http_batch_claims_{stack_name}_signals", f"http_batch_claims_{stack_name}_risk"


def signals(i: int) -> dict[str, Any]:
    """Person ``i``'s signals, as an honest person's."""
    return {
        "signals": {
            "device_id": f"dev-{i:012d}",
            "ip": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "account_age_s": 400 * 86_400,
            "network_region": "310104",
            "channel_risk": "low",
        }
    }


def _every_rule() -> str:
    return (Path(EXAMPLES_DIR) / "risk-rules.yaml").read_text(encoding="utf-8")


def _put_in_force(stack: Stack, port: int, version: int, text: str) -> None:
    """Draft and approve ``text`` as ``version``, then wait until the server has it."""
    risk_rules.draft_rules(stack.rt, text, actor="bench-maker")
    risk_rules.approve_rules(stack.rt, version, actor="bench-checker")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        deadline = time.monotonic() + RULES_WAIT_S
        while time.monotonic() < deadline:
            found = RULES_VERSION.findall(client.get("/metrics").text)
            if found and int(float(found[0])) == version:
                return
            time.sleep(0.05)
    raise RuntimeError(f"the server did not put version {version} of the rules in force")


def _with_blacklists(stack: Stack) -> None:
    admin.add_operator(stack.rt, "bench-analyst", role="analyst")
    for n in range(BLACKLISTED):
        for kind, value in (("device", f"farm-{n:010d}"), ("phone", f"138{n:08d}")):
            reviews.blacklist_add(
                stack.rt, kind=kind, value=value, reason="bench", actor="bench-analyst"
            )


def risk_rows(
    stack: Stack, port: int, *, run: int, claims: int, duration_s: float
) -> dict[str, Figure]:
    """Both rows' figures ("off", "on"), measured on the server at ``port`` in four
    segments of ``claims / 2`` each."""
    _with_blacklists(stack)
    rules = {"on": yaml.safe_load(_every_rule())["claim"], "off": {}}
    order = ["off", "on", "on", "off"] if run % 2 else ["on", "off", "off", "on"]
    segments: dict[str, list[Figure]] = {"off": [], "on": []}
    for version, state in enumerate(order, start=1):
        text = yaml.safe_dump({"version": version, "claim": rules[state]})
        _put_in_force(stack, port, version, text)
        segments[state].append(
            batch_claims(
                stack,
                port,
                claims=claims // 2,
                batch=1000,
                connections=4,
                duration_s=duration_s / 2,
                extra=signals,
            )
        )
    return {state: _together(figures) for state, figures in segments.items()}


def _together(figures: list[Figure]) -> Figure:
    """Segments as one figure: their claims over their time; the latencies' medians."""
    issued = sum(f.checks["issued"] for f in figures)
    elapsed_s = sum(f.checks["issued"] / f.value for f in figures if f.value)
    return Figure(
        issued / elapsed_s if elapsed_s else 0.0,
        p50_ms=statistics.median(f.p50_ms for f in figures if f.p50_ms is not None),
        p99_ms=statistics.median(f.p99_ms for f in figures if f.p99_ms is not None),
        checks={"issued": issued, "segments": [f.checks for f in figures]},
    )
