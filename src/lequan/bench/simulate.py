"""``lequan simulate``: a flash crowd against a real lequan server.

N distinct people (default 1,000,000) want vouchers from a stock S at a
10:00 release through three channels. Each channel is a batching client
(its own users' claims gathered for a few milliseconds, up to a batch of
1,000, sent signed with an idempotency key per item) over HTTP. Arrivals
spike at the release and tail off; some people retry with the same key;
a share are bots that fire at the release instant and retry hard with new
keys. At the end the store is checked: issued = S, nobody twice, every
acknowledged voucher exists.

Everything runs on loopback, bounded in people, time and requests.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.bench import scenarios
from lequan.bench.run import fresh_postgres
from lequan.bench.servers import serve_lequan
from lequan.client import LequanAuth

__all__ = ["SimulationConfig", "simulate"]

CHANNELS = ("wechat", "alipay", "unionpay")
PEOPLE_MAX = 2_000_000
BATCH_WAIT_S = 0.01
HTTP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SimulationConfig:
    people: int = 1_000_000
    stock: int = 100_000
    bot_share: float = 0.02
    retry_share: float = 0.05
    batch_items_max: int = 1000
    spike_s: float = 1.0  # most arrivals fall in the first spike_s seconds
    tail_s: float = 10.0  # the rest over the following tail_s seconds
    duration_s_max: float = 600.0
    database_url: str = ""  # empty: the embedded default in a scratch directory
    redis_url: str = ""
    workers: int = 1  # API processes; more than one needs the Redis gate
    gate_buckets: int = 1
    seed: int = 20241130


@dataclass
class _Answer:
    person: int
    outcome: str
    latency_s: float
    at_s: float
    voucher_id: str | None
    bot: bool


@dataclass
class _Channel:
    name: str
    client: httpx.AsyncClient
    queue: asyncio.Queue[tuple[int, str, float, bool]] = field(default_factory=asyncio.Queue)


def _arrival_s(rng: random.Random, config: SimulationConfig) -> float:
    if rng.random() < 0.7:
        return rng.uniform(0, config.spike_s)
    # The tail thins out exponentially and ends: nobody arrives after spike + tail.
    return config.spike_s + min(rng.expovariate(3.0 / config.tail_s), config.tail_s)


async def _channel_loop(  # noqa: PLR0917  # one call site
    channel: _Channel,
    config: SimulationConfig,
    answers: list[_Answer],
    retry: Callable[[int, str, bool], None],
    started: float,
    done: asyncio.Event,
) -> None:
    """Gather this channel's claims for up to BATCH_WAIT_S and send them as one batch."""
    in_flight: set[asyncio.Task[None]] = set()
    while not (done.is_set() and channel.queue.empty()):
        try:
            first = await asyncio.wait_for(channel.queue.get(), timeout=0.05)
        except TimeoutError:
            continue
        batch = [first]
        deadline = time.perf_counter() + BATCH_WAIT_S
        while len(batch) < config.batch_items_max:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(channel.queue.get(), timeout=remaining))
            except TimeoutError:
                break
        task = asyncio.create_task(_send(channel, batch, answers, retry, started))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        while len(in_flight) >= 8:  # a channel keeps at most 8 batches in flight
            await asyncio.sleep(0.001)
    if in_flight:
        await asyncio.gather(*in_flight)


async def _send(
    channel: _Channel,
    batch: list[tuple[int, str, float, bool]],
    answers: list[_Answer],
    retry: Callable[[int, str, bool], None],
    started: float,
) -> None:
    body = {
        "items": [
            {
                "idempotency_key": key,
                "channel_user_id": f"b{person}",
                "campaign_id": scenarios.CAMPAIGN_ID,
                "round_id": "r1",
                "template_id": scenarios.TEMPLATE,
                "location_region": "310104",
            }
            for person, key, _, _ in batch
        ]
    }
    try:
        response = await channel.client.post("/v1/claims/batch", json=body)
        results = response.json().get("results") if response.status_code == 200 else None
    except httpx.HTTPError:
        results = None
    now = time.perf_counter()
    if results is None:
        for person, _key, arrived, bot in batch:
            answers.append(
                _Answer(person, "transport_error", now - arrived, now - started, None, bot)
            )
        return
    for (person, _key, arrived, bot), result in zip(batch, results, strict=True):
        outcome = (
            "issued"
            if result["outcome"] in ("issued", "replayed") and result["voucher"]
            else result["outcome"]
        )
        voucher = result["voucher"]["voucher_id"] if result.get("voucher") else None
        answers.append(_Answer(person, outcome, now - arrived, now - started, voucher, bot))
        retry(person, outcome, bot)


