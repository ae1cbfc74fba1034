"""``lequan demo``, its trade-in act: one central platform and two provinces, each its
own process on loopback, stood up the way operators do it.

Central starts (``lequan central serve``) and registers Shanghai and Zhejiang
(``lequan central province add``); each province is initialised from its file
(``lequan province init``) and served (``lequan province serve``). Then, over the
signed APIs: a resident applies for a refrigerator in Shanghai (central locks
the qualification); the same resident is refused one in Zhejiang (used in
another province) but gets a television there; Shanghai's store redeems the
refrigerator with its product details; the resident returns it (the
qualification comes back with the voucher) and buys another; central is
stopped: an application answers 503 with nothing issued while the redemption
of an issued voucher goes on; central restarts, the relays catch up, and each
province reconciles the day with central.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from lequan.bootstrap import build_runtime
from lequan.client import LequanAuth
from lequan.config import Settings
from lequan.domain.identity import synthetic_id_number
from lequan.examples import EXAMPLES_DIR, example_campaign
from lequan.province import init_province, serve_env
from lequan.services import admin, campaigns

__all__ = ["DemoStepFailed", "TradeInSummary", "run_trade_in_demo"]

CHANNEL = "unionpay"
ACQUIRER = "acq-unionpay"
STORES = {"310000": "m-appliance-xuhui", "330000": "zj-gome-yanan"}
CAMPAIGNS = {"310000": "sh-trade-in-2024", "330000": "zj-trade-in-2024"}
NAMES = {"310000": "上海市", "330000": "浙江省"}
# How long a process may take to answer /readyz, and one HTTP call.
READY_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 60.0
# The provinces' relays, quick for a demo (production keeps the defaults).
# Reconciliation days are China Standard Time's.
_CST = timezone(timedelta(hours=8))
RELAY_ENV = {"LEQUAN_RELAY_IDLE_S": "0.2", "LEQUAN_RELAY_BACKOFF_MAX_S": "1"}


class DemoStepFailed(Exception):
    """A step did not answer as it should: the act stops there."""


@dataclass
class TradeInSummary:
    steps: list[dict[str, Any]] = field(default_factory=list)
    reconciliations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(step["as_expected"] for step in self.steps) and all(
            r.get("ok") for r in self.reconciliations.values()
        )

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": self.steps, "reconciliations": self.reconciliations}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _lequan(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # our own interpreter and arguments
        [sys.executable, "-m", "lequan.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


class _Process:
    """One server process of the demo, started and stopped as an operator would."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], url: str, log: Path):
        self.name, self.args, self.env, self.url, self.log = name, args, env, url, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603  # our own interpreter and arguments
                [sys.executable, "-m", "lequan.cli", *self.args],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.log}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become ready: see {self.log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None


@dataclass
class _Province:
    code: str
    url: str
    channel_secret: str
    acquirer_secret: str
    operator_token: str
    process: _Process

    def channel(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            auth=LequanAuth(CHANNEL, self.channel_secret),
            timeout=HTTP_TIMEOUT_S,
        )

    def acquirer(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            auth=LequanAuth(ACQUIRER, self.acquirer_secret),
            timeout=HTTP_TIMEOUT_S,
        )

    def admin(self, path: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}{path}",
            headers={"Authorization": f"Bearer {self.operator_token}"},
            timeout=HTTP_TIMEOUT_S,
        )
        body: dict[str, Any] = response.json()
        body["_status"] = response.status_code
        return body


def _province_file(
    home: Path, code: str, port: int, *, central_url: str, credentials: Path
) -> Path:
    """A province's file, as an operator writes it (examples/provinces/ shows two)."""
    folder = home / code
    folder.mkdir(parents=True)
    if code == "310000":
        merchants = (EXAMPLES_DIR / "merchants-trade-in.csv").read_text(encoding="utf-8")
    else:
        merchants = (EXAMPLES_DIR / "provinces" / "zhejiang-merchants.csv").read_text(
            encoding="utf-8"
        )
    # Enrolment comes once the campaign exists; the file only places the merchants.
    lines = merchants.splitlines()
    placed = [lines[0]] + [",".join(line.split(",")[:6]) + "," for line in lines[1:] if line]
    (folder / "merchants.csv").write_text("\n".join(placed) + "\n", encoding="utf-8")
    acquirers = sorted({line.split(",")[5] for line in lines[1:] if line})
    config: dict[str, Any] = {
        "name": f"{NAMES[code]}以旧换新平台 (demo)",
        "data_dir": "data",
        "host": "127.0.0.1",
        "port": port,
        "central": {"url": central_url, "credentials_file": str(credentials)},
        "channels": [{"id": CHANNEL, "name": "云闪付"}],
        "acquirers": [{"id": a, "name": a} for a in acquirers],
        "merchants_file": "merchants.csv",
        "operator": {"id": f"op-{code}", "role": "maker"},
    }
    # The province's region code first, as the examples have it.
    config = dict([("code", code), *config.items()])
    path = folder / "province.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), "utf-8")
    return path


