"""``lequan demo``: Shanghai's 2024 dining vouchers, end to end, on the
embedded default.

It builds a fresh store, imports the real-shaped campaign (stock scaled to
the crowd), has a maker draft it and a checker approve it, opens round one,
starts the platform on 127.0.0.1 and replays a crowd through the signed
channel API (three channels batching their users, some people outside
Shanghai, some retries, some second tries) and the acquirer API (quotes,
one-step and two-phase redemptions, a refund, refusals). Then it prints
what happened and checks the invariants against the store.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

from lequan.bootstrap import Platform, build_runtime, start_platform
from lequan.client import LequanAuth
from lequan.config import Settings
from lequan.demo_trade_in import TradeInSummary, run_trade_in_demo
from lequan.domain.campaigns import CampaignConfig
from lequan.domain.identity import synthetic_id_number
from lequan.examples import EXAMPLES_DIR, example_campaign, example_merchants
from lequan.http.app import create_app
from lequan.logging import configure_logging
from lequan.services import admin, campaigns
from lequan.services.invariants import check_campaign
from lequan.services.runtime import Runtime

__all__ = ["DemoSummary", "run_demo"]

CAMPAIGN_ID = "sh-dining-2024"
CHANNELS = ("wechat", "alipay", "unionpay")
ACQUIRER = "acq-unionpay"
SHANGHAI_DISTRICTS = (
    "310101",
    "310104",
    "310105",
    "310106",
    "310107",
    "310109",
    "310110",
    "310115",
)
ELSEWHERE = ("320100", "330100", "110101")
BATCH_ITEMS = 200
# With --pace: time to open the screen before the crowd arrives.
PACE_LEAD_S = 10.0
HTTP_TIMEOUT_S = 30.0


@dataclass
class DemoSummary:
    people: int
    registered: int
    claims: dict[str, int]
    vouchers_issued: int
    stock: int
    redemptions: dict[str, int]
    discount_paid_fen: int
    orders_fen: int
    budget_fen: int
    committed_fen: int
    duplicates: int
    acknowledged_missing: int
    invariant_problems: list[str]
    base_url: str

    @property
    def invariants_ok(self) -> bool:
        return (
            not self.invariant_problems
            and self.duplicates == 0
            and self.acknowledged_missing == 0
            and self.vouchers_issued <= self.stock
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "people": self.people,
            "registered": self.registered,
            "claims": self.claims,
            "vouchers_issued": self.vouchers_issued,
            "stock": self.stock,
            "oversold": max(0, self.vouchers_issued - self.stock),
            "duplicates": self.duplicates,
            "acknowledged_missing": self.acknowledged_missing,
            "redemptions": self.redemptions,
            "discount_paid_fen": self.discount_paid_fen,
            "orders_fen": self.orders_fen,
            "budget_fen": self.budget_fen,
            "committed_fen": self.committed_fen,
            "invariant_problems": self.invariant_problems,
            "invariants_ok": self.invariants_ok,
            "base_url": self.base_url,
        }


@dataclass(frozen=True)
class _Person:
    index: int
    channel: str
    user_id: str
    id_number: str
    district: str
    located: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scaled_campaign(rt: Runtime, people: int) -> CampaignConfig:
    """The example campaign with round one opening now and stock sized to the crowd."""
    per_channel = max(4, people // 5)  # ~60% of the crowd's demand: it sells out
    shares = {"d300-90": 0.4, "d500-150": 0.3, "d800-240": 0.15, "d1000-300": 0.15}
    stock = {c: {t: max(1, int(per_channel * s)) for t, s in shares.items()} for c in CHANNELS}
    return example_campaign(release_at=rt.clock.now(), stock=stock)


def _crowd(people: int, rng: random.Random) -> list[_Person]:
    crowd = []
    for i in range(people):
        district = rng.choice(SHANGHAI_DISTRICTS)
        located = district if rng.random() < 0.92 else rng.choice(ELSEWHERE)
        birth = date(1950, 1, 1) + timedelta(days=rng.randrange(0, 365 * 55))
        crowd.append(
            _Person(
                index=i,
                channel=CHANNELS[i % len(CHANNELS)],
                user_id=f"u{i:07d}",
                id_number=synthetic_id_number(district, birth, i % 1000),
                district=district,
                located=located,
            )
        )
    return crowd


def _serve(platform: Platform, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    config = uvicorn.Config(
        create_app(platform, close_on_shutdown=False),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lequan-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the demo server did not start on port {port}")
        time.sleep(0.05)
    return server, thread


def run_demo(  # the CLI's options, by name
    *,
    people: int,
    port: int,
    serve_after: bool,
    as_json: bool,
    data_dir: Path,
    trade_in: bool = True,
    pace_s: float = 0.0,
) -> bool:
    # Soft wrap: a URL, a token or a secret must survive a copy from a narrow terminal.
    console = Console(stderr=as_json, soft_wrap=True)
    configure_logging(json=True, level="WARNING")
    if data_dir.exists():
        shutil.rmtree(data_dir)
    settings = Settings(data_dir=data_dir, database_url="", redis_url="", sweep_interval_s=60)
    rt = build_runtime(settings)
    rt.store.upgrade()
    console.print(f"[bold]lequan demo[/] — embedded store at {settings.effective_database_url}")

    maker = admin.add_operator(rt, "alice", role="maker")
    admin.add_operator(rt, "bob", role="checker")
    viewer = admin.add_operator(rt, "vera", role="viewer")
    secrets_by_app = {
        c: admin.add_app(rt, app_id=c, kind="channel", name=c, actor="alice").secret
        for c in CHANNELS
    }
    acquirer_secret = admin.add_app(
        rt, app_id=ACQUIRER, kind="acquirer", name="UnionPay acquiring", actor="alice"
    ).secret
    config = _scaled_campaign(rt, people)
    campaigns.import_campaign(rt, config, actor="alice")
    lodging = campaigns.parse_campaign((EXAMPLES_DIR / "shanghai-lodging-2024.yaml").read_bytes())
    campaigns.import_campaign(rt, lodging, actor="alice")  # a draft beside it, for the console
    admin.import_merchants(rt, example_merchants(), actor="alice")
    campaigns.change_status(rt, CAMPAIGN_ID, "approve", actor="bob")
    campaigns.start_round(rt, CAMPAIGN_ID, "r1", actor="alice")
    stock = sum(n for per in config.rounds[0].stock.values() for n in per.values())
    console.print(
        f"campaign [bold]{CAMPAIGN_ID}[/] drafted by alice, approved by bob, round r1 open: "
        f"{stock} vouchers over {len(CHANNELS)} channels for {people} people"
    )

    platform = start_platform(rt)
    port = port or _free_port()
    server, thread = _serve(platform, port)
    base_url = f"http://127.0.0.1:{port}"
    screen_url = f"{base_url}/screen/login#token={viewer}"
    console.print(
        f"[bold]The big screen[/]: {screen_url}  (vera, viewer; the maker alice can pull the "
        f"switches: {base_url}/screen/login#token={maker})\n"
        f"The public page: {base_url}/public"
    )
    if pace_s:
        console.print(f"the crowd starts in {PACE_LEAD_S:g} s and runs for about {pace_s:g} s")
        time.sleep(PACE_LEAD_S)
    try:
        summary = _replay(
            platform, base_url, people, secrets_by_app, acquirer_secret, stock, console, pace_s
        )
    except BaseException:
        server.should_exit = True
        thread.join(10)
        platform.close()
        raise
    acted: TradeInSummary | None = None
    if trade_in:
        try:
            acted = run_trade_in_demo(home=data_dir / "trade-in", console=console)
        except BaseException:
            server.should_exit = True
            thread.join(10)
            platform.close()
            raise
    _report(summary, console, as_json, trade_in=acted)
    if serve_after:
        console.print(
            f"\n[bold]Serving on {base_url}[/] — API docs {base_url}/docs · "
            f"metrics {base_url}/metrics\n"
            f"  the big screen {screen_url}\n"
            f"  the public page {base_url}/public\n"
            f"  channel app [bold]wechat[/] secret {secrets_by_app['wechat']}\n"
            f"  acquirer app [bold]{ACQUIRER}[/] secret {acquirer_secret}\n"
            f"  operator token (alice, maker) {maker}\n"
            f"  store {settings.effective_database_url}; sign requests as docs/api.md shows.\n"
            "Ctrl-C to stop."
        )
        try:
            while thread.is_alive():
                thread.join(0.5)
        except KeyboardInterrupt:
            console.print("stopping")
    server.should_exit = True
    thread.join(10)
    platform.close()
    return summary.invariants_ok and (acted is None or acted.ok)


def _replay(  # noqa: PLR0917  # one call site; the names read better than a bag
    platform: Platform,
    base_url: str,
    people: int,
    secrets_by_app: dict[str, str],
    acquirer_secret: str,
    stock: int,
    console: Console,
    pace_s: float = 0.0,
) -> DemoSummary:
    rng = random.Random(2024)  # noqa: S311  # a reproducible crowd, not a secret
    crowd = _crowd(people, rng)
    clients = {
        c: httpx.Client(
            base_url=base_url, auth=LequanAuth(c, secrets_by_app[c]), timeout=HTTP_TIMEOUT_S
        )
        for c in CHANNELS
    }
    acquirer = httpx.Client(
        base_url=base_url, auth=LequanAuth(ACQUIRER, acquirer_secret), timeout=HTTP_TIMEOUT_S
    )
    try:
        registered = _register(clients, crowd)
        console.print(f"registered {registered} people through {len(CHANNELS)} channels")
        claims, acknowledged = _claim(clients, crowd, rng, pace_s=pace_s * 0.4)
        console.print("claims: " + ", ".join(f"{k} {v}" for k, v in sorted(claims.items())))
        redemptions, discount_fen, orders_fen = _redeem(
            acquirer, crowd, acknowledged, rng, pace_s=pace_s * 0.6
        )
    finally:
        for client in [*clients.values(), acquirer]:
            client.close()
    rt = platform.rt
    check = check_campaign(rt, CAMPAIGN_ID)
    with rt.store.unit_of_work() as uow:
        missing = sum(
            1 for voucher_id in acknowledged if uow.vouchers.get_voucher(voucher_id) is None
        )
        slots = Counter(
            (v.round_id, v.channel_id, v.person_id)
            for pid in {uow.people.account_person(p.channel, p.user_id) for p in crowd} - {None}
            for v in uow.vouchers.person_vouchers(
                str(pid), channel_id=None, after_id=None, limit=100
            )
        )
        row = uow.campaigns.get_campaign(CAMPAIGN_ID)
        assert row is not None
    return DemoSummary(
        people=people,
        registered=registered,
        claims=dict(claims),
        vouchers_issued=check.issued,
        stock=stock,
        redemptions=dict(redemptions),
        discount_paid_fen=discount_fen,
        orders_fen=orders_fen,
        budget_fen=row.budget_fen,
        committed_fen=row.committed_fen,
        duplicates=sum(n - 1 for n in slots.values() if n > 1),
        acknowledged_missing=missing,
        invariant_problems=check.problems,
        base_url=base_url,
    )


def _register(clients: dict[str, httpx.Client], crowd: list[_Person]) -> int:
    def one(p: _Person) -> bool:
        response = clients[p.channel].post(
            "/v1/persons",
            json={
                "channel_user_id": p.user_id,
                "id_number": p.id_number,
                "name": "市民" + chr(0x4E00 + p.index % 2000),
                "phone": f"139{p.index:08d}",
                "region_code": p.district,
                "location_region": p.located,
                "consent": True,
            },
            headers={"Idempotency-Key": f"reg-{p.user_id}"},
        )
        return response.status_code in (200, 201)

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one, crowd))


def _claim(
    clients: dict[str, httpx.Client],
    crowd: list[_Person],
    rng: random.Random,
    *,
    pace_s: float = 0.0,
) -> tuple[Counter[str], dict[str, _Person]]:
    """Each channel batches its users' claims; then a few singles, retries and second tries.
    With ``pace_s`` the batches are spread over about that many seconds, to be watched."""
    templates = ("d300-90", "d300-90", "d500-150", "d800-240", "d1000-300")
    wanted = {p.user_id: rng.choice(templates) for p in crowd}
    outcomes: Counter[str] = Counter()
    acknowledged: dict[str, _Person] = {}
    lock = threading.Lock()

    def item(p: _Person, key: str) -> dict[str, Any]:
        return {
            "idempotency_key": key,
            "channel_user_id": p.user_id,
            "campaign_id": CAMPAIGN_ID,
            "round_id": "r1",
            "template_id": wanted[p.user_id],
            "location_region": p.located,
        }

    def batch(channel: str, members: list[_Person]) -> None:
        body = {"items": [item(p, f"claim-{p.user_id}") for p in members]}
        response = clients[channel].post("/v1/claims/batch", json=body)
        response.raise_for_status()
        with lock:
            for p, result in zip(members, response.json()["results"], strict=True):
                outcomes[result["outcome"]] += 1
                if result["outcome"] == "issued":
                    acknowledged[result["voucher"]["voucher_id"]] = p

    jobs = []
    for channel in CHANNELS:
        members = [p for p in crowd if p.channel == channel]
        jobs += [
            (channel, members[i : i + BATCH_ITEMS]) for i in range(0, len(members), BATCH_ITEMS)
        ]
    rng.shuffle(jobs)
    if pace_s:
        # Smaller batches, one at a time: the screen shows a crowd arriving, not a wall.
        jobs = [(c, m[i : i + 5]) for c, m in jobs for i in range(0, len(m), 5)]
        for job in jobs:
            batch(*job)
            time.sleep(pace_s / len(jobs))
    else:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda job: batch(*job), jobs))

    # A tenth of the people press again: half retry with the same key (the
    # answer is replayed), half make a fresh claim (already claimed).
    again = rng.sample(crowd, max(1, len(crowd) // 10))
    for n, p in enumerate(again):
        fresh = n % 2 == 1
        key = f"claim-{p.user_id}" + (f"-again-{secrets.token_hex(2)}" if fresh else "")
        body = {k: v for k, v in item(p, key).items() if k != "idempotency_key"}
        response = clients[p.channel].post(
            "/v1/claims", json=body, headers={"Idempotency-Key": key}
        )
        if response.headers.get("Idempotent-Replayed") == "true":
            outcomes["replayed"] += 1
        else:
            outcomes[
                response.json().get("code", "issued") if response.status_code >= 400 else "issued"
            ] += 1
            if response.status_code == 201:
                acknowledged[response.json()["voucher"]["voucher_id"]] = p
    return outcomes, acknowledged


def _redeem(
    acquirer: httpx.Client,
    crowd: list[_Person],
    acknowledged: dict[str, _Person],
    rng: random.Random,
    *,
    pace_s: float = 0.0,
) -> tuple[Counter[str], int, int]:
    """About 70% of vouchers are spent (Hangzhou 2020 saw 70%); some two-phase, one refund.
    With ``pace_s`` the redemptions are spread over about that many seconds."""
    outcomes: Counter[str] = Counter()
    discount_fen = orders_fen = 0
    merchants = ("m-cafe-001", "m-noodle-002", "m-burger-003")
    spent = [vid for vid in acknowledged if rng.random() < 0.7]
    refunded_one = False
    for n, voucher_id in enumerate(spent):
        if pace_s:
            time.sleep(pace_s / len(spent))
        p = acknowledged[voucher_id]
        merchant = rng.choice(merchants)
        order = {
            "channel_id": p.channel,
            "channel_user_id": p.user_id,
            "merchant_id": merchant,
            "mode": "in_store",
        }
        if n % 25 == 0:  # a diner who did not spend enough
            r = acquirer.post("/v1/redemptions/quote", json={**order, "order_amount_fen": 5000})
            if r.status_code == 200 and not r.json()["quotes"]:
                outcomes["quote_empty_below_threshold"] += 1
        amount = rng.choice((32000, 56800, 88000, 120000, 150000))
        quote = acquirer.post("/v1/redemptions/quote", json={**order, "order_amount_fen": amount})
        usable = [
            q for q in quote.json().get("quotes", []) if q["voucher"]["voucher_id"] == voucher_id
        ]
        if not usable:
            outcomes["not_usable_for_order"] += 1
            continue
        lock = n % 5 == 0
        r = acquirer.post(
            "/v1/redemptions",
            json={
                **order,
                "voucher_id": voucher_id,
                "order_id": f"o-{n}",
                "order_amount_fen": amount,
                "capture": "lock" if lock else "one_step",
            },
            headers={"Idempotency-Key": f"redeem-{voucher_id}"},
        )
        if r.status_code != 201:
            outcomes[r.json().get("code", str(r.status_code))] += 1
            continue
        redemption = r.json()
        if lock:
            r = acquirer.post(
                f"/v1/redemptions/{redemption['redemption_id']}/confirm",
                json={},
                headers={"Idempotency-Key": f"confirm-{voucher_id}"},
            )
            if r.status_code != 200:
                outcomes[r.json().get("code", str(r.status_code))] += 1
                continue
            outcomes["locked_then_confirmed"] += 1
        else:
            outcomes["redeemed_one_step"] += 1
        discount_fen += redemption["discount_fen"]
        orders_fen += redemption["order_amount_fen"]
        if not refunded_one:
            refunded_one = True
            r = acquirer.post(
                f"/v1/redemptions/{redemption['redemption_id']}/refunds",
                json={"refund_amount_fen": amount, "reason": "dish sent back"},
                headers={"Idempotency-Key": f"refund-{voucher_id}"},
            )
            if r.status_code == 201:
                outcomes[f"refunded_voucher_{r.json()['voucher_state']}"] += 1
                discount_fen -= redemption["discount_fen"]
                orders_fen -= redemption["order_amount_fen"]
            # Spending it again is refused: one voucher, used once.
        again = acquirer.post(
            "/v1/redemptions",
            json={
                **order,
                "voucher_id": voucher_id,
                "order_id": f"o-{n}-again",
                "order_amount_fen": amount,
            },
            headers={"Idempotency-Key": f"redeem-again-{voucher_id}"},
        )
        if again.status_code == 409 and again.json()["code"] == "already_redeemed":
            outcomes["second_spend_refused"] += 1
    return outcomes, discount_fen, orders_fen


def _report(
    summary: DemoSummary, console: Console, as_json: bool, *, trade_in: TradeInSummary | None
) -> None:
    if as_json:
        shown = summary.as_dict()
        if trade_in is not None:
            shown["trade_in"] = trade_in.as_dict()
        print(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    table = Table(title="claims by outcome")
    table.add_column("outcome")
    table.add_column("answers", justify="right")
    for outcome, n in sorted(summary.claims.items(), key=lambda kv: -kv[1]):
        table.add_row(outcome, str(n))
    console.print(table)
    table = Table(title="redemptions")
    table.add_column("what")
    table.add_column("count", justify="right")
    for outcome, n in sorted(summary.redemptions.items(), key=lambda kv: -kv[1]):
        table.add_row(outcome, str(n))
    console.print(table)
    ok = "[green]ok[/]" if summary.invariants_ok else "[red]FAILED[/]"
    leverage = summary.orders_fen / summary.discount_paid_fen if summary.discount_paid_fen else 0.0
    console.print(
        f"vouchers issued {summary.vouchers_issued} of stock {summary.stock} · "
        f"subsidy paid ¥{summary.discount_paid_fen / 100:,.2f} "
        f"on orders of ¥{summary.orders_fen / 100:,.2f} "
        f"(leverage {leverage:.1f}×) · budget committed ¥{summary.committed_fen / 100:,.2f} "
        f"of ¥{summary.budget_fen / 100:,.2f}"
    )
    console.print(
        f"invariants {ok}: oversold {max(0, summary.vouchers_issued - summary.stock)}, "
        f"duplicates {summary.duplicates}, "
        f"acknowledged but missing {summary.acknowledged_missing}, "
        f"ledger/budget {'; '.join(summary.invariant_problems) or 'balanced'}"
    )
