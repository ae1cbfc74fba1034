"""What ``python -m benchmarks`` measures, each scenario one function returning a Figure.

Every lequan scenario prepares its store first (a campaign with room for
every claim, people bulk-registered, requests signed in advance) and then
measures only the serving. Each run uses people of its own, so a run never
replays another's work.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.loadgen import LoadResult, build_request, run_load
from lequan.adapters.crypto import generate_key_file
from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.sql import migrate
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.engine import create_engine
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.bootstrap import build_runtime, require_matching_keys
from lequan.config import Settings
from lequan.domain.campaigns import CampaignConfig
from lequan.examples import example_campaign, example_merchants
from lequan.ports import ClaimGate, ReserveRequest
from lequan.services import admin, campaigns
from lequan.services.runtime import Runtime
from lequan.signing import signature_headers

__all__ = ["Figure", "Stack", "gate_rate", "prepare_stack", "release_soon"]

CAMPAIGN_ID = "sh-dining-2024"
CHANNEL = "wechat"
ACQUIRER = "acq-unionpay"
TEMPLATE = "d300-90"


@dataclass
class Figure:
    """One measurement: a rate and, where requests were timed, latencies."""

    value: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)


def gate_rate(gate: ClaimGate, *, claims: int, batch: int = 1000) -> Figure:
    """Reservations per second through the gate alone, in batches."""
    pool = f"bench-{uuid.uuid4().hex[:8]}:r1:wechat"
    gate.reset_pool(pool, stock={TEMPLATE: claims}, claimed={})
    requests = [ReserveRequest(pool, TEMPLATE, f"p{i}", 1, "bench", 0) for i in range(claims)]
    started = time.perf_counter()
    ok = 0
    for i in range(0, claims, batch):
        ok += sum(1 for r in gate.reserve(requests[i : i + batch]) if r.claim_seq)
    elapsed_s = time.perf_counter() - started
    gate.reset_pool(pool, stock={}, claimed={})
    return Figure(claims / elapsed_s, checks={"reserved": ok, "expected": claims})


@dataclass
class Stack:
    """A prepared store and the settings a lequan server needs to serve it."""

    env: dict[str, str]
    rt: Runtime
    secrets: dict[str, str]
    people: int
    next_person: int = 0

    def take_people(self, n: int) -> range:
        assert self.next_person + n <= self.people, "prepare more people for this bench"
        taken = range(self.next_person, self.next_person + n)
        self.next_person += n
        return taken


def split_stock(stock: int, channels: tuple[str, ...]) -> dict[str, int]:
    """``stock`` shared out over ``channels`` as evenly as whole vouchers allow."""
    share, extra = divmod(stock, len(channels))
    return {c: share + (1 if n < extra else 0) for n, c in enumerate(channels)}


def channel_for(person: int, channels: tuple[str, ...] = (CHANNEL,)) -> str:
    """The one channel through which person ``person`` registered."""
    return channels[person % len(channels)]


def _campaign(
    now: datetime,
    stock_by_channel: dict[str, int],
    *,
    start_window_s: int = 0,
    start_window_intake_s: int = 0,
) -> CampaignConfig:
    # Opened five minutes ago, so the bench never waits for a release. With a start
    # window, a day ahead instead: ``release_soon`` releases it when the load is ready
    # (a window long past would have been drawn, empty, by then).
    stock = {channel: {TEMPLATE: count} for channel, count in stock_by_channel.items()}
    release_at = now + timedelta(days=1) if start_window_s else now - timedelta(minutes=5)
    return example_campaign(
        release_at=release_at,
        stock=stock,
        start_window_s=start_window_s,
        start_window_intake_s=start_window_intake_s,
    )


def release_soon(stack: Stack, *, lead_s: float, round_id: str = "r1") -> float:
    """Move a round's release to ``lead_s`` from now (servers see it within their
    campaign cache's ttl); the unix time of the release. For a start window."""
    now = stack.rt.clock.now()
    release_at = now + timedelta(seconds=lead_s)
    with stack.rt.store.unit_of_work() as uow:
        row = uow.campaigns.get_campaign(CAMPAIGN_ID)
        assert row is not None
        _release, ends_at = row.rounds[round_id]
        uow.campaigns.set_round_times(CAMPAIGN_ID, round_id, release_at=release_at, ends_at=ends_at)
        uow.commit()
    return release_at.timestamp()