def _open_campaign(path: Path, code: str, merchants: Path) -> None:
    """Import the trade-in campaign (the province's maker), approve and open it (a
    checker), and enrol the province's stores in it."""
    env = serve_env(path)
    settings = Settings.model_validate(
        {key.removeprefix("LEQUAN_").lower(): value for key, value in env.items()}
    )
    rt = build_runtime(settings)
    try:
        now = rt.clock.now()
        stock = {CHANNEL: {"refrigerator": 50, "tv": 50, "washing-machine": 50, "phone": 50}}
        config = example_campaign("shanghai-trade-in-2024.yaml", release_at=now, stock=stock)
        if code != "310000":
            config = config.model_copy(
                update={
                    "id": CAMPAIGNS[code],
                    "name": "浙江 家电以旧换新补贴 2024 (demo)",
                    "issuer": "浙江省商务厅",
                    "eligibility": config.eligibility.model_copy(update={"regions": (code,)}),
                }
            )
        maker = f"op-{code}"
        campaigns.import_campaign(rt, config, actor=maker)
        admin.add_operator(rt, f"checker-{code}", role="checker")
        campaigns.change_status(rt, config.id, "approve", actor=f"checker-{code}")
        campaigns.change_status(rt, config.id, "activate", actor=f"checker-{code}")
        lines = merchants.read_text(encoding="utf-8").splitlines()
        enrolled = [lines[0]] + [line.rstrip(",") + "," + config.id for line in lines[1:] if line]
        admin.import_merchants(rt, "\n".join(enrolled) + "\n", actor=maker)
    finally:
        rt.store.dispose()


def _fridge(serial: str, invoice: str, price_fen: int = 599_900) -> dict[str, Any]:
    return {
        "category": "refrigerator",
        "brand": "Haier",
        "model": "BCD-470WGHTDEDW",
        "energy_grade": 1,
        "price_fen": price_fen,
        "serial_number": serial,
        "invoice_number": invoice,
        "old_appliance_handed_in": True,
    }


class _Story:
    """The residents and the acquirers, one step at a time, each printed."""

    def __init__(self, console: Console, summary: TradeInSummary) -> None:
        self.console = console
        self.summary = summary
        self._keys = 0

    def key(self) -> str:
        self._keys += 1
        return f"demo-{self._keys}-{time.time_ns()}"

    def step(self, what: str, response: httpx.Response, expected: int, code: str = "") -> Any:
        body = response.json()
        got = str(body.get("code", "")) if response.status_code >= 400 else ""
        as_expected = response.status_code == expected and got == code
        mark = "[green]✓[/]" if as_expected else "[red]✗[/]"
        answer = f"{response.status_code} {got}".strip()
        self.console.print(f"  {mark} {what}: [bold]{answer}[/]")
        if not as_expected:
            if response.status_code >= 400:
                self.console.print(f"      [red]{body.get('message', '')}[/]")
            raise DemoStepFailed(what)
        self.summary.steps.append(
            {
                "step": what,
                "status": response.status_code,
                "refusal": got,
                "as_expected": as_expected,
            }
        )
        return body


def _apply(
    province: _Province, story: _Story, user: str, template: str, *, key: str | None = None
) -> httpx.Response:
    with province.channel() as channel:
        return channel.post(
            "/v1/trade-in/applications",
            json={
                "channel_user_id": user,
                "campaign_id": CAMPAIGNS[province.code],
                "round_id": "r1",
                "template_id": template,
                "location_region": province.code[:2] + "0100",
            },
            headers={"Idempotency-Key": key or story.key()},
        )


