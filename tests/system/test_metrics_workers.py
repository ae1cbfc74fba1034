"""``lequan serve --workers 2`` on PostgreSQL + Redis, over real HTTP: ``/metrics``
is one view of both workers. Requests land on both; every scrape, whichever
worker answers it, counts each request exactly once; a worker that dies and
is started again leaves its counts and takes its queue with it. And one worker
on the embedded default: the figures directory serve made goes when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import scenarios
from benchmarks.servers import free_port
from lequan.client import LequanAuth
from tests.system.worker_figures import per_worker
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow]

PEOPLE = 240
CLAIMED_TWICE = 30  # of them: their second claim is refused already_claimed
QUEUE_MAX = 5000
CLAIMS = "/v1/claims"


@pytest.fixture
def database_url(migrated_postgres_url: str) -> str:
    return migrated_postgres_url


@contextmanager
def serving(stack: scenarios.Stack, figures: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``lequan serve --workers 2``, as an operator runs it; its base URL."""
    port = free_port()
    env = {
        **os.environ,
        **stack.env,
        "LEQUAN_METRICS_DIR": str(figures),
        "LEQUAN_CLAIM_QUEUE_MAX": str(QUEUE_MAX),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve sets it
    args = [sys.executable, "-m", "lequan.cli", "serve", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--workers", "2"]
    server = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base, server), what="the server answers /readyz", timeout_s=60)
        yield base, server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def _ready(base: str, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, "the server exited"
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _claim(base: str, stack: scenarios.Stack, person: int, key: str) -> int:
    """One claim on a connection of its own, so that either worker may take it."""
    auth = LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL])
    with httpx.Client(base_url=base, auth=auth, timeout=60) as client:
        answer = client.post(
            CLAIMS, json=scenarios._claim_item(person), headers={"Idempotency-Key": key}
        )
    return answer.status_code


def _scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _the(
    scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        value
        for (found, found_labels), value in scraped.items()
        if found == name and labels.items() <= dict(found_labels).items()
    )


# What must read the same on every scrape, whichever worker answers: the claims'.
WATCHED: list[tuple[str, dict[str, Any]]] = [
    ("lequan_http_requests_total", {"route": CLAIMS, "status": "201"}),
    ("lequan_http_requests_total", {"route": CLAIMS, "status": "409"}),
    ("lequan_http_errors_total", {"route": CLAIMS, "code": "already_claimed"}),
    ("lequan_claims_total", {"outcome": "issued"}),
    ("lequan_claims_total", {"outcome": "already_claimed"}),
    ("lequan_app_requests_total", {"app": scenarios.CHANNEL, "kind": "channel", "class": "2xx"}),
    ("lequan_app_requests_total", {"app": scenarios.CHANNEL, "kind": "channel", "class": "4xx"}),
    ("lequan_http_request_seconds_count", {"route": CLAIMS}),
    ("lequan_commit_batch_claims_sum", {}),
    (
        "lequan_stock_remaining",
        {"round": "r1", "channel": scenarios.CHANNEL, "template": scenarios.TEMPLATE},
    ),
    ("lequan_commit_queue_claims_max", {}),
]


