"""Central in the lab: a real ``lequan central serve`` process on a loopback port
(``CentralProcess``, shared with tests/central), and the benchmark of its batch lock
API (``central_batch_locks``), to compare with ``baseline_pg_hot_row`` of the same run.

The scenario: ``clients`` threads, each one province's ``HttpCentral``, send
batches of ``batch`` lock requests for distinct people (one category, one
slot each) for ``duration_s``; a lock is counted when central answered it
``locked``. Every answer is checked: a person locked twice fails the run.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from lequan.adapters.central_http import HttpCentral
from lequan.ports.central import LockOutcome, LockRequest

__all__ = ["CentralProcess", "central_batch_locks", "serve_central"]

START_TIMEOUT_S = 60.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class CentralProcess:
    """``lequan central serve`` on a loopback port, with its store in ``data_dir`` (SQLite)
    or at ``database_url``; can be killed (SIGKILL) and started again on the same port."""

    data_dir: Path
    database_url: str = ""
    port: int = field(default_factory=_free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    _stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "LEQUAN_CENTRAL_DATA_DIR": str(self.data_dir),
            "LEQUAN_CENTRAL_PORT": str(self.port),
            "LEQUAN_CENTRAL_LOG_LEVEL": "WARNING",
            "LEQUAN_CENTRAL_SWEEP_INTERVAL_S": "0.5",
            **self.extra_env,
        }
        if self.database_url:
            env["LEQUAN_CENTRAL_DATABASE_URL"] = self.database_url
        return env

    def cli(self, *args: str) -> Any:
        """Run ``lequan central ARGS`` against this central's store; its JSON output."""
        done = subprocess.run(  # noqa: S603  # our own interpreter and arguments
            [sys.executable, "-m", "lequan.cli", "central", *args],
            env=self.env(),
            capture_output=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"lequan central {' '.join(args)}: {done.stderr.decode()[-2000:]}")
        out = done.stdout.decode()
        return json.loads(out) if out.strip().startswith(("{", "[")) else out

    def start(self) -> None:
        assert self.process is None, "already running"
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the process
        self.process = subprocess.Popen(  # our own interpreter and arguments
            [sys.executable, "-m", "lequan.cli", "central", "serve"],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        # One client for every probe: httpx makes each new client a TLS context (CPU the
        # starting server needs), and these probes are plain HTTP.
        with httpx.Client(base_url=self.url, timeout=1.0) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._stderr.seek(0)
                    said = self._stderr.read()[-2000:].decode(errors="replace")
                    self.process = None
                    self._close_stderr()
                    raise RuntimeError(f"central exited at start; it said:\n{said}")
                try:
                    if probe.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise RuntimeError("central did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what was committed must be all there is."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(15)
        self.process = None
        self._close_stderr()

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self._close_stderr()

    def province(self, code: str, **options: Any) -> HttpCentral:
        """Register a province (in this process, on central's store: what ``lequan
        central province add`` does, without starting an interpreter) and a client
        of central as it."""
        from datetime import UTC, datetime

        from lequan.central.bootstrap import build_central
        from lequan.central.config import CentralSettings
        from lequan.central.ports import ProvinceRow

        settings = CentralSettings(data_dir=self.data_dir, database_url=self.database_url)
        built = build_central(settings)
        try:
            row = ProvinceRow(
                code, f"province-{code}", secrets.token_urlsafe(32), datetime.now(UTC)
            )
            built.service.store.add_province(row)
            public_key = built.service.key.public_key_hex
        finally:
            built.close()
        return HttpCentral(
            self.url, app_id=row.app_id, secret=row.secret, public_key=public_key, **options
        )


@contextmanager
def serve_central(
    database_url: str = "", extra_env: dict[str, str] | None = None
) -> Iterator[CentralProcess]:
    with tempfile.TemporaryDirectory() as data_dir:
        central = CentralProcess(Path(data_dir), database_url, extra_env=extra_env or {})
        if database_url:
            central.cli("migrate")
        central.start()
        try:
            yield central
        finally:
            central.stop()


def central_batch_locks(
    database_url: str,
    *,
    clients: int,
    batch: int,
    duration_s: float,
    workers: int = 1,
    redis_url: str = "",
) -> tuple[float, list[float], str]:
    """Locks a second through central's batch API, the batches' latencies (ms) and a
    note; fails if any person got two locks. ``workers`` > 1 needs ``redis_url`` (the
    workers share their nonces there)."""
    extra_env = {}
    if workers > 1:
        assert redis_url, "central's workers share nonces through Redis"
        extra_env = {
            "LEQUAN_CENTRAL_WORKERS": str(workers),
            "LEQUAN_CENTRAL_REDIS_URL": redis_url,
            "LEQUAN_CENTRAL_REDIS_KEY_PREFIX": f"lqcb:{uuid.uuid4().hex[:8]}:",
        }
    with serve_central(database_url, extra_env) as central:
        provinces = [central.province(f"bench{n}") for n in range(clients)]
        locked = [0] * clients
        latencies_ms: list[float] = []
        seen: set[str] = set()
        guard = threading.Lock()
        stop_at = time.monotonic() + duration_s
        run = uuid.uuid4().hex[:8]

        def client(n: int) -> None:
            platform = provinces[n]
            sent = 0
            while time.monotonic() < stop_at:
                requests = [
                    LockRequest(
                        lock_id=f"{run}-{n}-{sent + i}",
                        pseudonym=secrets.token_hex(32),
                        category="refrigerator",
                        items_max=1,
                        hold_s=600,
                    )
                    for i in range(batch)
                ]
                sent += batch
                started = time.perf_counter()
                results = platform.lock(requests)
                elapsed_ms = (time.perf_counter() - started) * 1000
                wins = [r.lock_id for r in results if r.outcome is LockOutcome.LOCKED]
                with guard:
                    latencies_ms.append(elapsed_ms)
                    locked[n] += len(wins)
                    assert not seen.intersection(wins), "a lock answered twice"
                    seen.update(wins)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed_s = time.monotonic() - started
        for platform in provinces:
            platform.close()
    rate = sum(locked) / elapsed_s
    note = f"{clients} provinces x batches of {batch}, distinct people, {workers} process(es)"
    return rate, latencies_ms, note


def central_lock_figure(
    database_url: str, *, duration_s: float, workers: int = 1, redis_url: str = ""
) -> Any:
    """``central_batch_locks`` as the bench table's figure: 4 provinces, batches of 1,000."""
    import statistics

    from benchmarks.scenarios import Figure

    rate, latencies_ms, _ = central_batch_locks(
        database_url,
        clients=4,
        batch=1000,
        duration_s=duration_s,
        workers=workers,
        redis_url=redis_url,
    )
    ordered = sorted(latencies_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else None
    return Figure(
        rate, statistics.median(ordered) if ordered else None, p99, {"batches": len(ordered)}
    )
