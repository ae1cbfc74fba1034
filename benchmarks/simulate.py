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

Beside the bots, adversaries of three more kinds claim among honest people,
every claim with the risk signals a channel sends (``benchmarks/adversaries.py``);
after the sale the winners spend their vouchers through the acquirer API and
a colluding ring fakes its orders (``benchmarks/redeeming.py``). The report
sets what the platform did against who was who, with the issue 16 targets
(``benchmarks/risk_report.py``).

Everything runs on loopback, bounded in people, time and requests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from benchmarks import scenarios
from benchmarks.adversaries import AdversaryConfig, Kind, Population
from benchmarks.redeeming import StoredVoucher, read_flags, spend
from benchmarks.risk_report import risk_report
from benchmarks.servers import fresh_postgres, serve_lequan
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.client import LequanAuth
from lequan.domain.errors import InvalidInput
from lequan.services import admin, risk_rules

__all__ = ["SimulationConfig", "simulate"]

CHANNELS = ("wechat", "alipay", "unionpay")
PEOPLE_MAX = 2_000_000
BATCH_WAIT_S = 0.01
ARRIVAL_TICK_S = 0.001
RETRY_AFTER_S = 1.0  # the Retry-After lequan gives with 429 and 503
PUBLISH_WAIT_S = 60.0  # how long a served draw may take to be published
RESENDS_MAX = 10
# A claim answered at once while it waits for a draw is asked for again at most this
# often (each time after its Retry-After, once the draw is published).
POLLS_MAX = 30
ASYNC_HEADERS = {"Prefer": "respond-async"}
ACCEPTED = ("entered", "queued")  # answered at once, waiting for the round's draw
ARRIVALS_PER_YIELD_MAX = 1000  # the channels get the loop at least this often
HTTP_TIMEOUT_S = 60.0
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
EXAMPLE_RULES = Path(__file__).resolve().parents[1] / "examples" / "risk-rules.yaml"


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
    adversaries: AdversaryConfig = field(default_factory=AdversaryConfig)
    # The risk rules put in force before the release (None: none, every rule off).
    rules_file: Path | None = EXAMPLE_RULES
    start_window_s: int = 0  # the round's fair start (docs/risk.md); 0: off
    # How long after the window its draw takes in claims pressed inside it (the channels
    # then stamp each claim's pressed_at and ask for answers at once).
    start_window_intake_s: int = 0

    @property
    def batches_in_flight_max(self) -> int:
        """A channel's calls at once: a few, or with a start window more (its calls wait
        for the draw, and a channel does not stop taking taps), though not so many
        that most are refused 429 at once and sent again every second. With an intake
        the calls are answered at once: a few again."""
        return 64 if self.start_window_s and not self.start_window_intake_s else 8


@dataclass
class _Answer:
    person: int
    outcome: str
    latency_s: float
    at_s: float
    voucher_id: str | None
    bot: bool  # scripted: fires at the release instant, retries with fresh keys
    reasons: tuple[str, ...] = ()  # the risk rules that refused it


# A claim waiting in its channel: person, idempotency key, attempt, when it arrived,
# scripted (a bot or the farm's script).
_Item = tuple[int, str, int, float, bool]


