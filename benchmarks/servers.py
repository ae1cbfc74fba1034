"""Servers for the benchmark: lequan itself and the bare baselines, each a
real ``uvicorn`` process on a loopback port, stopped when the block ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa

from benchmarks.baselines import BARE_APPS

__all__ = ["free_port", "fresh_postgres", "kill_hard", "serve_bare", "serve_lequan", "start_lequan"]

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_up(process: subprocess.Popen[bytes], port: int, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    # One client for every probe: httpx makes each new client a TLS context (CPU the
    # starting server needs), and these probes are plain HTTP.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1.0) as probe:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
            try:
                answer = probe.get(path)
                # /healthz: the process answers. /readyz: its store and gate answer and no
                # campaign's gate is still waiting out a fence (the load would hear
                # gate_rebuilding and measure nothing).
                if path != "/readyz" or answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"the server on port {port} did not start")


@contextmanager
def _process(args: list[str], env: dict[str, str], port: int, probe: str) -> Iterator[int]:
    """The server's stderr goes to a scratch file: shown if it fails to start, never a
    pipe nobody reads (a full pipe would stall the server)."""
    with tempfile.TemporaryFile() as stderr:
        # Our own interpreter and arguments; nothing here comes from outside.
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)  # noqa: S603
        try:
            try:
                _wait_until_up(process, port, probe)
            except RuntimeError as error:
                stderr.seek(0)
                tail = stderr.read()[-2000:].decode(errors="replace")
                raise RuntimeError(f"{error}; it said:\n{tail}") from None
            yield port
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def lequan_args(port: int, *, workers: int = 1) -> list[str]:
    """The command line of a lequan server process on ``port``."""
    return [
        sys.executable, "-m", "uvicorn", "lequan.http.asgi:create", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--no-access-log", "--workers", str(workers),
    ]  # fmt: skip


def start_lequan(env: dict[str, str], port: int, *, workers: int = 1) -> subprocess.Popen[bytes]:
    """A lequan server process, answering on ``port`` when this returns; the caller stops it.

    It leads a process group of its own, so ``kill_hard`` takes its workers too.
    """
    # Our own interpreter and arguments; nothing here comes from outside.
    process = subprocess.Popen(  # noqa: S603
        lequan_args(port, workers=workers), env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_until_up(process, port, "/healthz")
    except RuntimeError:
        process.kill()
        raise
    return process


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server and every worker of it: a crash, no shutdown, no flush."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def serve_lequan(env: dict[str, str], *, workers: int = 1) -> Iterator[int]:
    """``lequan`` on a free port with the given LEQUAN_* settings."""
    port = free_port()
    with _process(
        lequan_args(port, workers=workers), {**os.environ, **env}, port, "/readyz"
    ) as bound:
        yield bound


@contextmanager
def serve_bare(kind: str, *, workers: int = 1) -> Iterator[int]:
    """A bare ASGI app or a bare FastAPI + Pydantic route, for the baselines."""
    assert kind in ("asgi", "fastapi_app")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "bare_apps.py").write_text(BARE_APPS, encoding="utf-8")
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            f"bare_apps:{kind}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(workers),
            "--app-dir",
            directory,
        ]
        with _process(args, dict(os.environ), port, "/") as bound:
            yield bound


def fresh_postgres(base_url: str) -> tuple[str, Callable[[], None]]:
    """A new database on the server of ``base_url``, and how to drop it."""
    name = f"lq_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop
