"""Run every scenario several times and print one table: medians, ratios to
baselines measured in the same run, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from benchmarks import baselines, central, relay, risk, scenarios, screen
from benchmarks.cluster import ClusterUnavailable, local_cluster
from benchmarks.servers import fresh_postgres, serve_bare, serve_lequan
from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.redis_gate import RedisGate

__all__ = ["BenchConfig", "Row", "machine", "run_bench"]


# Buckets per pool in the bucketed gate rows.
GATE_BUCKETS = 8
# The start window of the fair-start rows: longer than taking their claims in lasts.
WINDOW_S = 10


@dataclass(frozen=True)
class BenchConfig:
    runs: int = 3
    duration_s: float = 5.0
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    batch_claims: int = 50_000  # per run
    service_claims: int = 30_000  # per run
    single_claims: int = 20_000  # per run
    redemptions: int = 5_000  # per run
    window_single_claims: int = 1_000  # per run: one connection each (the loadgen's bound)
    relay_events: int = 100_000  # the backlog drained per run
    only: frozenset[str] = frozenset()


@dataclass
class Row:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    note: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "median": round(self.median, 1),
            "runs": [round(v, 1) for v in self.values],
            "p50_ms": round(statistics.median(self.p50_ms), 2) if self.p50_ms else None,
            "p99_ms": round(statistics.median(self.p99_ms), 2) if self.p99_ms else None,
            "note": self.note,
        }


def machine(config: BenchConfig) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    try:
        engine = sa.create_engine(config.postgres_url)
        with engine.connect() as connection:
            info["postgresql"] = str(connection.exec_driver_sql("SHOW server_version").scalar())
        engine.dispose()
    except sa.exc.SQLAlchemyError:
        info["postgresql"] = "unreachable"
    try:
        client = redis.Redis.from_url(config.redis_url)
        info["redis"] = str(client.info("server")["redis_version"])
        client.close()
    except redis.RedisError:
        info["redis"] = "unreachable"
    return info


def run_bench(config: BenchConfig, progress: Callable[[str], None]) -> list[Row]:
    rows: dict[str, Row] = {}

    def want(name: str) -> bool:
        return not config.only or name in config.only

    def add(name: str, unit: str, figure: scenarios.Figure, note: str = "") -> None:
        row = rows.setdefault(name, Row(name, unit, note=note))
        row.values.append(figure.value)
        if figure.p50_ms is not None:
            row.p50_ms.append(figure.p50_ms)
        if figure.p99_ms is not None:
            row.p99_ms.append(figure.p99_ms)
        row.checks.append(figure.checks)

    for run in range(1, config.runs + 1):
        progress(f"run {run}/{config.runs}: baselines")
        if want("baseline_pg_hot_row"):
            add(
                "baseline_pg_hot_row",
                "claims/s",
                scenarios.Figure(
                    baselines.pg_hot_row(
                        config.postgres_url, clients=16, duration_s=config.duration_s
                    )
                ),
                "UPDATE … WHERE remaining > 0 + unique insert, 16 clients",
            )
        if want("baseline_redis_lua"):
            add(
                "baseline_redis_lua",
                "claims/s",
                scenarios.Figure(
                    baselines.redis_lua_ceiling(config.redis_url, duration_s=config.duration_s)
                ),
                "one minimal Lua claim per person, pipelined, from Python",
            )
        for kind, name in (
            ("asgi", "baseline_bare_asgi"),
            ("fastapi_app", "baseline_bare_fastapi"),
        ):
            if want(name):
                with serve_bare(kind) as port:
                    add(
                        name,
                        "requests/s",
                        scenarios.bare(
                            port, requests=200_000, connections=32, duration_s=config.duration_s
                        ),
                        "same server, same load generator, 1 worker",
                    )
        if want("central_batch_locks_pg"):
            progress(f"run {run}/{config.runs}: central")
            central_url, drop_central = fresh_postgres(config.postgres_url)
            try:
                add(
                    "central_batch_locks_pg",
                    "locks/s",
                    central.central_lock_figure(central_url, duration_s=config.duration_s),
                    "central's signed batch lock API on PostgreSQL; 4 provinces, 1,000 per call",
                )
            finally:
                drop_central()
        if want("central_batch_locks_pg_2w"):
            central_url, drop_central = fresh_postgres(config.postgres_url)
            try:
                add(
                    "central_batch_locks_pg_2w",
                    "locks/s",
                    central.central_lock_figure(
                        central_url,
                        duration_s=config.duration_s,
                        workers=2,
                        redis_url=config.redis_url,
                    ),
                    "the same with central in 2 worker processes (nonces in Redis)",
                )
            finally:
                drop_central()
        for relays in (1, 2):
            name = f"relay_drain_{relays}r"
            if want(name):
                progress(f"run {run}/{config.runs}: relay ({relays})")
                add(
                    name,
                    "events/s",
                    relay.relay_figure(
                        config.postgres_url, events=config.relay_events, relays=relays
                    ),
                    f"{config.relay_events:,} outbox events written during an outage, drained "
                    f"into central (PostgreSQL) by {relays} relay(s), 1,000 per call; "
                    f"the drain takes {config.relay_events:,} / this rate seconds",
                )
        progress(f"run {run}/{config.runs}: gate")
        if want("gate_memory"):
            add(
                "gate_memory",
                "claims/s",
                scenarios.gate_rate(MemoryGate(), claims=200_000),
                "batches of 1,000",
            )
        if want("gate_redis"):
            gate = RedisGate.from_url(config.redis_url, key_prefix=f"lqbench:{run}:")
            add(
                "gate_redis",
                "claims/s",
                scenarios.gate_rate(gate, claims=200_000),
                "batches of 1,000",
            )
            gate.close()
        if want("gate_redis_buckets"):
            gate = RedisGate.from_url(
                config.redis_url, key_prefix=f"lqbench:{run}:b:", buckets=GATE_BUCKETS
            )
            add(
                "gate_redis_buckets",
                "claims/s",
                scenarios.gate_rate(gate, claims=200_000),
                f"one Redis, {GATE_BUCKETS} buckets per pool, batches of 1,000",
            )
            gate.close()
        if want("gate_redis_cluster"):
            with tempfile.TemporaryDirectory(prefix="lqbench-cluster-") as directory:
                try:
                    with local_cluster(Path(directory)) as (host, port):
                        gate = RedisGate.from_url(
                            f"redis://{host}:{port}/0",
                            key_prefix=f"lqbench:{run}:",
                            buckets=GATE_BUCKETS,
                            cluster=True,
                        )
                        add(
                            "gate_redis_cluster",
                            "claims/s",
                            scenarios.gate_rate(gate, claims=200_000),
                            f"3 primaries on this machine, {GATE_BUCKETS} buckets per pool, "
                            "batches of 1,000",
                        )
                        gate.close()
                except ClusterUnavailable as error:
                    progress(f"gate_redis_cluster skipped: {error}")

        for stack_name, database in (("embedded", "sqlite"), ("pg_redis", "postgres")):
            names = [f"http_batch_claims_{stack_name}", f"http_single_claims_{stack_name}"]
            names.append(f"service_batch_claims_{stack_name}")
            # The same two HTTP paths with the big screen open (an SSE client reading).
            names += [f"{names[0]}_screen", f"{names[1]}_screen"]
            # The batch path with the channel's signals, every risk rule off, then on.
            risk_names = risk.risk_row_names(stack_name)
            names += risk_names
            if database == "postgres":
                names.extend(
                    [
                        "http_redemptions_pg",
                        "http_batch_claims_pg_redis_2w",
                        "service_redemptions_pg",
                    ]
                )
            if not any(want(n) for n in names):
                continue
            progress(f"run {run}/{config.runs}: lequan on {stack_name}")
            with tempfile.TemporaryDirectory(prefix="lqbench-") as directory:
                drop: Callable[[], None] = lambda: None  # noqa: E731
                if database == "sqlite":
                    url, redis_url = f"sqlite:///{directory}/lequan.db", ""
                else:
                    url, drop = fresh_postgres(config.postgres_url)
                    redis_url = config.redis_url
                people = (
                    (5 if any(want(n) for n in risk_names) else 3) * config.batch_claims
                    + 2 * config.single_claims
                    + 2 * config.redemptions
                    + config.service_claims
                )
                try:
                    with (
                        scenarios.prepare_stack(
                            Path(directory), database_url=url, redis_url=redis_url, people=people
                        ) as stack,
                        serve_lequan(stack.env) as port,
                    ):
                        if want(names[2]):
                            add(
                                names[2],
                                "claims/s",
                                scenarios.service_batch_claims(stack, claims=config.service_claims),
                                "ClaimService.claim in-process, batches of 1,000, one caller",
                            )
                        if want(names[0]):
                            add(
                                names[0],
                                "claims/s",
                                scenarios.batch_claims(
                                    stack,
                                    port,
                                    claims=config.batch_claims,
                                    batch=1000,
                                    connections=4,
                                    duration_s=config.duration_s * 4,
                                ),
                                "durable, signed, idempotent; 1,000 per call, 4 connections",
                            )
                        if want(names[1]):
                            add(
                                names[1],
                                "claims/s",
                                scenarios.single_claims(
                                    stack,
                                    port,
                                    claims=config.single_claims,
                                    connections=64,
                                    duration_s=config.duration_s,
                                ),
                                "durable, signed, idempotent; 64 connections",
                            )
                        if want(names[3]):
                            with screen.watched(stack, port) as received:
                                figure = scenarios.batch_claims(
                                    stack,
                                    port,
                                    claims=config.batch_claims,
                                    batch=1000,
                                    connections=4,
                                    duration_s=config.duration_s * 4,
                                )
                            add(
                                names[3],
                                "claims/s",
                                screen.with_screen(figure, received),
                                "as the batch row, with the big screen's event stream open",
                            )
                        if want(names[4]):
                            with screen.watched(stack, port) as received:
                                figure = scenarios.single_claims(
                                    stack,
                                    port,
                                    claims=config.single_claims,
                                    connections=64,
                                    duration_s=config.duration_s,
                                )
                            add(
                                names[4],
                                "claims/s",
                                screen.with_screen(figure, received),
                                "as the single-claim row, with the big screen's event stream open",
                            )
                        if any(want(n) for n in risk_names):
                            figures = risk.risk_rows(
                                stack,
                                port,
                                run=run,
                                claims=config.batch_claims,
                                duration_s=config.duration_s * 4,
                            )
                            add(
                                risk_names[0],
                                "claims/s",
                                figures["off"],
                                "as the batch row, each item with the channel's signals; "
                                "no risk rule on",
                            )
                            add(
                                risk_names[1],
                                "claims/s",
                                figures["on"],
                                "the same with every claim-time risk rule on "
                                "(examples/risk-rules.yaml), 1,000 devices and phones "
                                "blacklisted",
                            )
                        if database == "postgres" and want("service_redemptions_pg"):
                            add(
                                "service_redemptions_pg",
                                "redemptions/s",
                                scenarios.service_redemptions(stack, count=config.redemptions),
                                "RedemptionWriter in-process, 32 callers, no HTTP",
                            )
                        if database == "postgres" and want("http_redemptions_pg"):
                            add(
                                "http_redemptions_pg",
                                "redemptions/s",
                                scenarios.redemptions(
                                    stack,
                                    port,
                                    count=config.redemptions,
                                    connections=32,
                                    duration_s=config.duration_s,
                                ),
                                "one-step, durable on PostgreSQL; 32 connections",
                            )
                        if database == "postgres" and want("http_batch_claims_pg_redis_2w"):
                            with serve_lequan(stack.env, workers=2) as port_2w:
                                add(
                                    "http_batch_claims_pg_redis_2w",
                                    "claims/s",
                                    scenarios.batch_claims(
                                        stack,
                                        port_2w,
                                        claims=config.batch_claims,
                                        batch=1000,
                                        connections=4,
                                        duration_s=config.duration_s * 4,
                                    ),
                                    "as above, 2 worker processes sharing the Redis gate",
                                )
                finally:
                    drop()

        for stack_name, database in (("embedded", "sqlite"), ("pg_redis", "postgres")):
            # The same two HTTP paths with a start window on: every claim held, drawn
            # and committed (``scenarios.window_claims``), against the rows above.
            batch_row = f"http_batch_claims_{stack_name}_window"
            single_row = f"http_single_claims_{stack_name}_window"
            if not (want(batch_row) or want(single_row)):
                continue
            progress(f"run {run}/{config.runs}: lequan on {stack_name}, start window")
            with tempfile.TemporaryDirectory(prefix="lqbench-") as directory:
                drop = lambda: None  # noqa: E731
                if database == "sqlite":
                    url, redis_url = f"sqlite:///{directory}/lequan.db", ""
                else:
                    url, drop = fresh_postgres(config.postgres_url)
                    redis_url = config.redis_url
                try:
                    with (
                        scenarios.prepare_stack(
                            Path(directory),
                            database_url=url,
                            redis_url=redis_url,
                            people=config.batch_claims + config.window_single_claims,
                            start_window_s=WINDOW_S,
                        ) as stack,
                        serve_lequan(stack.env) as port,
                    ):
                        if want(batch_row):
                            add(
                                batch_row,
                                "claims/s",
                                scenarios.window_claims(
                                    stack,
                                    port,
                                    round_id="r1",
                                    claims=config.batch_claims,
                                    batch=1000,
                                    window_s=WINDOW_S,
                                ),
                                f"all in a {WINDOW_S} s start window: entered, drawn, committed; "
                                "1,000 per call, all calls at once; per second of busy time",
                            )
                        if want(single_row):
                            add(
                                single_row,
                                "claims/s",
                                scenarios.window_claims(
                                    stack,
                                    port,
                                    round_id="r2",
                                    claims=config.window_single_claims,
                                    batch=None,
                                    window_s=WINDOW_S,
                                ),
                                f"all in a {WINDOW_S} s start window, one connection per "
                                "claim; per second of busy time",
                            )
                finally:
                    drop()
    return list(rows.values())