@dataclass
class _Channel:
    name: str
    client: httpx.AsyncClient
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    # With a start window's intake: each claim says when it was pressed (this wall
    # clock at perf_counter ``started_perf``), and a claim waiting for the draw is
    # answered at once (``Prefer: respond-async``), parked, and sent again once the
    # draw is published.
    respond_async: bool = False
    started_wall: float = 0.0
    started_perf: float = 0.0
    parked: list[tuple[_Item, float]] = field(default_factory=list)  # (item, retry after s)
    polls: Counter[str] = field(default_factory=Counter)
    published: bool = False  # the round's draw is: parked claims go again at once
    # When each person pressed, by the crowd's schedule (s after the release): the
    # simulator may let an arrival in late when it is busy; the person pressed then.
    pressed_s: dict[str, float] = field(default_factory=dict)
    # Items answered "retry later" (429, 503): sent again with the same key after
    # RETRY_AFTER_S, as a channel's client does, at most RESENDS_MAX times each.
    resends: Counter[str] = field(default_factory=Counter)
    resent_for: Counter[str] = field(default_factory=Counter)  # by the answer's code
    resending: int = 0  # waiting out their RETRY_AFTER_S
    retry_after_s: float = RETRY_AFTER_S

    def resend_later(self, item: _Item, why: str) -> bool:
        """Queue ``item`` again after RETRY_AFTER_S; False once it has had its resends."""
        key = item[1]
        if self.resends[key] >= RESENDS_MAX:
            return False
        self.resends[key] += 1
        self.resent_for[why] += 1
        self.resending += 1

        def requeue() -> None:
            self.resending -= 1
            self.queue.put_nowait(item)

        asyncio.get_running_loop().call_later(self.retry_after_s, requeue)
        return True

    def idle(self) -> bool:
        return self.queue.empty() and self.resending == 0 and not self.parked

    def pressed_at(self, key: str, arrived: float) -> str:
        """When the claim with ``key`` was pressed: as scheduled, or (a retry) when it
        reached the channel, at perf_counter ``arrived``."""
        at_s = self.pressed_s.get(key)
        offset_s = arrived - self.started_perf if at_s is None else at_s
        return _iso_millis(round((self.started_wall + offset_s) * 1000))

    def park(self, item: _Item, after_s: float) -> None:
        """A claim waiting for the draw: sent again once it is published, after
        ``after_s`` (a claim still in flight then, after its Retry-After)."""
        if not self.published:
            self.parked.append((item, after_s))
            return
        self.resending += 1

        def requeue() -> None:
            self.resending -= 1
            self.queue.put_nowait(item)

        asyncio.get_running_loop().call_later(after_s if self.polls[item[1]] > 1 else 0, requeue)

    def unpark(self) -> None:
        """The draw is published: the parked claims go again."""
        self.published = True
        parked, self.parked = self.parked, []
        for item, after_s in parked:
            self.park(item, after_s)


@functools.lru_cache(maxsize=100_000)
def _iso_millis(millis: int) -> str:
    """A unix time in milliseconds as RFC 3339 text (arrivals come a millisecond at a
    time: each text is made once)."""
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


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
    population: Population,
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
        task = asyncio.create_task(_send(channel, batch, answers, retry, started, population))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        while len(in_flight) >= config.batches_in_flight_max:
            await asyncio.sleep(0.001)
    if in_flight:
        await asyncio.gather(*in_flight)


async def _send(  # noqa: PLR0917  # one call site
    channel: _Channel,
    batch: list[_Item],
    answers: list[_Answer],
    retry: Callable[[int, str, bool], None],
    started: float,
    population: Population,
) -> None:
    items: list[dict[str, Any]] = [
        {
            "idempotency_key": key,
            "channel_user_id": f"b{person}",
            "campaign_id": scenarios.CAMPAIGN_ID,
            "round_id": "r1",
            "template_id": scenarios.TEMPLATE,
            "location_region": population.declared_region(person),
            "signals": population.claim_signals(person, attempt),
        }
        for person, key, attempt, _, _ in batch
    ]
    headers = ASYNC_HEADERS if channel.respond_async else None
    if channel.respond_async:
        for sent, (_person, key, _attempt, arrived, _bot) in zip(items, batch, strict=True):
            sent["pressed_at"] = channel.pressed_at(key, arrived)
    try:
        response = await channel.client.post(
            "/v1/claims/batch", json={"items": items}, headers=headers
        )
        call_status = response.status_code
        results = response.json().get("results") if call_status == 200 else None
        retry_later = call_status in (429, 503)  # the whole call: send it again
    except httpx.HTTPError:
        results, retry_later, call_status = None, False, 0
    now = time.perf_counter()
    if results is None:
        for item in batch:
            if retry_later and channel.resend_later(item, f"call_{call_status}"):
                continue
            person, _key, _attempt, arrived, bot = item
            answers.append(
                _Answer(person, "transport_error", now - arrived, now - started, None, bot)
            )
        return
    for item, result in zip(batch, results, strict=True):
        person, key, _attempt, arrived, bot = item
        if result["status_code"] in (429, 503) and channel.resend_later(item, result["outcome"]):
            continue
        waits = result["outcome"] in ACCEPTED or (
            result["outcome"] == "idempotency_in_flight" and channel.polls[key] > 0
        )
        if waits and channel.polls[key] < POLLS_MAX:
            # Waiting for the draw (or, sent again, its commit): asked again later,
            # with the same key and the time it was pressed.
            channel.polls[key] += 1
            channel.park(item, float(result.get("retry_after_s") or RETRY_AFTER_S))
            continue
        outcome, reasons = _claim_outcome(result)
        voucher = result["voucher"]["voucher_id"] if result.get("voucher") else None
        answers.append(
            _Answer(person, outcome, now - arrived, now - started, voucher, bot, reasons)
        )
        retry(person, outcome, bot)