async def _crowd(
    config: SimulationConfig, port: int, secrets_by_channel: dict[str, str]
) -> tuple[list[_Answer], float]:
    rng = random.Random(config.seed)  # noqa: S311  # a reproducible crowd, not a secret
    people = config.people
    bots = set(rng.sample(range(people), int(people * config.bot_share)))
    retriers = set(rng.sample(range(people), int(people * config.retry_share)))
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    channels = [
        _Channel(
            name,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                auth=LequanAuth(name, secrets_by_channel[name]),
                timeout=HTTP_TIMEOUT_S,
                limits=limits,
            ),
        )
        for name in CHANNELS
    ]
    by_name = {c.name: c for c in channels}
    answers: list[_Answer] = []
    started = time.perf_counter()
    tries: Counter[int] = Counter()

    def channel_of(person: int) -> _Channel:
        return by_name[scenarios.channel_for(person, CHANNELS)]

    def retry(person: int, outcome: str, bot: bool) -> None:
        # Bots hammer with fresh keys; a few people press again with the same key.
        if outcome == "issued" or tries[person] >= (5 if bot else 2):
            return
        if bot or (person in retriers and outcome not in ("sold_out", "already_claimed")):
            tries[person] += 1
            key = f"sim-{person}-{tries[person]}" if bot else f"sim-{person}"
            channel_of(person).queue.put_nowait((person, key, time.perf_counter(), bot))

    arrivals = sorted((0.0 if p in bots else _arrival_s(rng, config), p) for p in range(people))
    done = asyncio.Event()
    loops = [
        asyncio.create_task(_channel_loop(c, config, answers, retry, started, done))
        for c in channels
    ]
    for at_s, person in arrivals:
        delay = at_s - (time.perf_counter() - started)
        if delay > 0:
            await asyncio.sleep(delay)
        if time.perf_counter() - started > config.duration_s_max:
            break
        channel_of(person).queue.put_nowait(
            (person, f"sim-{person}", time.perf_counter(), person in bots)
        )
    done.set()
    await asyncio.gather(*loops)
    # Retries queued after the loops saw "done" are answered by one more pass.
    while any(not c.queue.empty() for c in channels):
        done = asyncio.Event()
        done.set()
        await asyncio.gather(
            *(_channel_loop(c, config, answers, retry, started, done) for c in channels)
        )
    for c in channels:
        await c.client.aclose()
    return answers, time.perf_counter() - started


def _summary(
    config: SimulationConfig, answers: list[_Answer], elapsed_s: float, stack: scenarios.Stack
) -> dict[str, Any]:
    outcomes = Counter(a.outcome for a in answers)
    latencies: dict[str, list[float]] = defaultdict(list)
    for a in answers:
        latencies[a.outcome].append(a.latency_s)
    acknowledged = {a.voucher_id for a in answers if a.voucher_id}
    issued_at = sorted(a.at_s for a in answers if a.outcome == "issued")
    with stack.rt.store.unit_of_work(readonly=True) as uow:
        stored = uow.connection.execute(
            sa.select(t.vouchers.c.id, t.vouchers.c.person_id, t.vouchers.c.channel_id)
        ).all()
    stored_ids = {row.id for row in stored}
    per_person = Counter((row.person_id, row.channel_id) for row in stored)
    winners = {row.person_id for row in stored}
    bots = {a.person for a in answers if a.bot}
    bot_winners = sum(1 for p in winners if int(p.removeprefix("pb")) in bots)
    issued = len(stored)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return (
            round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
            if ordered
            else 0.0
        )

    all_latencies = [a.latency_s for a in answers]
    summary = {
        "people": config.people,
        "stock": config.stock,
        "store": "sqlite" if not config.database_url else "postgresql",
        "gate": f"redis, {config.gate_buckets} bucket(s)" if config.redis_url else "memory",
        "workers": config.workers,
        "issued": issued,
        "oversold": max(0, issued - config.stock),
        "duplicates": sum(n - 1 for n in per_person.values() if n > 1),
        "acknowledged_missing": len(acknowledged - stored_ids),
        "answers": len(answers),
        "outcomes": dict(outcomes),
        "sold_out_after_s": round(issued_at[-1], 3)
        if issued >= config.stock and issued_at
        else None,
        "elapsed_s": round(elapsed_s, 2),
        "answered_per_s": round(len(answers) / elapsed_s, 1) if elapsed_s else 0.0,
        "p50_ms": pct(all_latencies, 0.5),
        "p95_ms": pct(all_latencies, 0.95),
        "p99_ms": pct(all_latencies, 0.99),
        "latency_ms_by_outcome": {
            o: {"p50": pct(v, 0.5), "p95": pct(v, 0.95), "p99": pct(v, 0.99)}
            for o, v in latencies.items()
        },
        "bot_people_share": round(len(bots) / config.people, 4) if config.people else 0.0,
        "bot_voucher_share": round(bot_winners / issued, 4) if issued else 0.0,
        "mean_batch_latency_ms": round(statistics.mean(all_latencies) * 1000, 1)
        if all_latencies
        else 0.0,
    }
    summary["invariants_ok"] = (
        summary["oversold"] == 0
        and summary["duplicates"] == 0
        and summary["acknowledged_missing"] == 0
        and (issued == config.stock or issued == len(winners) <= config.stock)
    )
    return summary


@contextmanager
def _scratch_store(server_url: str, directory: Path) -> Iterator[str]:
    """A store of the simulation's own: a SQLite file, or a new database on the server given."""
    if not server_url:
        yield f"sqlite:///{directory}/lequan.db"
        return
    url, drop = fresh_postgres(server_url)
    try:
        yield url
    finally:
        drop()


def simulate(config: SimulationConfig, progress: Callable[[str], None]) -> dict[str, Any]:
    assert 1 <= config.people <= PEOPLE_MAX
    assert 1 <= config.stock <= config.people * len(CHANNELS)
    assert config.workers == 1 or config.redis_url, "many processes share a Redis gate only"
    with (
        tempfile.TemporaryDirectory(prefix="lqsim-") as directory,
        _scratch_store(config.database_url, Path(directory)) as url,
    ):
        store = url.split(":")[0]
        progress(f"preparing {config.people:,} people and {config.stock:,} vouchers on {store}")
        with (
            scenarios.prepare_stack(
                Path(directory),
                database_url=url,
                redis_url=config.redis_url,
                people=config.people,
                stock_by_channel=scenarios.split_stock(config.stock, CHANNELS),
                channels=CHANNELS,
                gate_buckets=config.gate_buckets,
            ) as stack,
            serve_lequan(stack.env, workers=config.workers) as port,
        ):
            progress("released: the crowd arrives")
            answers, elapsed_s = asyncio.run(_crowd(config, port, stack.secrets))
            progress("checking the store")
            return _summary(config, answers, elapsed_s, stack)


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
