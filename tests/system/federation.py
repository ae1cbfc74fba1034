"""A federation in the lab: one real central and two real provinces, each its own
process on a loopback port, each store a PostgreSQL database of its own.

Built the way an operator builds it (docs/operations.md, "A new province"):
``lequan central migrate`` and ``serve``; ``lequan central province add CODE
--json`` saved as the province's credentials file; ``lequan province init
FILE``; a checker added with ``lequan operator add``; ``lequan province
serve FILE``. Campaigns and merchants go in through the admin API.

Between each province and central sits a ``FaultProxy``: a loopback HTTP
forwarder that passes every call through unchanged unless a test arms a
fault. It is not a stand-in for central (central answers every call that
reaches it); it is the network, which can lose a request or an answer, and
the one place from which "central has locked, the province has not
committed" can be staged exactly: the proxy lets central's answer to a lock
arrive, then kills the province before the answer reaches it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import redis
import sqlalchemy as sa
import yaml

from benchmarks.central import CentralProcess
from benchmarks.servers import free_port
from lequan.client import LequanAuth
from lequan.examples import example_campaign
from lequan.province_file import read_env_file
from tests.factories import id_number, postgres_database
from tests.loopback import loopback_client
from tests.waiting import wait_until

__all__ = [
    "ACQUIRER",
    "CHANNEL",
    "TUNING",
    "FaultProxy",
    "Federation",
    "Province",
    "federation",
]

CHANNEL = "wechat"
ACQUIRER = "acq-unionpay"
START_TIMEOUT_S = 60.0
# The province's background work, fast for tests: the relay polls every 50 ms and
# retries after 50 ms (doubling to 200 ms); the sweep runs twice a second. Central's
# hold (LEQUAN_TRADE_IN_HOLD_S) is short: 5 s, still well above an application's time.
TUNING = {
    "LEQUAN_RELAY_IDLE_S": "0.05",
    "LEQUAN_RELAY_BACKOFF_FIRST_S": "0.05",
    "LEQUAN_RELAY_BACKOFF_MAX_S": "0.2",
    "LEQUAN_SWEEP_INTERVAL_S": "0.5",
    "LEQUAN_TRADE_IN_HOLD_S": "5",
    "LEQUAN_CENTRAL_TIMEOUT_S": "5",
    "LEQUAN_LOG_LEVEL": "WARNING",
}
HOLD_S = int(TUNING["LEQUAN_TRADE_IN_HOLD_S"])
# The stock each scenario's campaign gives the channel.
STOCK = {
    CHANNEL: {"refrigerator": 30, "washing-machine": 30, "air-conditioner": 30, "tv": 30},
}


def _shell_env() -> dict[str, str]:
    """This process's environment without any LEQUAN_* of the shell's (the tests' own kept)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEQUAN_") or k.startswith("LEQUAN_TEST_")
    }


# -- the network between a province and central ----------------------------------------------


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # the base's name
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/locks" and proxy.drop_lock_requests:
            self.close_connection = True  # never reached central: no answer at all
            return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower().startswith("x-lequan-") or k.lower() == "content-type"
        }
        try:
            answer = proxy.upstream.request(self.command, self.path, content=body, headers=headers)
        except httpx.HTTPError:
            self.close_connection = True  # central is down: the province hears nothing
            return
        if self.path == "/v1/locks" and proxy.withheld(answer):
            self.close_connection = True
            return
        if self.path == "/v1/events" and proxy.lose_event_answer():
            self.close_connection = True  # delivered, but the province never hears so
            return
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


@dataclass
class _Withhold:
    """Central's next ``count`` ``locked`` answers kept from the province; once all have
    arrived, ``then`` runs (a SIGKILL of the province) and none is ever passed on."""

    count: int
    then: Callable[[], object]
    seen: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A loopback forwarder to central for one province (see the module's docstring)."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream = loopback_client(upstream_url, timeout=30.0)
        self.drop_lock_requests = False
        self._lost_event_answers = 0
        self._withhold: _Withhold | None = None
        self._guard = threading.Lock()
        self._server = _ProxyServer(("127.0.0.1", 0), _Forward)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.upstream.close()

    def disarm(self) -> None:
        with self._guard:
            self.drop_lock_requests = False
            self._lost_event_answers = 0
            self._withhold = None

    def lose_event_answers(self, count: int) -> None:
        """The next ``count`` deliveries reach central, and their answers are lost."""
        with self._guard:
            self._lost_event_answers = count

    def lost_event_answers(self) -> int:
        """How many of the answers to lose are still to come."""
        with self._guard:
            return self._lost_event_answers

    def lose_event_answer(self) -> bool:
        with self._guard:
            if self._lost_event_answers <= 0:
                return False
            self._lost_event_answers -= 1
            return True

    def withhold_locks(self, count: int, then: Callable[[], object]) -> threading.Event:
        """Arm ``_Withhold``; the event is set once ``then`` has run."""
        with self._guard:
            assert self._withhold is None, "one staging at a time"
            self._withhold = _Withhold(count, then)
            return self._withhold.done

    def withheld(self, answer: httpx.Response) -> bool:
        with self._guard:
            staging = self._withhold
            if staging is None or answer.status_code != 200:
                return False
            outcomes = [r.get("outcome") for r in answer.json().get("results", [])]
            if "locked" not in outcomes:
                return False
            staging.seen += 1
            last = staging.seen == staging.count
        if last:
            staging.then()
            with self._guard:
                self._withhold = None
            staging.done.set()
        else:
            staging.done.wait(30)
        return True


# -- a province ---------------------------------------------------------------------------


@dataclass
class Province:
    """A province's process, its files, its signed clients and its store."""

    name: str
    code: str
    region: str  # where its residents live and its merchants are (GB/T 2260)
    file: Path
    data_dir: Path
    database_url: str
    port: int
    proxy: FaultProxy
    process: subprocess.Popen[bytes] | None = None
    secrets: dict[str, str] = field(default_factory=dict)
    maker_token: str = ""
    checker_token: str = ""
    # Settings of its server process beyond the file's (LEQUAN_WORKERS).
    serve_env: dict[str, str] = field(default_factory=dict)
    _stderr: IO[bytes] | None = None
    _client: httpx.Client | None = None
    _engine: sa.Engine | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def maker(self) -> str:
        return f"{self.name[:2]}-admin"

    @property
    def maker_token_file(self) -> Path:
        return self.data_dir / f"operator-{self.maker}.token"

    def env(self) -> dict[str, str]:
        """What the operator's commands run with: the settings ``init`` wrote, tuned."""
        written = read_env_file((self.data_dir / "province.env").read_text(encoding="utf-8"))
        return {**_shell_env(), **written, **TUNING}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``lequan ARGS`` as this province's operator runs it."""
        done = subprocess.run(  # our own interpreter and arguments
            [sys.executable, "-m", "lequan.cli", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"lequan {' '.join(args)} ({done.returncode}): {done.stderr}")
        return done

    # The process.

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """``lequan province serve FILE`` started; ``wait_ready`` waits for it."""
        assert self.process is None, "already running"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the process
        self.process = subprocess.Popen(  # our own interpreter and arguments
            [sys.executable, "-m", "lequan.cli", "province", "serve", str(self.file)],
            env={**_shell_env(), **TUNING, **self.serve_env},
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    def wait_ready(self) -> None:
        assert self.process is not None
        assert self._stderr is not None
        wait_until(self._ready_or_gone, what=f"{self.name} answers /readyz", timeout_s=60)
        if self.process.poll() is not None:
            self._stderr.seek(0)
            said = self._stderr.read()[-3000:].decode(errors="replace")
            self.process = None
            raise RuntimeError(f"{self.name} exited at start; it said:\n{said}")

    def _ready_or_gone(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            return True
        try:
            return self.client.get("/readyz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what was committed must be all there is."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(15)
        self.process = None
        self._close_stderr()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        self._close_stderr()
        if self._client is not None:
            self._client.close()
        if self._engine is not None:
            self._engine.dispose()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # Calls, as its channels, acquirers and operators make them.

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = loopback_client(self.url, timeout=30.0)
        return self._client

    def post(self, app_id: str, path: str, body: Any, *, key: str | None = None) -> httpx.Response:
        """A signed POST with an Idempotency-Key (a fresh one unless given)."""
        return self.client.post(
            path,
            json=body,
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
            auth=LequanAuth(app_id, self.secrets[app_id]),
        )

    def admin(
        self,
        method: str,
        path: str,
        *,
        content: str | None = None,
        body: Any = None,
        checker: bool = False,
    ) -> httpx.Response:
        token = self.checker_token if checker else self.maker_token
        headers = {"Authorization": f"Bearer {token}"}
        if content is not None:
            return self.client.request(
                method, path, content=content.encode("utf-8"), headers=headers
            )
        return self.client.request(method, path, json=body, headers=headers)

    def outbox(self) -> dict[str, int]:
        answer = self.admin("GET", "/v1/admin/outbox")
        assert answer.status_code == 200, answer.text
        counts: dict[str, int] = answer.json()
        return counts

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)
        return self._engine

    def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(sql), params)]

    # Residents, campaigns and redemptions.

    def register(self, n: int) -> str:
        """Person ``n`` (the same ID number in every province) signs up here; their user."""
        user = f"u{n}"
        body = {
            "channel_user_id": user,
            "id_number": id_number(n),
            "name": "张三",
            "phone": f"139{n:08d}",
            "region_code": self.region,
            "location_region": self.region,
            "consent": True,
        }
        answer = self.post(CHANNEL, "/v1/persons", body)
        assert answer.status_code in (200, 201), answer.text
        return user

    def apply(
        self, campaign_id: str, user: str, template: str, *, key: str | None = None
    ) -> httpx.Response:
        body = {
            "channel_user_id": user,
            "campaign_id": campaign_id,
            "round_id": "r1",
            "template_id": template,
            "location_region": self.region,
        }
        return self.post(CHANNEL, "/v1/trade-in/applications", body, key=key)

    def redeem(
        self, campaign_id: str, voucher_id: str, user: str, product: dict[str, Any]
    ) -> httpx.Response:
        body = {
            "channel_id": CHANNEL,
            "channel_user_id": user,
            "merchant_id": self.store_of(campaign_id),
            "order_amount_fen": product["price_fen"],
            "mode": "in_store",
            "voucher_id": voucher_id,
            "order_id": f"POS-{uuid.uuid4().hex[:12]}",
            "capture": "one_step",
            "product": product,
        }
        return self.post(ACQUIRER, "/v1/redemptions", body)

    def refund(self, redemption_id: str, amount_fen: int) -> httpx.Response:
        return self.post(
            ACQUIRER,
            f"/v1/redemptions/{redemption_id}/refunds",
            {"refund_amount_fen": amount_fen},
        )

    def store_of(self, campaign_id: str) -> str:
        return f"{self.name[:2]}-{campaign_id}"

    def open_campaign(self, campaign_id: str, **updates: Any) -> None:
        """The example trade-in campaign as ``campaign_id``, for this province's residents,
        released a minute ago, imported, approved and activated through the admin API, with
        an appliance store of its own enrolled."""
        config = example_campaign(
            "shanghai-trade-in-2024.yaml",
            release_at=datetime.now(UTC) - timedelta(minutes=1),
            stock=STOCK,
            id=campaign_id,
            name=f"{self.name} {campaign_id}",
            eligibility={"regions": [self.code], "check": "either"},
            **updates,
        )
        data = config.model_dump(mode="json")
        for template in data["templates"]:  # JSON's keys are text; the grades are numbers
            if template.get("rates_bp"):
                template["rates_bp"] = {int(k): v for k, v in template["rates_bp"].items()}
        text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        steps = [
            self.admin("POST", "/v1/admin/campaigns", content=text),
            self.admin(
                "POST",
                "/v1/admin/merchants",
                content="merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns\n"
                f"{self.store_of(campaign_id)},家电卖场 {campaign_id},5722,{self.region},"
                f"in_store,{ACQUIRER},{campaign_id}\n",
            ),
            self.admin("POST", f"/v1/admin/campaigns/{campaign_id}/approve", checker=True),
            self.admin("POST", f"/v1/admin/campaigns/{campaign_id}/activate"),
        ]
        for step in steps:
            assert step.status_code in (200, 201), step.text


# -- the federation -----------------------------------------------------------------------


@dataclass
class Federation:
    central: CentralProcess
    central_url: str  # its database
    provinces: dict[str, Province]
    _central_engine: sa.Engine | None = None

    @property
    def gd(self) -> Province:
        return self.provinces["guangdong"]

    @property
    def zj(self) -> Province:
        return self.provinces["zhejiang"]

    @property
    def central_engine(self) -> sa.Engine:
        if self._central_engine is None:
            self._central_engine = sa.create_engine(self.central_url, poolclass=sa.pool.NullPool)
        return self._central_engine

    def central_rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.central_engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sa.text(sql), params)]

    def restart_what_is_down(self) -> None:
        if self.central.process is None:
            self.central.start()
        for province in self.provinces.values():
            province.proxy.disarm()
            if province.process is None:
                province.start()

    def synced(self, what: str = "every province's outbox is delivered") -> None:
        """Wait until no province has an event waiting for central."""
        wait_until(
            lambda: all(p.outbox()["pending"] == 0 for p in self.provinces.values()),
            what=what,
        )


