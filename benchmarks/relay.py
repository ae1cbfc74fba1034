"""The relay in the lab: a province's outbox on PostgreSQL drained into a real central.

``relay_drain`` writes a backlog of ``events`` outbox rows while central is
down (an outage), starts ``relays`` relays (``services.relay.Relay``, each a
thread with its own ``HttpCentral``, as each API process runs one) during the
outage, so that they fail and back off as in production, then starts central
and times the drain: from central answering to no event pending.

The backlog is what an outage of minutes accumulates: claims needing a lock
answer 503 while central is down, so no ``voucher.issued``; redemptions of
issued vouchers go on. So it is ``redemption.completed`` events: of
consumption vouchers (no lock at central: recorded and counted), and a share
``trade_in_share`` of trade-in vouchers whose lock central holds (locked,
then ``voucher.issued`` delivered before the outage): each consumes its lock
and registers the product's serial number. The payloads are the province's
(``services.redemption.event_payload``; a trade-in product's ``payload()``).

Every event must end ``delivered`` in the province and ``applied`` at central,
each trade-in lock ``consumed``, or the run fails.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.central import CentralProcess
from lequan.adapters.central_http import HttpCentral
from lequan.adapters.crypto import generate_key_file
from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.sql import migrate
from lequan.adapters.sql.engine import create_engine
from lequan.bootstrap import build_runtime
from lequan.config import Settings
from lequan.domain.trade_in import Category, Product
from lequan.ports.central import (
    CentralPlatform,
    EventResult,
    LockOutcome,
    LockRequest,
    SyncEvent,
)
from lequan.services.relay import Relay

__all__ = ["DrainResult", "relay_drain", "relay_figure"]

DRAIN_TIMEOUT_S = 600.0
POLL_S = 0.1
# Rows written per insert while the backlog is prepared.
_WRITE_CHUNK = 5000


@dataclass
class DrainResult:
    events: int
    drain_s: float
    # Time spent in central.deliver (HTTP, central's work) and in the relay's store
    # phases (lease + settle), summed over the relays.
    deliver_s: float
    store_s: float
    rounds: int
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.drain_s


class _Timed:
    """The central port, timing each delivery (a fake around the real adapter)."""

    def __init__(self, inner: HttpCentral) -> None:
        self.inner = inner
        self.deliver_s = 0.0
        self.calls = 0

    def deliver(self, events: Sequence[SyncEvent]) -> list[EventResult]:
        started = time.perf_counter()
        try:
            return self.inner.deliver(events)
        finally:
            self.deliver_s += time.perf_counter() - started
            self.calls += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _consumption_payload(n: int, voucher_id: str, at: datetime) -> dict[str, Any]:
    return {
        "event": "redemption.completed",
        "redemption_id": f"r-bench-{n}",
        "voucher_id": voucher_id,
        "campaign_id": "sh-dining-2024",
        "acquirer_id": "acq-unionpay",
        "merchant_id": "m-0001",
        "order_id": f"o-bench-{n}",
        "order_amount_fen": 36_800,
        "discount_fen": 9_000,
        "at": at.isoformat(),
    }


def _trade_in_payload(n: int, voucher_id: str, at: datetime, run: str) -> dict[str, Any]:
    price_fen = 459_900
    product = Product(
        category=Category("refrigerator"),
        brand="Haier",
        model="BCD-510WGHTD",
        sku=f"sku-{n % 97}",
        energy_grade=1,
        price_fen=price_fen,
        serial_number=f"SN{run}{n:09d}",
        invoice_number=f"INV{run}{n:09d}",
        old_appliance_handed_in=True,
    )
    return {
        "event": "redemption.completed",
        "redemption_id": f"r-bench-{n}",
        "voucher_id": voucher_id,
        "campaign_id": "trade-in-2025",
        "acquirer_id": "acq-unionpay",
        "merchant_id": "m-0002",
        "order_id": f"o-bench-{n}",
        "order_amount_fen": price_fen,
        "discount_fen": 91_980,
        "at": at.isoformat(),
        "product": product.payload(),
    }


def _write_outbox(engine: sa.Engine, rows: list[tuple[Any, ...]]) -> None:
    """(id, topic, payload_json, status, created_at, voucher_id, seq) rows, in bulk."""
    sql = (
        "INSERT INTO outbox (id, topic, payload_json, status, attempts, created_at, "
        "next_attempt_at, voucher_id, seq) "
        "SELECT u.id, u.topic, u.payload_json, u.status, 0, u.at, u.at, u.voucher_id, u.seq "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], "
        "%s::text[], %s::int[]) AS u(id, topic, payload_json, status, at, voucher_id, seq)"
    )
    with engine.begin() as connection:
        for start in range(0, len(rows), _WRITE_CHUNK):
            chunk = rows[start : start + _WRITE_CHUNK]
            columns = tuple([row[i] for row in chunk] for i in range(7))
            connection.exec_driver_sql(sql, columns)
        connection.exec_driver_sql("ANALYZE outbox")


def _pending(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                "SELECT count(*) FROM outbox WHERE status = 'pending'"
            ).scalar_one()
        )


def _prepare_trade_in(
    platform: CentralPlatform, engine: sa.Engine, count: int, run: str, now: datetime
) -> list[str]:
    """``count`` trade-in vouchers whose locks central holds, ``voucher.issued`` delivered
    (and in the province's outbox as delivered, seq 1); their voucher ids."""
    vouchers = [f"v-{run}-t{n}" for n in range(count)]
    lock_ids = [f"l-{run}-t{n}" for n in range(count)]
    for start in range(0, count, 1000):
        results = platform.lock(
            [
                LockRequest(
                    lock_id=lock_ids[n],
                    pseudonym=secrets.token_hex(32),
                    category="refrigerator",
                    items_max=1,
                    hold_s=3600,
                )
                for n in range(start, min(count, start + 1000))
            ]
        )
        assert all(r.outcome is LockOutcome.LOCKED for r in results), "a lock refused"
    issued = []
    for n in range(count):
        payload = {
            "voucher_id": vouchers[n],
            "lock_id": lock_ids[n],
            "category": "refrigerator",
            "campaign_id": "trade-in-2025",
            "template_id": "refrigerator",
            "face_fen": 200_000,
        }
        issued.append(SyncEvent(f"e-{run}-i{n}", "voucher.issued", now, payload, vouchers[n], 1))
    for start in range(0, count, 1000):
        answers = platform.deliver(issued[start : start + 1000])
        assert all(a.outcome.value == "applied" for a in answers), "voucher.issued not applied"
    _write_outbox(
        engine,
        [
            (e.event_id, e.topic, json.dumps(e.payload), "delivered", now, e.voucher_id, 1)
            for e in issued
        ],
    )
    return vouchers


@dataclass(frozen=True)
class _Credentials:
    app_id: str
    secret: str
    public_key: str

    def client(self, url: str, *, timeout_s: float = 10.0) -> HttpCentral:
        return HttpCentral(
            url,
            app_id=self.app_id,
            secret=self.secret,
            public_key=self.public_key,
            timeout_s=timeout_s,
        )


def _register(central: CentralProcess, code: str) -> _Credentials:
    """Register a province on central's store; its client's credentials."""
    from lequan.central.bootstrap import build_central
    from lequan.central.config import CentralSettings
    from lequan.central.ports import ProvinceRow

    settings = CentralSettings(data_dir=central.data_dir, database_url=central.database_url)
    built = build_central(settings)
    try:
        row = ProvinceRow(code, f"province-{code}", secrets.token_urlsafe(32), datetime.now(UTC))
        built.service.store.add_province(row)
        public_key = built.service.key.public_key_hex
    finally:
        built.close()
    return _Credentials(row.app_id, row.secret, public_key)


def relay_drain(
    postgres_url: str,
    *,
    events: int,
    relays: int = 1,
    batch_max: int = 1000,
    trade_in_share: float = 0.2,
    outage_s: float = 5.0,
) -> DrainResult:
    """Write ``events`` outbox events during an outage of ``outage_s``; the time from
    central back to the backlog drained by ``relays`` relays."""
    from benchmarks.servers import fresh_postgres

    assert 1 <= relays <= 8, relays
    assert 0.0 <= trade_in_share <= 1.0, trade_in_share
    run = uuid.uuid4().hex[:8]
    province_url, drop_province = fresh_postgres(postgres_url)
    central_url, drop_central = fresh_postgres(postgres_url)
    engine = create_engine(province_url)
    timed: list[_Timed] = []
    running: list[Relay] = []
    try:
        migrate.upgrade(engine)
        with tempfile.TemporaryDirectory(prefix="lqbench-relay-") as directory:
            central = CentralProcess(Path(directory) / "central", central_url)
            central.data_dir.mkdir()
            central.cli("migrate")
            # Every relay is the same province's: one set of credentials.
            credentials = _register(central, "bench")
            platform = credentials.client(central.url)
            now = datetime.now(UTC)
            trade_in = round(events * trade_in_share)
            central.start()
            try:
                vouchers = _prepare_trade_in(platform, engine, trade_in, run, now)
            finally:
                platform.close()
                central.stop()  # the outage begins
            rows: list[tuple[Any, ...]] = []
            for n in range(events):
                at = now + timedelta(microseconds=n)
                if n < trade_in:
                    payload, voucher, seq = (
                        _trade_in_payload(n, vouchers[n], at, run),
                        vouchers[n],
                        2,
                    )
                else:
                    voucher, seq = f"v-{run}-c{n}", 1
                    payload = _consumption_payload(n, voucher, at)
                rows.append(
                    (
                        f"e-{run}-{n:07d}",
                        "redemption.completed",
                        json.dumps(payload, sort_keys=True, separators=(",", ":")),
                        "pending",
                        at,
                        voucher,
                        seq,
                    )
                )
            # Trade-in and consumption events interleaved, as they happen.
            rows.sort(key=lambda row: row[0][::-1])
            _write_outbox(engine, rows)
            settings = Settings(
                data_dir=Path(directory) / "province",
                database_url=province_url,
                key_file=Path(directory) / "province-keys.json",
                relay_batch_max=batch_max,
                log_level="WARNING",
            )
            settings.data_dir.mkdir()
            generate_key_file(Path(directory) / "province-keys.json")
            for _ in range(relays):
                port = _Timed(credentials.client(central.url, timeout_s=60.0))
                timed.append(port)
                rt = build_runtime(settings, gate=MemoryGate(), central=port)
                relay = Relay(rt, port)
                running.append(relay)
                relay.start()
            time.sleep(outage_s)  # the relays fail and back off, as in an outage
            for port in timed:
                port.deliver_s, port.calls = 0.0, 0
            central.start()
            started = time.perf_counter()
            deadline = started + DRAIN_TIMEOUT_S
            while _pending(engine) and time.perf_counter() < deadline:
                time.sleep(POLL_S)
            drain_s = time.perf_counter() - started
            for relay in running:
                relay.stop()
            running.clear()
            checks = _checks(engine, central_url, events, trade_in)
            central.stop()
        deliver_s = sum(port.deliver_s for port in timed)
        rounds = sum(port.calls for port in timed)
        return DrainResult(
            events=events,
            drain_s=drain_s,
            deliver_s=deliver_s,
            store_s=max(0.0, drain_s * relays - deliver_s),
            rounds=rounds,
            checks=checks,
        )
    finally:
        for relay in running:
            relay.stop()
        for port in timed:
            port.inner.close()
        engine.dispose()
        drop_province()
        drop_central()


def _checks(engine: sa.Engine, central_url: str, events: int, trade_in: int) -> dict[str, Any]:
    with engine.connect() as connection:
        province: dict[str, int] = dict(
            connection.exec_driver_sql("SELECT status, count(*) FROM outbox GROUP BY status").all()
        )
    central_engine = create_engine(central_url)
    try:
        with central_engine.connect() as connection:
            applied: dict[str, int] = dict(
                connection.exec_driver_sql(
                    "SELECT state, count(*) FROM central_events GROUP BY state"
                ).all()
            )
            locks: dict[str, int] = dict(
                connection.exec_driver_sql(
                    "SELECT state, count(*) FROM central_locks GROUP BY state"
                ).all()
            )
            serials = connection.exec_driver_sql("SELECT count(*) FROM central_serials").scalar()
    finally:
        central_engine.dispose()
    checks = {
        "province": province,
        "central_events": applied,
        "central_locks": locks,
        "serials": serials,
    }
    expected_delivered = events + trade_in
    if (
        province.get("delivered") != expected_delivered
        or province.get("pending")
        or province.get("dead")
        or applied.get("applied") != expected_delivered
        or locks.get("consumed", 0) != trade_in
        or serials != trade_in
    ):
        raise AssertionError(f"the backlog did not arrive whole: {checks}")
    return checks


def relay_figure(postgres_url: str, *, events: int, relays: int) -> Any:
    """``relay_drain`` as the bench table's figure: events a second, from central back
    to the backlog drained; 20% of the events trade-in, batches of 1,000."""
    from benchmarks.scenarios import Figure

    result = relay_drain(postgres_url, events=events, relays=relays, batch_max=1000)
    return Figure(
        result.rate,
        checks={
            **result.checks,
            "drain_s": round(result.drain_s, 2),
            "deliver_s": round(result.deliver_s, 2),
            "store_s": round(result.store_s, 2),
            "rounds": result.rounds,
        },
    )