async def _until_published(
    port: int, channels: list[_Channel], config: SimulationConfig, started: float
) -> None:
    """Watch the round's public fairness, as a channel would, and send the claims parked
    for its draw again once it is published (or the simulation's time is up)."""
    path = f"/v1/public/campaigns/{scenarios.CAMPAIGN_ID}/rounds/r1/fairness"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while time.perf_counter() - started < config.duration_s_max:
            await asyncio.sleep(1.0)
            try:
                answer = await client.get(path)
            except httpx.HTTPError:
                continue
            if answer.status_code == 200 and answer.json().get("published_at"):
                break
    for c in channels:
        c.unpark()


def _claim_outcome(result: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """A batch item's outcome, and the rules that refused it (``details.reasons``)."""
    if result["outcome"] in ACCEPTED:
        return str(result["outcome"]), ()
    if result["status_code"] == 202 or result["outcome"] == "held_for_review":
        return "held_for_review", ()
    if result["outcome"] in ("issued", "replayed") and result["voucher"]:
        return "issued", ()
    error = result.get("error") or {}
    details = error.get("details") if isinstance(error, dict) else None
    reasons = details.get("reasons") if isinstance(details, dict) else None
    codes = tuple(str(r) for r in reasons) if isinstance(reasons, list) else ()
    return str(result["outcome"]), codes


async def _crowd(
    config: SimulationConfig,
    port: int,
    secrets_by_channel: dict[str, str],
    population: Population,
    release: Callable[[], None] = lambda: None,
) -> tuple[list[_Answer], float, Counter[str]]:
    # The crowd's own draws (arrivals, retriers) come from a seed of their own: who is
    # an adversary is the population's draw.
    rng = random.Random(config.seed + 1)  # noqa: S311  # a reproducible crowd, not a secret
    people = config.people
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
        (at_s, channel_of(person).queue, person, f"sim-{person}", population.scripted(person))
        for at_s, person in sorted(
            (population.arrival_s(p, _arrival_s(rng, config)), p) for p in range(people)
        )
    ]

    def retry(person: int, outcome: str, bot: bool) -> None:
        # Scripts hammer with fresh keys; a few people press again with the same key.
        # (Most people are neither: they are let go before their count is looked up.)
        if outcome in ("issued", "held_for_review") or not (bot or person in retriers):
            return
        if tries[person] >= (population.retries_max(person) if bot else 2):
            return
        if bot or outcome not in ("sold_out", "already_claimed"):
            tries[person] += 1
            key = f"sim-{person}-{tries[person]}" if bot else f"sim-{person}"
            attempt = tries[person] if bot else 0
            channel_of(person).queue.put_nowait((person, key, attempt, time.perf_counter(), bot))

    release()  # the round opens now (a start window's), as the crowd arrives
    started = time.perf_counter()
    started_wall = time.time()
    intake = bool(config.start_window_s and config.start_window_intake_s)
    for c in channels:
        c.respond_async, c.started_wall, c.started_perf = intake, started_wall, started
    done = asyncio.Event()
    loops = [
        asyncio.create_task(_channel_loop(c, config, answers, retry, started, done, population))
        for c in channels
    ]
    watcher = (
        asyncio.create_task(_until_published(port, channels, config, started)) if intake else None
    )
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
        queue.put_nowait((person, key, 0, now, bot))
        if intake:  # pressed when scheduled, however late the simulator lets it in
            channel_of(person).pressed_s[key] = at_s
    done.set()
    await asyncio.gather(*loops)
    # Retries queued after the loops saw "done" are answered by one more pass.
    while not all(c.idle() for c in channels):
        done = asyncio.Event()
        done.set()
        await asyncio.gather(
            *(_channel_loop(c, config, answers, retry, started, done, population) for c in channels)
        )
    if watcher is not None:
        await watcher
    elapsed_s = time.perf_counter() - started
    for c in channels:
        await c.client.aclose()
    return answers, elapsed_s, sum((c.resent_for for c in channels), Counter())