@contextmanager
def prepare_stack(
    directory: Path,
    *,
    database_url: str,
    redis_url: str,
    people: int,
    stock_by_channel: dict[str, int] | None = None,
    channels: tuple[str, ...] = (CHANNEL,),
    gate_buckets: int = 1,
    start_window_s: int = 0,
    start_window_intake_s: int = 0,
) -> Iterator[Stack]:
    """A migrated store with one live campaign, apps, merchants and ``people`` registered.

    With ``start_window_s`` the campaign's rounds open with that window (and its
    intake), round r1 a day ahead until ``release_soon``."""
    key_file = directory / "keys.json"
    generate_key_file(key_file)
    prefix = f"lqbench:{uuid.uuid4().hex[:8]}:"
    env = {
        "LEQUAN_DATA_DIR": str(directory),
        "LEQUAN_DATABASE_URL": database_url,
        "LEQUAN_REDIS_URL": redis_url,
        "LEQUAN_REDIS_KEY_PREFIX": prefix,
        "LEQUAN_KEY_FILE": str(key_file),
        "LEQUAN_LOG_LEVEL": "WARNING",
        "LEQUAN_APP_RATE_PER_S": "10000000",
        "LEQUAN_APP_BURST": "10000000",
        "LEQUAN_GATE_BUCKETS": str(gate_buckets),
        # An approved version of the risk rules is in force within this long (bench rows
        # switch the rules on and off between two measurements).
        "LEQUAN_RISK_RULES_POLL_S": "0.2",
    }
    settings = Settings(
        data_dir=directory,
        database_url=database_url,
        redis_url=redis_url,
        redis_key_prefix=prefix,
        key_file=key_file,
        gate_buckets=gate_buckets,
    )
    engine = create_engine(settings.effective_database_url)
    migrate.upgrade(engine)
    engine.dispose()
    rt = build_runtime(settings, gate=None if redis_url else MemoryGate())
    # The key canaries pinned first: the people written in bulk below carry placeholder
    # ID numbers, which a store without canaries would be checked against at start.
    require_matching_keys(rt)
    now = rt.clock.now()
    admin.add_operator(rt, "bench-maker", role="maker")
    admin.add_operator(rt, "bench-checker", role="checker")
    keys = {
        c: admin.add_app(rt, app_id=c, kind="channel", name=c, actor="bench-maker").secret
        for c in channels
    }
    keys[ACQUIRER] = admin.add_app(
        rt, app_id=ACQUIRER, kind="acquirer", name=ACQUIRER, actor="bench-maker"
    ).secret
    campaigns.import_campaign(
        rt,
        _campaign(
            now,
            stock_by_channel or {CHANNEL: people},
            start_window_s=start_window_s,
            start_window_intake_s=start_window_intake_s,
        ),
        actor="bench-maker",
    )
    admin.import_merchants(
        rt,
        example_merchants(dining_only=True),
        actor="bench-maker",
    )
    campaigns.change_status(rt, CAMPAIGN_ID, "approve", actor="bench-checker")
    campaigns.change_status(rt, CAMPAIGN_ID, "activate", actor="bench-checker")
    _register_in_bulk(rt, people, now, channels)
    _analyze_people(rt)
    try:
        yield Stack(env=env, rt=rt, secrets=keys, people=people)
    finally:
        rt.gate.close()
        rt.store.dispose()


def _analyze_people(rt: Runtime) -> None:
    """Statistics (and the visibility map) for the people just loaded in bulk, as
    PostgreSQL's autovacuum keeps them for people who registered over the days
    before a release.

    Planned on statistics from before the load, a batch's claimants lookup
    took a channel for a couple of dozen accounts, read every account of
    the channel and filtered: 27.6 ms per 1,000 people with 100,000 accounts
    per channel, 7.4 ms with these statistics (EXPLAIN ANALYZE, ad hoc); the
    million-person crowd on PostgreSQL answered 22,000/s without them and
    31,000–33,500/s with. The tables a sale fills (vouchers, the ledger) are
    left to PostgreSQL, as in a real deployment. SQLite gathers no
    statistics unasked, in a bench or in production.
    """
    if sql_store(rt.store).engine.dialect.name != "postgresql":
        return
    # VACUUM too, as autovacuum does after a table's inserts: it marks the pages
    # all-visible, which lets the claimants lookup read from its index alone (0004).
    with sql_store(rt.store).engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql("VACUUM ANALYZE persons, person_accounts")


def _register_in_bulk(rt: Runtime, people: int, now: datetime, channels: tuple[str, ...]) -> None:
    """People registered straight into the store (registration is not what is measured)."""
    name_key, name_enc = rt.keyring.encrypt("name", "市民")
    chunk = 10_000
    for start in range(0, people, chunk):
        rows = range(start, min(people, start + chunk))
        with sql_store(rt.store).unit_of_work() as uow:
            uow.connection.execute(
                sa.insert(t.persons),
                [
                    {
                        "id": f"pb{i}",
                        "id_number_bidx": f"bench{i}",
                        "id_number_enc": name_enc,
                        "key_id": name_key,
                        "consent_version": "2024-01",
                        "consent_at": now,
                        "created_at": now,
                    }
                    for i in rows
                ],
            )
            uow.connection.execute(
                sa.insert(t.person_accounts),
                [
                    {
                        "channel_id": channel_for(i, channels),
                        "channel_user_id": f"b{i}",
                        "person_id": f"pb{i}",
                        "created_at": now,
                        "name_enc": name_enc,
                        "phone_enc": name_enc,
                        "phone_bidx": f"bench{i}",
                        "key_id": name_key,
                        "residence_region": "310104",
                        "consent_version": "2024-01",
                        "consent_at": now,
                    }
                    for i in rows
                ],
            )
            uow.commit()


def _signed(  # noqa: PLR0917  # reads like the request line it builds
    app_id: str, secret: str, method: str, target: str, body: bytes, port: int, **headers: str
) -> bytes:
    signed = signature_headers(
        app_id,
        secret,
        method,
        target,
        body,
        timestamp=int(time.time()),
        nonce=secrets.token_hex(12),
    )
    return build_request(
        method,
        target,
        host=f"127.0.0.1:{port}",
        headers={"Content-Type": "application/json", **signed, **headers},
        body=body,
    )


def _claim_item(i: int, round_id: str = "r1") -> dict[str, Any]:
    return {
        "channel_user_id": f"b{i}",
        "campaign_id": CAMPAIGN_ID,
        "round_id": round_id,
        "template_id": TEMPLATE,
        "location_region": "310104",
    }


def batch_claims(
    stack: Stack,
    port: int,
    *,
    claims: int,
    batch: int,
    connections: int,
    duration_s: float,
    extra: Callable[[int], dict[str, Any]] | None = None,
) -> Figure:
    """Durable claims per second through POST /v1/claims/batch; ``extra`` adds fields to
    person ``i``'s item (the risk signals, ``benchmarks/risk.py``)."""
    people = stack.take_people(claims)
    requests = []
    for start in range(people.start, people.stop, batch):
        items = [
            {**_claim_item(i), "idempotency_key": f"bk-{i}", **(extra(i) if extra else {})}
            for i in range(start, min(people.stop, start + batch))
        ]
        body = json.dumps({"items": items}, separators=(",", ":")).encode()
        requests.append(
            _signed(CHANNEL, stack.secrets[CHANNEL], "POST", "/v1/claims/batch", body, port)
        )
    result = run_load(
        "127.0.0.1",
        port,
        requests,
        connections=connections,
        duration_s=duration_s,
        keep_bodies=True,
    )
    issued = sum(
        json.loads(b)["outcomes"].get("issued", 0)
        for b in result.bodies
        if b.startswith(b'{"results"')
    )
    return Figure(
        issued / result.elapsed_s,
        p50_ms=result.percentile_ms(0.5),
        p99_ms=result.percentile_ms(0.99),
        checks={"issued": issued, "batches": result.requests, "statuses": result.statuses},
    )


def service_batch_claims(stack: Stack, *, claims: int, batch: int = 1000) -> Figure:
    """Durable claims per second through ``ClaimService.claim`` in-process: no HTTP at all.

    One caller, batch after batch: what the claim path itself costs.
    """
    from lequan.bootstrap import start_platform
    from lequan.services.claiming import ClaimRequest
    from lequan.services.idempotency import Idempotency

    people = stack.take_people(claims)
    requests = [
        ClaimRequest(
            f"b{i}", CAMPAIGN_ID, "r1", TEMPLATE, "310104", Idempotency(CHANNEL, f"pk-{i}", "h")
        )
        for i in people
    ]
    platform = start_platform(stack.rt, sweep=False)
    try:
        started = time.perf_counter()
        issued = 0
        for i in range(0, len(requests), batch):
            results = platform.claims.claim(CHANNEL, requests[i : i + batch])
            issued += sum(1 for r in results if r.outcome == "issued")
        elapsed_s = time.perf_counter() - started
    finally:
        platform.stop_workers()
    return Figure(issued / elapsed_s, checks={"issued": issued})