def _register(province: _Province, story: _Story, user: str, n: int) -> None:
    with province.channel() as channel:
        response = channel.post(
            "/v1/persons",
            json={
                "channel_user_id": user,
                "id_number": synthetic_id_number("310104", date(1990, 5, 17), n),
                "name": "王芳",
                "phone": f"139{n:08d}",
                "region_code": province.code[:2] + "0100",
                "location_region": province.code[:2] + "0100",
                "consent": True,
                "consent_version": "2024-01",
            },
            headers={"Idempotency-Key": story.key()},
        )
    story.step(f"{NAMES[province.code]}: {user} signs up", response, response.status_code)


def _redeem(
    province: _Province, story: _Story, voucher_id: str, user: str, product: dict[str, Any]
) -> httpx.Response:
    with province.acquirer() as acquirer:
        return acquirer.post(
            "/v1/redemptions",
            json={
                "channel_id": CHANNEL,
                "channel_user_id": user,
                "merchant_id": STORES[province.code],
                "order_amount_fen": product["price_fen"],
                "mode": "in_store",
                "voucher_id": voucher_id,
                "order_id": f"POS-{story.key()}",
                "capture": "one_step",
                "product": product,
            },
            headers={"Idempotency-Key": story.key()},
        )


def _caught_up(provinces: list[_Province]) -> bool:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(p.admin("/v1/admin/outbox")["pending"] == 0 for p in provinces):
            return True
        time.sleep(0.2)
    return False


def _yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


def _reconcile(province: _Province, console: Console, summary: TradeInSummary) -> None:
    day = datetime.now(UTC).astimezone(_CST).date().isoformat()
    body = province.admin(f"/v1/admin/reconciliation/{day}")
    summary.reconciliations[province.code] = {
        k: v for k, v in body.items() if not k.startswith("_")
    }
    table = Table(
        f"{NAMES[province.code]} {day}",
        "locked",
        "consumed (yuan)",
        "subsidy (yuan)",
        "released",
        title=f"reconciliation with central: {'clean' if body.get('ok') else 'MISMATCH'}",
    )
    for row in body.get("categories", []):

        def cell(fact: str, money: bool, row: dict[str, Any] = row) -> str:
            ours, theirs = row[fact]["province"], row[fact]["central"]
            shown = f"{ours[0]} · {_yuan(ours[1])}" if money else str(ours[0])
            return shown if ours == theirs else f"[red]{shown} ≠ {theirs}[/]"

        table.add_row(
            row["category"],
            cell("locked", False),
            cell("consumed", True),
            cell("subsidy", True),
            cell("released", False),
        )
    console.print(table)


@contextmanager
def _federation(home: Path) -> Iterator[tuple[_Process, list[_Province]]]:
    """Central and the two provinces, up; all stopped when the block ends."""
    central_port = _free_port()
    central_url = f"http://127.0.0.1:{central_port}"
    central_env = {
        "LEQUAN_CENTRAL_DATA_DIR": str(home / "central"),
        "LEQUAN_CENTRAL_PORT": str(central_port),
        "LEQUAN_CENTRAL_SWEEP_INTERVAL_S": "1",
        "LEQUAN_LOG_LEVEL": "WARNING",
    }
    provinces: list[_Province] = []
    with ExitStack() as stack:
        central = _Process(
            "central", ["central", "serve"], central_env, central_url, home / "central.log"
        )
        for code in CAMPAIGNS:
            registered = _lequan(
                "central", "province", "add", code, "--json", "--url", central_url, env=central_env
            )
            credentials = home / f"{code}-central.json"
            credentials.write_text(registered.stdout, encoding="utf-8")
            credentials.chmod(0o600)
            port = _free_port()
            path = _province_file(
                home, code, port, central_url=central_url, credentials=credentials
            )
            report = init_province(path)
            _open_campaign(path, code, path.parent / "merchants.csv")
            secrets = json.loads(Path(report.files["credentials"]).read_text("utf-8"))
            token = Path(report.files["operator token"]).read_text("utf-8").strip()
            url = f"http://127.0.0.1:{port}"
            process = _Process(
                f"province {code}",
                ["province", "serve", str(path)],
                {**RELAY_ENV, "LEQUAN_LOG_LEVEL": "WARNING"},
                url,
                home / f"{code}.log",
            )
            provinces.append(
                _Province(
                    code,
                    url,
                    secrets[CHANNEL]["secret"],
                    secrets[ACQUIRER]["secret"],
                    token,
                    process,
                )
            )
        central.start()
        stack.callback(central.stop)
        for province in provinces:
            province.process.start()
            stack.callback(province.process.stop)
        yield central, provinces