_PROVINCES = (
    # name, code, the region of its residents and merchants, the maker's id
    ("guangdong", "440000", "440100"),
    ("zhejiang", "330000", "330100"),
)


def _province_file(  # the file's fields, by name
    directory: Path, name: str, code: str, database_url: str, port: int, redis_url: str = ""
) -> Path:
    data = {
        "code": code,
        "name": f"{name} trade-in platform",
        "data_dir": f"data/{name}",
        "database_url": database_url,
        "redis_url": redis_url,
        "port": port,
        "central": {"url": "", "credentials_file": f"{name}-central.json"},
        "channels": [{"id": CHANNEL, "name": "微信支付"}, {"id": "alipay", "name": "支付宝"}],
        "acquirers": [{"id": ACQUIRER, "name": "银联商务"}],
        "operator": {"id": f"{name[:2]}-admin", "role": "maker"},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _stand_up(province: Province, central: CentralProcess) -> None:
    """What the operator does for a new province, from central's registration to serving."""
    added = subprocess.run(  # our own interpreter and arguments
        [
            *(sys.executable, "-m", "lequan.cli", "central", "province", "add", province.code),
            *("--json", "--url", province.proxy.url),
        ],
        env={**central.env(), **{k: v for k, v in os.environ.items() if k == "PATH"}},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    credentials = province.file.parent / f"{province.name}-central.json"
    credentials.write_text(added.stdout, encoding="utf-8")
    credentials.chmod(0o600)
    data = yaml.safe_load(province.file.read_text(encoding="utf-8"))
    data["central"]["url"] = json.loads(added.stdout)["central_url"]
    province.file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    init = subprocess.run(  # our own interpreter and arguments
        [sys.executable, "-m", "lequan.cli", "province", "init", str(province.file), "--json"],
        env=_shell_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    report = json.loads(init.stdout)
    assert report["central"] == f"{province.proxy.url} as province-{province.code}", report
    credentials_json = json.loads((province.data_dir / "credentials.json").read_text("utf-8"))
    province.secrets = {app: entry["secret"] for app, entry in credentials_json.items()}
    province.maker_token = province.maker_token_file.read_text(encoding="utf-8").strip()
    province.launch()  # starting while the checker is added
    checker = province.cli(
        *("operator", "add", f"{province.name[:2]}-checker", "--role", "checker"),
        *("--token-file", str(province.maker_token_file), "--json"),
    )
    province.checker_token = json.loads(checker.stdout)["token"]
    province.wait_ready()


@contextmanager
def federation(
    postgres_url: str, template: str | None = None, *, redis_url: str | None = None
) -> Iterator[Federation]:
    """Central and two provinces, each on its own fresh PostgreSQL database, served.

    The provinces' databases are copies of ``template`` (a store at head) when given,
    to spare each init the whole migration history; init runs all the same. With
    ``redis_url``, Zhejiang runs as production does: two worker processes
    (``serve --workers 2``) sharing the Redis gate and nonces, each relaying."""
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        central_url, drop = postgres_database(postgres_url)
        stack.callback(drop)
        central = CentralProcess(
            directory / "central",
            central_url,
            extra_env={"LEQUAN_CENTRAL_SWEEP_INTERVAL_S": "0.5"},
        )
        central.cli("migrate")
        stack.callback(central.stop)
        provinces = {}
        for name, code, region in _PROVINCES:
            url, drop = postgres_database(postgres_url, template=template)
            stack.callback(drop)
            proxy = FaultProxy(central.url)
            stack.callback(proxy.close)
            port = free_port()
            # Zhejiang: Guangdong is the one a scenario SIGKILLs as a single process.
            workers = redis_url is not None and code == "330000"
            if workers:
                assert redis_url is not None
                _forget_province_keys(redis_url, code)
            province = Province(
                name=name,
                code=code,
                region=region,
                file=_province_file(
                    directory, name, code, url, port, redis_url if workers and redis_url else ""
                ),
                data_dir=directory / "data" / name,
                database_url=url,
                port=port,
                proxy=proxy,
                serve_env={"LEQUAN_WORKERS": "2"} if workers else {},
            )
            stack.callback(province.stop)
            provinces[name] = province
        # Central starts while the provinces are stood up (on its migrated store).
        with ThreadPoolExecutor(1 + len(provinces)) as pool:
            steps = [pool.submit(central.start)]
            steps += [pool.submit(_stand_up, p, central) for p in provinces.values()]
            for step in steps:
                step.result()
        fed = Federation(central, central_url, provinces)
        try:
            yield fed
        finally:
            if fed._central_engine is not None:
                fed._central_engine.dispose()


def _forget_province_keys(redis_url: str, code: str) -> None:
    """A province's Redis keys (prefix ``lq:<code>:``) left by an earlier run: its
    campaigns' gates would outlive the databases they counted."""
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"lq:{code}:*"):
            client.delete(key)
    finally:
        client.close()


# -- what must hold after every scenario ------------------------------------------------------

# A person's slots per category nationwide (the example campaign's items_per_person).
ITEMS_MAX = {"air_conditioner": 3}


def assert_invariants(fed: Federation, *, cli: bool = False) -> None:
    """Once every outbox is delivered (none dead): nobody subsidised twice per category
    nationwide, no serial number subsidised twice, every event of every province at
    central exactly once and applied, and the day's reconciliation clean in both
    provinces: through the admin API, or ``lequan reconcile`` (exit 0) with ``cli``."""
    fed.synced()
    for province in fed.provinces.values():
        assert province.outbox()["dead"] == 0, (province.name, _dead(province))
    now = datetime.now(UTC)

    # No person subsidised twice per category: in the provinces' stores together ...
    redeemed: dict[tuple[str, str], int] = {}
    serials: list[str] = []
    for province in fed.provinces.values():
        for pseudonym, category, count in province.rows(
            "SELECT p.pseudonym, q.category, count(*) FROM qualification_locks q"
            " JOIN vouchers v ON v.id = q.voucher_id JOIN persons p ON p.id = q.person_id"
            " WHERE v.state = 'redeemed' GROUP BY p.pseudonym, q.category"
        ):
            redeemed[pseudonym, category] = redeemed.get((pseudonym, category), 0) + count
        serials += [
            r[0]
            for r in province.rows(
                "SELECT coalesce(serial_number, imei) FROM redemption_products"
                " WHERE released_at IS NULL"
            )
        ]
    over = {k: n for k, n in redeemed.items() if n > ITEMS_MAX.get(k[1], 1)}
    assert not over, f"subsidised more often than allowed: {over}"
    # ... and at central, where a slot counts from its hold to its consumption.
    live = fed.central_rows(
        "SELECT pseudonym, category, count(*) FROM central_locks"
        " WHERE state IN ('locked', 'consumed') OR (state = 'held' AND expires_at > :now)"
        " GROUP BY pseudonym, category",
        now=now,
    )
    over = {(p, c): n for p, c, n in live if n > ITEMS_MAX.get(c, 1)}
    assert not over, f"central holds more slots than allowed: {over}"
    consumed = {
        (p, c): n
        for p, c, n in fed.central_rows(
            "SELECT pseudonym, category, count(*) FROM central_locks WHERE state = 'consumed'"
            " GROUP BY pseudonym, category"
        )
    }
    assert consumed == redeemed, "central's consumed slots are the provinces' redemptions"

    # No serial number twice: not among the provinces' products in force, and central's
    # registry holds exactly those, each for the lock of the voucher it was sold with.
    assert len(serials) == len(set(serials)), f"a serial subsidised twice: {sorted(serials)}"
    registered = {
        value: (province, lock_id)
        for value, province, lock_id in fed.central_rows(
            "SELECT value, province, lock_id FROM central_serials"
        )
    }
    in_force = {}
    for province in fed.provinces.values():
        for serial, lock_id in province.rows(
            "SELECT coalesce(rp.serial_number, rp.imei), q.id FROM redemption_products rp"
            " JOIN qualification_locks q ON q.voucher_id = rp.voucher_id"
            " WHERE rp.released_at IS NULL"
        ):
            in_force[serial[:14] if serial.isdigit() else serial] = (province.code, lock_id)
    assert registered == in_force, "central's serial registry is the provinces' products"

    # Every event at central exactly once, applied: central's events of a province are that
    # province's outbox, one for one (event ids are keys on both sides).
    for province in fed.provinces.values():
        ours = {r[0]: r[1] for r in province.rows("SELECT id, topic FROM outbox")}
        theirs = {
            r[0]: (r[1], r[2], r[3])
            for r in fed.central_rows(
                "SELECT event_id, topic, state, reason FROM central_events WHERE province = :p",
                p=province.code,
            )
        }
        assert theirs.keys() == ours.keys(), (province.name, ours.keys() ^ theirs.keys())
        not_applied = {e: v for e, v in theirs.items() if v[1] != "applied"}
        assert not not_applied, (province.name, not_applied)
        # Each redemption in force is consumed at central by exactly that redemption.
        for voucher_id, redemption_id in province.rows(
            "SELECT voucher_id, redemption_id FROM redemption_products WHERE released_at IS NULL"
        ):
            at_central = fed.central_rows(
                "SELECT state, redemption_id FROM central_locks"
                " WHERE province = :p AND voucher_id = :v",
                p=province.code,
                v=voucher_id,
            )
            assert [tuple(r) for r in at_central] == [("consumed", redemption_id)], voucher_id

    # The day's reconciliation is clean in both provinces, for today (UTC+8).
    day = (datetime.now(UTC) + timedelta(hours=8)).date().isoformat()
    if not cli:
        for province in fed.provinces.values():
            answer = province.admin("GET", f"/v1/admin/reconciliation/{day}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["ok"] is True, (province.name, answer.json()["mismatches"])
        return
    with ThreadPoolExecutor(len(fed.provinces)) as pool:
        runs = {
            p.name: pool.submit(p.cli, "reconcile", "--date", day, "--json", check=False)
            for p in fed.provinces.values()
        }
    for name, run in runs.items():
        done = run.result()
        assert done.returncode == 0, f"{name}: reconcile exit {done.returncode}: {done.stdout}"
        assert json.loads(done.stdout)["ok"] is True


def _dead(province: Province) -> Any:
    return province.admin("GET", "/v1/admin/outbox/dead").json()