def _stored_vouchers(stack: scenarios.Stack) -> list[StoredVoucher]:
    with sql_store(stack.rt.store).unit_of_work(readonly=True) as uow:
        rows = uow.connection.execute(
            sa.select(t.vouchers.c.id, t.vouchers.c.person_id, t.vouchers.c.channel_id)
        ).all()
    return [
        StoredVoucher(row.id, int(row.person_id.removeprefix("pb")), row.channel_id) for row in rows
    ]


def _fake_redemptions_stored(stack: scenarios.Stack, population: Population) -> int:
    """The ring's redemptions at its merchants as the store holds them (refunded or not):
    the simulator's own count is checked against it."""
    ring_merchants = [m.merchant_id for m in population.merchants if m.ring]
    if not ring_merchants:
        return 0
    with sql_store(stack.rt.store).unit_of_work(readonly=True) as uow:
        rows = uow.connection.execute(
            sa.select(t.vouchers.c.person_id)
            .join(t.redemptions, t.redemptions.c.voucher_id == t.vouchers.c.id)
            .where(
                t.redemptions.c.merchant_id.in_(ring_merchants),
                t.redemptions.c.status.in_(("redeemed", "refunded")),
            )
        ).all()
    return sum(
        1 for row in rows if population.kind(int(row.person_id.removeprefix("pb"))) == Kind.RING
    )


