"""``lequan serve --workers 2`` on PostgreSQL + Redis: the risk counters are every
worker's, so a device's velocity limit holds across both (a counter of each
worker's own would let each worker allow the limit); a version of the rules
approved elsewhere reaches both workers without a restart; nothing is oversold
and no one gets two vouchers."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from benchmarks import scenarios
from benchmarks.servers import _process as serving
from benchmarks.servers import free_port
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.client import LequanAuth
from lequan.services import risk_rules
from lequan.services.invariants import check_campaign
from tests.system.worker_figures import per_worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PEOPLE = 96
FARM = 64  # claims the farm may send before both workers have answered some
LIMIT = 3
DEVICE = "dev-farm-000001"
RULES_VERSION = re.compile(r"^lequan_risk_rules_version ([0-9.]+)$", re.M)


@pytest.fixture
def stack(migrated_postgres_url: str, redis_url: str) -> Iterator[scenarios.Stack]:
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory),
            database_url=migrated_postgres_url,
            redis_url=redis_url,
            people=PEOPLE,
            stock_by_channel={scenarios.CHANNEL: PEOPLE},
        ) as prepared,
    ):
        yield prepared


def put_rules(stack: scenarios.Stack, version: int, claim: dict[str, Any]) -> None:
    """A version drafted and approved in the store: elsewhere than the servers."""
    text = yaml.safe_dump({"version": version, "claim": claim})
    risk_rules.draft_rules(stack.rt, text, actor="bench-maker")
    risk_rules.approve_rules(stack.rt, version, actor="bench-checker")


@contextmanager
def lequan_serve(stack: scenarios.Stack, figures: Path) -> Iterator[str]:
    """``lequan serve --workers 2`` with the stack's settings, each worker writing its
    figures under ``figures``; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        **stack.env,
        "LEQUAN_RISK_RULES_POLL_S": "0.2",
        "LEQUAN_METRICS_DIR": str(figures),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve sets it
    args = [
        sys.executable,
        "-c",
        "from lequan.cli import main; main()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    with serving(args, env, port, "/readyz"):
        yield f"http://127.0.0.1:{port}"


def claim_from_the_farm(base: str, auth: LequanAuth, person: int, **signals: Any) -> str:
    """One claim on a connection of its own (either worker may take it): its outcome."""
    body = {**scenarios._claim_item(person), "signals": {"device_id": DEVICE, **signals}}
    with httpx.Client(base_url=base, auth=auth, timeout=60) as client:
        response = client.post("/v1/claims", json=body, headers={"Idempotency-Key": f"f-{person}"})
    answer = response.json()
    if response.status_code == 201:
        return "issued"
    if response.status_code == 403:
        assert answer["details"]["reasons"] == ["velocity_device"], answer
    return str(answer["code"])  # a retry-later refusal (429, 503) is told as such


def scrape(base: str) -> str:
    """``/metrics``, on a connection of its own (either worker may answer)."""
    with httpx.Client(base_url=base, timeout=30) as client:
        return client.get("/metrics").text


def answered(figures: Path, route: str) -> list[float]:
    """How many requests on ``route`` each worker answered, by its own figures' file."""
    return sorted(per_worker(figures, "lequan_http_requests_total", route=route).values())


def both_workers_up(base: str, figures: Path) -> None:
    """Wait until both processes have answered /metrics (the kernel gives new
    connections to whichever worker accepts first, and the second may still be
    starting)."""

    def two_answered() -> bool:
        scrape(base)
        return len([n for n in answered(figures, "/metrics") if n > 0]) == 2

    wait_until(two_answered, what="both workers answered")


def both_workers_at(base: str, version: int) -> None:
    """Wait until two scrapes in a row, of whichever workers, show ``version`` in force
    and twenty did: the kernel hands new connections to either worker."""
    streak: list[int] = []

    def in_force() -> bool:
        (found,) = RULES_VERSION.findall(scrape(base))
        streak.append(int(float(found)))
        return streak[-20:] == [version] * 20

    wait_until(in_force, what=f"every worker put version {version} in force")


def test_a_devices_limit_holds_across_both_workers(stack: scenarios.Stack, tmp_path: Path) -> None:
    put_rules(stack, 1, {"velocity_device": {"limit": LIMIT, "window_s": 600, "action": "refuse"}})
    auth = LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL])
    with lequan_serve(stack, tmp_path) as base:
        both_workers_up(base, tmp_path)
        # The farm claims, eight connections at once, until each worker answered some.
        first: Counter[str] = Counter()
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, FARM, 8):
                people = range(start, start + 8)
                first += Counter(pool.map(lambda n: claim_from_the_farm(base, auth, n), people))
                claims_by_worker = answered(tmp_path, "/v1/claims")
                if len([n for n in claims_by_worker if n > 0]) == 2:
                    break
        assert len(claims_by_worker) == 2, "one worker answered every claim of the farm"
        assert all(n > 0 for n in claims_by_worker), claims_by_worker
        # Together no more than the limit was issued (a worker counting alone would allow
        # the limit itself); exactly the limit unless a claim had to be retried later.
        sent = sum(first.values())
        if first["issued"] + first["risk_refused"] == sent:
            assert first == {"issued": LIMIT, "risk_refused": sent - LIMIT}
        assert first["issued"] <= LIMIT

        # Rules approved elsewhere reach both workers, with no restart: the limit is off.
        put_rules(stack, 2, {})
        both_workers_at(base, 2)
        after = [claim_from_the_farm(base, auth, n) for n in range(FARM, FARM + 24)]
        assert Counter(after) == {"issued": 24}

    with sql_store(stack.rt.store).engine.connect() as connection:
        per_person = connection.execute(
            sa.select(t.vouchers.c.person_id, sa.func.count()).group_by(t.vouchers.c.person_id)
        ).all()
    assert len(per_person) == first["issued"] + 24
    assert {count for _person, count in per_person} == {1}
    check = check_campaign(stack.rt, scenarios.CAMPAIGN_ID)
    assert check.ok, check.problems