def service_redemptions(stack: Stack, *, count: int, callers: int = 32) -> Figure:
    """One-step redemptions per second through the ``RedemptionWriter`` in-process,
    ``callers`` threads waiting for their answers: the redemption path without HTTP.

    The vouchers are claimed first, in-process, outside the clock.
    """
    from concurrent.futures import ThreadPoolExecutor

    from lequan.bootstrap import start_platform
    from lequan.services.claiming import ClaimRequest
    from lequan.services.idempotency import Idempotency
    from lequan.services.redemption import RedeemOrder
    from lequan.services.redemption_batches import OneStep

    people = stack.take_people(count)
    platform = start_platform(stack.rt, sweep=False)
    try:
        claims = [
            ClaimRequest(
                f"b{i}", CAMPAIGN_ID, "r1", TEMPLATE, "310104", Idempotency(CHANNEL, f"sc-{i}", "h")
            )
            for i in people
        ]
        vouchers: dict[int, str] = {}
        for start in range(0, len(claims), 1000):
            results = platform.claims.claim(CHANNEL, claims[start : start + 1000])
            for i, result in zip(people[start : start + 1000], results, strict=True):
                if result.outcome == "issued":
                    vouchers[i] = result.answer.body["voucher"]["voucher_id"]
        items = [
            OneStep(
                voucher_id,
                RedeemOrder(ACQUIRER, "m-cafe-001", CHANNEL, f"b{i}", f"sr-{i}", 32000, "in_store"),
                None,
                Idempotency(ACQUIRER, f"sr-{i}", "h"),
            )
            for i, voucher_id in vouchers.items()
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            answers = list(
                pool.map(lambda item: platform.redemptions.submit(item).result(60), items)
            )
        elapsed_s = time.perf_counter() - started
    finally:
        platform.stop_workers()
    redeemed = sum(1 for answer, _replayed in answers if answer.status_code == 201)
    return Figure(redeemed / elapsed_s, checks={"redeemed": redeemed, "vouchers": len(items)})


def single_claims(
    stack: Stack, port: int, *, claims: int, connections: int, duration_s: float
) -> Figure:
    """Durable claims per second through POST /v1/claims, one claim per request."""
    people = stack.take_people(claims)
    requests = [
        _signed(
            CHANNEL,
            stack.secrets[CHANNEL],
            "POST",
            "/v1/claims",
            json.dumps(_claim_item(i), separators=(",", ":")).encode(),
            port,
            **{"Idempotency-Key": f"sk-{i}"},
        )
        for i in people
    ]
    result = run_load("127.0.0.1", port, requests, connections=connections, duration_s=duration_s)
    issued = result.statuses.get(201, 0)
    return _rate(result, issued, {"issued": issued, "statuses": result.statuses})


# Seconds between moving a round's release and the release: the servers' campaign
# caches (campaign_cache_ttl_s, 1 s) read the new time meanwhile.
RELEASE_LEAD_S = 2.0


def window_claims(
    stack: Stack,
    port: int,
    *,
    round_id: str,
    claims: int,
    batch: int | None,
    window_s: int,
) -> Figure:
    """Durable claims per second through a round's start window: every claim sent at
    the release (one request per connection), held, drawn and committed.

    The rate is of the server's busy time, read from the store: from the first
    claim's arrival to the last's (each voucher's ``issued_at``), plus from the
    draw's start (the window's close and ``draw_grace_ms``) to the last commit
    (``updated_at``). The window's idle rest is not the claim path's cost.
    ``batch`` None: single claims.
    """
    people = stack.take_people(claims)
    requests = []
    if batch is None:
        for i in people:
            body = json.dumps(_claim_item(i, round_id), separators=(",", ":")).encode()
            requests.append(
                _signed(
                    CHANNEL,
                    stack.secrets[CHANNEL],
                    "POST",
                    "/v1/claims",
                    body,
                    port,
                    **{"Idempotency-Key": f"ws-{i}"},
                )
            )
    else:
        for start in range(people.start, people.stop, batch):
            items = [
                {**_claim_item(i, round_id), "idempotency_key": f"wb-{i}"}
                for i in range(start, min(people.stop, start + batch))
            ]
            body = json.dumps({"items": items}, separators=(",", ":")).encode()
            requests.append(
                _signed(CHANNEL, stack.secrets[CHANNEL], "POST", "/v1/claims/batch", body, port)
            )
    release = release_soon(stack, lead_s=RELEASE_LEAD_S, round_id=round_id)
    time.sleep(max(0.0, release - time.time()) + 0.05)
    result = run_load(
        "127.0.0.1",
        port,
        requests,
        connections=len(requests),
        duration_s=min(120.0, window_s + 60.0),
    )
    v = t.vouchers.c
    with sql_store(stack.rt.store).unit_of_work(readonly=True) as uow:
        first, last, committed, issued = uow.connection.execute(
            sa.select(
                sa.func.min(v.issued_at),
                sa.func.max(v.issued_at),
                sa.func.max(v.updated_at),
                sa.func.count(),
            ).where(v.round_id == round_id, v.draw_ticket.is_not(None))
        ).one()
    drawn_from = datetime.fromtimestamp(release, UTC) + timedelta(
        seconds=window_s, milliseconds=stack.rt.settings.draw_grace_ms
    )
    busy_s = (_aware(last) - _aware(first)).total_seconds() + max(
        0.0, (_aware(committed) - drawn_from).total_seconds()
    )
    return Figure(
        issued / busy_s if busy_s > 0 else 0.0,
        checks={
            "issued": issued,
            "statuses": result.statuses,
            "entering_s": round((_aware(last) - _aware(first)).total_seconds(), 3),
            "drawing_s": round((_aware(committed) - drawn_from).total_seconds(), 3),
        },
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _rate(result: LoadResult, count: int, checks: dict[str, Any]) -> Figure:
    return Figure(
        count / result.elapsed_s,
        p50_ms=result.percentile_ms(0.5),
        p99_ms=result.percentile_ms(0.99),
        checks=checks,
    )


def bare(port: int, *, requests: int, connections: int, duration_s: float) -> Figure:
    body = json.dumps(_claim_item(0)).encode()
    prepared = [
        build_request(
            "POST",
            "/v1/claims",
            host=f"127.0.0.1:{port}",
            headers={"Content-Type": "application/json"},
            body=body,
        )
    ] * requests
    result = run_load("127.0.0.1", port, prepared, connections=connections, duration_s=duration_s)
    return _rate(result, result.statuses.get(201, 0), {"statuses": result.statuses})


def redemptions(
    stack: Stack, port: int, *, count: int, connections: int, duration_s: float
) -> Figure:
    """One-step redemptions per second through POST /v1/redemptions (vouchers claimed first)."""
    claimed = batch_claims(stack, port, claims=count, batch=1000, connections=2, duration_s=60)
    assert claimed.checks["issued"] == count, claimed.checks
    with sql_store(stack.rt.store).unit_of_work() as uow:
        rows = uow.connection.execute(
            sa.select(t.vouchers.c.id, t.person_accounts.c.channel_user_id)
            .join(t.person_accounts, t.person_accounts.c.person_id == t.vouchers.c.person_id)
            .where(t.vouchers.c.state == "issued")
            .order_by(t.vouchers.c.id.desc())
            .limit(count)
        ).all()
    requests = []
    for n, (voucher_id, user) in enumerate(rows):
        body = json.dumps(
            {
                "voucher_id": voucher_id,
                "channel_id": CHANNEL,
                "channel_user_id": user,
                "merchant_id": "m-cafe-001",
                "order_id": f"bench-{n}",
                "order_amount_fen": 32000,
                "mode": "in_store",
            },
            separators=(",", ":"),
        ).encode()
        requests.append(
            _signed(
                ACQUIRER,
                stack.secrets[ACQUIRER],
                "POST",
                "/v1/redemptions",
                body,
                port,
                **{"Idempotency-Key": f"rk-{voucher_id}"},
            )
        )
    result = run_load("127.0.0.1", port, requests, connections=connections, duration_s=duration_s)
    redeemed = result.statuses.get(201, 0)
    return _rate(result, redeemed, {"redeemed": redeemed, "statuses": result.statuses})


def now_utc() -> datetime:
    return datetime.now(UTC)


Scenario = Callable[[], Figure]