def _summary(  # noqa: PLR0917  # one call site
    config: SimulationConfig,
    answers: list[_Answer],
    elapsed_s: float,
    resent: int,
    stored: list[StoredVoucher],
    population: Population,
) -> dict[str, Any]:
    outcomes = Counter(a.outcome for a in answers)
    latencies: dict[str, list[float]] = defaultdict(list)
    for a in answers:
        latencies[a.outcome].append(a.latency_s)
    acknowledged = {a.voucher_id for a in answers if a.voucher_id}
    issued_at = sorted(a.at_s for a in answers if a.outcome == "issued")
    stored_ids = {v.voucher_id for v in stored}
    per_person = Counter((v.person, v.channel_id) for v in stored)
    winners = {v.person for v in stored}
    bots = population.count(Kind.BOT)
    bot_winners = sum(1 for p in winners if population.kind(p) == Kind.BOT)
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
        "bot_people_share": round(bots / config.people, 4) if config.people else 0.0,
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
    population = Population(
        config.people, bot_share=config.bot_share, config=config.adversaries, seed=config.seed
    )
    with (
        tempfile.TemporaryDirectory(prefix="lqsim-") as directory,
        _scratch_store(config.database_url, Path(directory)) as url,
    ):
        store = url.split(":")[0]
        progress(f"preparing {config.people:,} people and {config.stock:,} vouchers on {store}")
        with scenarios.prepare_stack(
            Path(directory),
            database_url=url,
            redis_url=config.redis_url,
            people=config.people,
            stock_by_channel=scenarios.split_stock(config.stock, CHANNELS),
            channels=CHANNELS,
            gate_buckets=config.gate_buckets,
            start_window_s=config.start_window_s,
            start_window_intake_s=config.start_window_intake_s,
        ) as stack:
            admin.import_merchants(
                stack.rt,
                population.merchants_csv(
                    campaign_id=scenarios.CAMPAIGN_ID, acquirer_id=scenarios.ACQUIRER
                ),
                actor="bench-maker",
            )
            token = _analyst_token(stack)
            if config.rules_file is not None:
                _put_rules(stack, config.rules_file)
            with serve_lequan(stack.env, workers=config.workers) as port:

                def release() -> None:  # a start window opens as the crowd, bots first, comes
                    if config.start_window_s:
                        at = scenarios.release_soon(stack, lead_s=scenarios.RELEASE_LEAD_S)
                        time.sleep(max(0.0, at - time.time()))

                progress("released: the crowd arrives")
                answers, elapsed_s, resent_for = asyncio.run(
                    _crowd(config, port, stack.secrets, population, release)
                )
                progress("checking the store")
                stored = _stored_vouchers(stack)
                resent = sum(resent_for.values())
                summary = _summary(config, answers, elapsed_s, resent, stored, population)
                summary["resent_by_code"] = dict(resent_for.most_common())
                if config.start_window_s:
                    summary["start_window_entries"] = _window_entries(port)
                progress("the winners spend their vouchers; the ring fakes its orders")
                spending_started = time.perf_counter()
                # The server stamps every redemption with its own clock: whether the
                # ring's orders fall "at odd hours" is this hour's, in Shanghai.
                spending_at = datetime.now(SHANGHAI).isoformat(timespec="seconds")
                spent = asyncio.run(
                    spend(
                        population,
                        stored,
                        port=port,
                        acquirer_id=scenarios.ACQUIRER,
                        secret=stack.secrets[scenarios.ACQUIRER],
                        seed=config.seed + 2,
                        duration_s_max=config.duration_s_max,
                    )
                )
                spending_s = time.perf_counter() - spending_started
                flags = asyncio.run(
                    read_flags(port=port, token=token, wait_s=config.adversaries.flag_wait_s)
                )
                report = risk_report(
                    population,
                    claims=answers,
                    winners=[v.person for v in stored],
                    redemptions=spent,
                    flags=flags,
                )
                report["kinds"]["ring"]["fake_redemptions_stored"] = _fake_redemptions_stored(
                    stack, population
                )
            report["redemption_phase_s"] = round(spending_s, 2)
            report["redemption_phase_started_at"] = spending_at
            summary["risk"] = report
            summary["targets"] = report.pop("targets")
            summary["targets_met"] = report.pop("targets_met")
            return summary


def _window_entries(port: int) -> int | None:
    """How many claims the round's start window took in: its draw's entries, as the
    public fairness API gives them once the draw is published (None if not within
    ``PUBLISH_WAIT_S``)."""
    path = f"/v1/public/campaigns/{scenarios.CAMPAIGN_ID}/rounds/r1/fairness"
    deadline = time.monotonic() + PUBLISH_WAIT_S
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while time.monotonic() < deadline:
            answer = client.get(path)
            entries = answer.json().get("entries") if answer.status_code == 200 else None
            if isinstance(entries, int):
                return entries
            time.sleep(0.5)
    return None


def _put_rules(stack: scenarios.Stack, path: Path) -> None:
    """The rules file in force from the server's start: drafted by the bench's maker,
    approved by its checker, as operators would."""
    row = risk_rules.draft_rules(stack.rt, path.read_text(encoding="utf-8"), actor="bench-maker")
    risk_rules.approve_rules(stack.rt, row.version, actor="bench-checker")


def _analyst_token(stack: scenarios.Stack) -> str:
    """An operator who reads the review queue: an analyst where the role exists."""
    for role in ("analyst", "checker"):
        try:
            return admin.add_operator(stack.rt, f"sim-{role}", role=role, actor="bench-maker")
        except InvalidInput:
            continue
    raise AssertionError("no operator role can read the review queue")


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)