def _watched(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> list[float]:
    return [_the(scraped, name, **labels) for name, labels in WATCHED]


@pytest.mark.postgres
@pytest.mark.redis
def test_every_scrape_counts_both_workers_requests_exactly_once(
    database_url: str, redis_url: str
) -> None:
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory),
            database_url=database_url,
            redis_url=redis_url,
            people=PEOPLE,
            stock_by_channel={scenarios.CHANNEL: 2 * PEOPLE},
        ) as stack,
    ):
        figures = Path(directory, "figures")
        figures.mkdir()
        (figures / "counter_1.db").write_bytes(b"")  # a past run's: wiped at start
        with serving(stack, figures) as (base, server):
            assert not (figures / "counter_1.db").exists()
            jobs = [(p, f"m-{p}") for p in range(PEOPLE)]
            jobs += [(p, f"again-{p}") for p in range(CLAIMED_TWICE)]
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda job: _claim(base, stack, *job), jobs))
            assert sorted(set(statuses)) == [201, 409]
            assert statuses.count(201) == PEOPLE

            by_worker = per_worker(figures, "lequan_http_requests_total", route=CLAIMS)
            assert len(by_worker) == 2, by_worker
            assert all(count > 0 for count in by_worker.values()), by_worker  # both served

            expected = [
                PEOPLE,
                CLAIMED_TWICE,
                CLAIMED_TWICE,
                PEOPLE,
                CLAIMED_TWICE,
                PEOPLE,
                CLAIMED_TWICE,
                PEOPLE + CLAIMED_TWICE,
                PEOPLE,  # every issued claim committed in some batch, once
                PEOPLE,  # the stock: one voucher per person, and as many again left
                2 * QUEUE_MAX,  # each worker's queue, summed over the workers alive
            ]
            scrapes = []
            answered_by: set[int] = set()
            for _round in range(20):
                with ThreadPoolExecutor(4) as pool:
                    scrapes += list(pool.map(lambda _n: _scrape(base), range(4)))
                answered_by = {
                    pid
                    for pid, count in per_worker(
                        figures, "lequan_http_requests_total", route="/metrics"
                    ).items()
                    if count
                }
                if len(answered_by) == 2:
                    break
            assert len(answered_by) == 2, "every scrape went to one worker"
            for scraped in scrapes:
                assert _watched(scraped) == expected

            # A worker killed: uvicorn starts another; its counts stay, its queue goes.
            victim = min(by_worker)
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: len(_started(figures) - {victim}) == 2,
                what="uvicorn started a worker in place of the killed one",
                timeout_s=60,
            )
            after = _scrape(base)
            assert _watched(after) == expected  # the dead worker's queue would make it 3x
            assert victim not in _started(figures)
            assert server.poll() is None


def _started(figures: Path) -> set[int]:
    """The workers whose commit queue is up, by their live gauges' files."""
    started = set()
    for file in figures.glob("gauge_livesum_*.db"):
        merged = MultiProcessCollector.merge([str(file)])  # type: ignore[no-untyped-call]  # untyped upstream
        if any(
            sample.name == "lequan_commit_queue_claims_max" and sample.value == QUEUE_MAX
            for metric in merged
            for sample in metric.samples
        ):
            started.add(int(file.stem.rsplit("_", 1)[1]))
    return started


def _serve_env(tmp_path: Path, **settings: str) -> tuple[dict[str, str], Path]:
    """The environment of a serve of this test's own, with a temporary directory of its own."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LEQUAN_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    return env | settings | {"TMPDIR": str(temporary)}, temporary


HEALTHZ = (
    "lequan_http_requests_total",
    (("method", "GET"), ("route", "/healthz"), ("status", "200")),
)


def test_one_worker_counts_in_its_own_memory(tmp_path: Path) -> None:
    """The embedded default, one process: its own figures are the whole view, and no
    figures directory is made."""
    env, temporary = _serve_env(tmp_path, LEQUAN_DATA_DIR=str(tmp_path / "data"))
    port = free_port()
    args = [sys.executable, "-m", "lequan.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base, server), what="the server answers /readyz", timeout_s=60)
        httpx.get(f"{base}/healthz")
        assert _scrape(base)[HEALTHZ] == 1
        assert not list(temporary.iterdir())
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.postgres
@pytest.mark.redis
def test_serve_removes_the_figures_directory_it_made_when_stopped(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Workers without LEQUAN_METRICS_DIR: their figures go to a directory of serve's
    own, in the temporary directory, gone once serve is stopped."""
    with scenarios.prepare_stack(
        tmp_path, database_url=database_url, redis_url=redis_url, people=10
    ) as stack:
        env, temporary = _serve_env(tmp_path, **stack.env)
        port = free_port()
        args = [sys.executable, "-m", "lequan.cli", "serve", "--port", str(port)]
        args += ["--workers", "2"]
        server = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _ready(base, server), what="serve answers /readyz", timeout_s=60)
            (figures,) = temporary.glob("lequan-metrics-*")
            wait_until(
                lambda: len(list(figures.glob("counter_*.db"))) == 2,
                what="both workers write their figures",
            )
            httpx.get(f"{base}/healthz")
            assert _scrape(base)[HEALTHZ] == 1
        finally:
            server.terminate()  # serve itself: it stops its workers
            server.wait(30)
        assert not list(temporary.iterdir())
