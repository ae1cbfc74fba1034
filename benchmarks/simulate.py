"""``python -m benchmarks simulate``: a flash crowd against a real lequan server.

N distinct people (default 1,000,000) want vouchers from a stock S at a
10:00 release through three channels. Each channel is a batching client
(its own users' claims gathered for a few milliseconds, up to a batch of
1,000, sent signed with an idempotency key per item) over HTTP; what the
server answers "retry later" (429, 503) it sends again with the same key
after Retry-After, as a channel's client does. Arrivals
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

from benchmarks import scenarios
from benchmarks.run import fresh_postgres
from benchmarks.servers import serve_lequan
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.client import LequanAuth

__all__ = ["SimulationConfig", "simulate"]

CHANNELS = ("wechat", "alipay", "unionpay")
PEOPLE_MAX = 2_000_000
BATCH_WAIT_S = 0.01
ARRIVAL_TICK_S = 0.001
RETRY_AFTER_S = 1.0  # the Retry-After lequan gives with 429 and 503
RESENDS_MAX = 10
ARRIVALS_PER_YIELD_MAX = 1000  # the channels get the loop at least this often
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
    start_window_s: int = 0  # the round's fair start (docs/risk.md); 0: off

    @property
    def batches_in_flight_max(self) -> int:
        """A channel's calls at once: a few, or with a start window more (its calls wait
        for the draw, and a channel does not stop taking taps), though not so many
        that most are refused 429 at once and sent again every second."""
        return 64 if self.start_window_s else 8


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
    # Items answered "retry later" (429, 503): sent again with the same key after
    # RETRY_AFTER_S, as a channel's client does, at most RESENDS_MAX times each.
    resends: Counter[str] = field(default_factory=Counter)
    resending: int = 0  # waiting out their RETRY_AFTER_S
    retry_after_s: float = RETRY_AFTER_S

    def resend_later(self, item: tuple[int, str, float, bool]) -> bool:
        """Queue ``item`` again after RETRY_AFTER_S; False once it has had its resends."""
        key = item[1]
        if self.resends[key] >= RESENDS_MAX:
            return False
        self.resends[key] += 1
        self.resending += 1

        def requeue() -> None:
            self.resending -= 1
            self.queue.put_nowait(item)

        asyncio.get_running_loop().call_later(self.retry_after_s, requeue)
        return True

    def idle(self) -> bool:
        return self.queue.empty() and self.resending == 0


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
    while not (done.is_set() and channel.idle()):
        try:
            first = await asyncio.wait_for(channel.queue.get(), timeout=0.05)
        except TimeoutError:
            continue
        batch = [first]
        deadline = time.perf_counter() + BATCH_WAIT_S
        while len(batch) < config.batch_items_max:
            # What is queued already is taken without a timer: a timed wait per claim
            # cost the simulator more CPU than the claims cost the server.
            try:
                batch.append(channel.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
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
        while len(in_flight) >= config.batches_in_flight_max:
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
        retry_later = response.status_code in (429, 503)  # the whole call: send it again
    except httpx.HTTPError:
        results, retry_later = None, False
    now = time.perf_counter()
    if results is None:
        for item in batch:
            if retry_later and channel.resend_later(item):
                continue
            person, _key, arrived, bot = item
            answers.append(
                _Answer(person, "transport_error", now - arrived, now - started, None, bot)
            )
        return
    for item, result in zip(batch, results, strict=True):
        person, _key, arrived, bot = item
        if result["status_code"] in (429, 503) and channel.resend_later(item):
            continue
        outcome = (
            "issued"
            if result["outcome"] in ("issued", "replayed") and result["voucher"]
            else result["outcome"]
        )
        voucher = result["voucher"]["voucher_id"] if result.get("voucher") else None
        answers.append(_Answer(person, outcome, now - arrived, now - started, voucher, bot))
        retry(person, outcome, bot)


async def _crowd(
    config: SimulationConfig,
    port: int,
    secrets_by_channel: dict[str, str],
    release: Callable[[], None] = lambda: None,
) -> tuple[list[_Answer], float, int]:
    rng = random.Random(config.seed)  # noqa: S311  # a reproducible crowd, not a secret
    people = config.people
    bots = set(rng.sample(range(people), int(people * config.bot_share)))
    retriers = set(rng.sample(range(people), int(people * config.retry_share)))
    connections = max(16, config.batches_in_flight_max)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
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
    tries: Counter[int] = Counter()

    def channel_of(person: int) -> _Channel:
        return by_name[scenarios.channel_for(person, CHANNELS)]

    # The whole crowd's schedule is drawn before the clock starts: drawing and
    # sorting a million arrivals takes the simulator a second or two.
    schedule = [
        (at_s, channel_of(person).queue, person, f"sim-{person}", person in bots)
        for at_s, person in sorted(
            (0.0 if p in bots else _arrival_s(rng, config), p) for p in range(people)
        )
    ]

    def retry(person: int, outcome: str, bot: bool) -> None:
        # Bots hammer with fresh keys; a few people press again with the same key.
        # (Most people are neither: they are let go before their count is looked up.)
        if outcome == "issued" or not (bot or person in retriers):
            return
        if tries[person] >= (5 if bot else 2):
            return
        if bot or outcome not in ("sold_out", "already_claimed"):
            tries[person] += 1
            key = f"sim-{person}-{tries[person]}" if bot else f"sim-{person}"
            channel_of(person).queue.put_nowait((person, key, time.perf_counter(), bot))

    release()  # the round opens now (a start window's), as the crowd arrives
    started = time.perf_counter()
    done = asyncio.Event()
    loops = [
        asyncio.create_task(_channel_loop(c, config, answers, retry, started, done))
        for c in channels
    ]
    queued_since_yield = 0
    for at_s, queue, person, key, bot in schedule:
        now = time.perf_counter()
        # Arrivals are let in a millisecond at a time (the channels gather for
        # BATCH_WAIT_S anyway): a timer per person cost more than the claim.
        if at_s - (now - started) > ARRIVAL_TICK_S or queued_since_yield >= ARRIVALS_PER_YIELD_MAX:
            await asyncio.sleep(max(at_s - (now - started), 0))
            queued_since_yield = 0
            now = time.perf_counter()
            if now - started > config.duration_s_max:
                break
        queued_since_yield += 1
        queue.put_nowait((person, key, now, bot))
    done.set()
    await asyncio.gather(*loops)
    # Retries queued after the loops saw "done" are answered by one more pass.
    while not all(c.idle() for c in channels):
        done = asyncio.Event()
        done.set()
        await asyncio.gather(
            *(_channel_loop(c, config, answers, retry, started, done) for c in channels)
        )
    elapsed_s = time.perf_counter() - started
    for c in channels:
        await c.client.aclose()
    return answers, elapsed_s, sum(sum(c.resends.values()) for c in channels)


def _summary(
    config: SimulationConfig,
    answers: list[_Answer],
    elapsed_s: float,
    resent: int,
    stack: scenarios.Stack,
) -> dict[str, Any]:
    outcomes = Counter(a.outcome for a in answers)
    latencies: dict[str, list[float]] = defaultdict(list)
    for a in answers:
        latencies[a.outcome].append(a.latency_s)
    acknowledged = {a.voucher_id for a in answers if a.voucher_id}
    issued_at = sorted(a.at_s for a in answers if a.outcome == "issued")
    with sql_store(stack.rt.store).unit_of_work(readonly=True) as uow:
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
        "start_window_s": config.start_window_s,
        "issued": issued,
        "oversold": max(0, issued - config.stock),
        "duplicates": sum(n - 1 for n in per_person.values() if n > 1),
        "acknowledged_missing": len(acknowledged - stored_ids),
        "answers": len(answers),
        "outcomes": dict(outcomes),
        # Items a channel sent again after a 429 or 503 (same key, after Retry-After).
        "resent_after_retry_later": resent,
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
                start_window_s=config.start_window_s,
            ) as stack,
            serve_lequan(stack.env, workers=config.workers) as port,
        ):

            def release() -> None:  # a start window opens as the crowd, its bots first, comes
                if config.start_window_s:
                    at = scenarios.release_soon(stack, lead_s=scenarios.RELEASE_LEAD_S)
                    time.sleep(max(0.0, at - time.time()))

            progress("released: the crowd arrives")
            answers, elapsed_s, resent = asyncio.run(_crowd(config, port, stack.secrets, release))
            progress("checking the store")
            return _summary(config, answers, elapsed_s, resent, stack)


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