def run_trade_in_demo(*, home: Path, console: Console) -> TradeInSummary:
    """The act, in ``home`` (wiped first); what happened, step by step."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    summary = TradeInSummary()
    story = _Story(console, summary)
    console.print("\n[bold]Trade-in: one central platform, two provinces[/] (以旧换新)")
    with suppress(DemoStepFailed):  # printed, and recorded in the summary's steps
        _act(home, console, story, summary)
    return summary


def _act(home: Path, console: Console, story: _Story, summary: TradeInSummary) -> None:
    with _federation(home) as (central, (shanghai, zhejiang)):
        console.print(
            f"  central {central.url} · Shanghai {shanghai.url} · Zhejiang {zhejiang.url}"
        )
        for province in (shanghai, zhejiang):
            _register(province, story, "wang-fang", 1)
        _register(shanghai, story, "li-lei", 2)
        fridge = story.step(
            "上海: 王芳 applies for a refrigerator (central locks her qualification)",
            _apply(shanghai, story, "wang-fang", "refrigerator"),
            201,
        )
        voucher = fridge["voucher"]["voucher_id"]
        story.step(
            "浙江: 王芳 applies for a refrigerator too",
            _apply(zhejiang, story, "wang-fang", "refrigerator"),
            409,
            "qualification_used_elsewhere",
        )
        story.step(
            "浙江: 王芳 applies for a television instead",
            _apply(zhejiang, story, "wang-fang", "tv"),
            201,
        )
        bought = story.step(
            "上海: the store redeems the refrigerator (Haier, grade 1, 5,999 yuan)",
            _redeem(
                shanghai,
                story,
                voucher,
                "wang-fang",
                _fridge("BE0L9K0E6300Q2A", "24312000000000001234"),
            ),
            201,
        )
        console.print(f"      subsidy {_yuan(bought['discount_fen'])} yuan (20%, grade 1)")
        with shanghai.acquirer() as acquirer:
            refund = acquirer.post(
                f"/v1/redemptions/{bought['redemption_id']}/refunds",
                json={"refund_amount_fen": 599_900},
                headers={"Idempotency-Key": story.key()},
            )
        story.step("上海: she returns it; the voucher and her qualification come back", refund, 201)
        story.step(
            "上海: she buys another refrigerator with it (4,299 yuan)",
            _redeem(
                shanghai,
                story,
                voucher,
                "wang-fang",
                _fridge("BE0L9K0E6300Q9Z", "24312000000000005678", price_fen=429_900),
            ),
            201,
        )
        phone = story.step(
            "上海: 李雷 applies for a phone", _apply(shanghai, story, "li-lei", "phone"), 201
        )

        console.print("  [bold]central stops[/]")
        central.stop(signal.SIGKILL)
        key = story.key()
        story.step(
            "上海: 李雷 applies for a washing machine while central is down",
            _apply(shanghai, story, "li-lei", "washing-machine", key=key),
            503,
            "central_unavailable",
        )
        story.step(
            "上海: his phone voucher is spent all the same (an issued voucher needs no lock)",
            _redeem(
                shanghai,
                story,
                phone["voucher"]["voucher_id"],
                "li-lei",
                {
                    "category": "phone",
                    "brand": "Huawei",
                    "model": "Mate 60",
                    "price_fen": 549_900,
                    "imei": "490154203237518",
                    "invoice_number": "24312000000000009012",
                },
            ),
            201,
        )
        pending = shanghai.admin("/v1/admin/outbox")["pending"]
        console.print(f"      Shanghai's outbox holds {pending} event(s) for central")
        console.print("  [bold]central restarts[/]")
        central.start()
        story.step(
            "上海: 李雷 retries the washing machine with the same key",
            _apply(shanghai, story, "li-lei", "washing-machine", key=key),
            201,
        )
        caught_up = _caught_up([shanghai, zhejiang])
        console.print(
            "  relays caught up: both outboxes delivered"
            if caught_up
            else "  [red]the relays did not catch up[/]"
        )
        summary.steps.append(
            {"step": "relays caught up", "status": 0, "refusal": "", "as_expected": caught_up}
        )
        for province in (shanghai, zhejiang):
            _reconcile(province, console, summary)
