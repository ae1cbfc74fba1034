"""The edge under unauthenticated traffic: ``lequan serve`` with its own limits, and
with the shipped nginx configuration in front of it.

Every server here is a real process on a 127.0.0.1 port; every load is a few
connections. Timeouts are set small in the server's settings and waited for
on the socket, with a bound.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks import scenarios
from benchmarks.servers import _process as serving
from benchmarks.servers import free_port
from lequan.client import LequanAuth
from tests.conftest import REQUIRE_SERVICES
from tests.loopback import loopback_client

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "lequan.conf"
HEADER_BYTES_MAX = 8192
HEADER_TIMEOUT_S = 1.0


def _up(port: int) -> bool:
    try:
        with loopback_client(timeout=1.0) as probe:
            return probe.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, str]]:
    """``lequan serve`` on the embedded default with one live campaign: (port, wechat's secret)."""
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory),
            database_url=f"sqlite:///{directory}/lequan.db",
            redis_url="",
            people=20,
        ) as stack,
    ):
        env = {
            **os.environ,
            **stack.env,
            "LEQUAN_HTTP_HEADER_BYTES_MAX": str(HEADER_BYTES_MAX),
            "LEQUAN_HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        }
        stack.rt.store.dispose()
        port = free_port()
        lequan = [sys.executable, "-c", "from lequan.cli import main; main()"]
        args = [*lequan, "serve", "--host", "127.0.0.1", "--port", str(port)]
        with serving(args, env, port, "/healthz"):
            yield port, stack.secrets[scenarios.CHANNEL]


def _exchange(port: int, *parts: bytes, wait_s: float = 10.0) -> bytes:
    """Send ``parts`` on a new connection, then read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as conn:
        for part in parts:
            try:
                conn.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before it was all sent: read the answer
        received = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def _status(answer: bytes) -> int:
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    assert match, answer[:200]
    return int(match.group(1))


def _error_code(answer: bytes) -> str:
    code: str = json.loads(answer.split(b"\r\n\r\n", 1)[1])["code"]
    return code


def _claim(port: int, secret: str, user: str, key: str) -> httpx.Response:
    body = {k: v for k, v in scenarios._claim_item(int(user.removeprefix("b"))).items()}
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", auth=LequanAuth(scenarios.CHANNEL, secret)
    ) as client:
        return client.post("/v1/claims", json=body, headers={"Idempotency-Key": key}, timeout=30)


# -- lequan serve on its own ---------------------------------------------------------


@pytest.mark.parametrize("finished", [True, False], ids=["whole", "unfinished"])
def test_a_head_over_the_limit_is_431_and_the_server_stays_up(
    served: tuple[int, str], finished: bool
) -> None:
    """Over the limit whether it arrives whole in one read or is never finished (the
    bytes are counted as they come)."""
    port, _ = served
    head = b"GET /healthz HTTP/1.1\r\nHost: lequan\r\nX-Padding: " + b"a" * (2 * HEADER_BYTES_MAX)
    answer = _exchange(port, head + b"\r\n\r\n" if finished else head)
    assert _status(answer) == 431
    assert _error_code(answer) == "headers_too_large"
    assert _up(port)


def test_a_head_that_trickles_is_408_after_the_header_timeout(served: tuple[int, str]) -> None:
    port, _ = served
    started = time.monotonic()
    # The head is never finished: the server must give up on its own.
    answer = _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: lequan\r\n")
    assert _status(answer) == 408
    assert _error_code(answer) == "request_timeout"
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9
    assert _up(port)


def test_a_connection_that_sends_nothing_is_let_go(served: tuple[int, str]) -> None:
    port, _ = served
    assert _exchange(port) == b""  # closed by the server, within the bounded wait


def test_a_head_within_the_limit_and_a_signed_claim_pass(served: tuple[int, str]) -> None:
    port, secret = served
    fits = b"X-Padding: " + b"a" * (HEADER_BYTES_MAX // 2) + b"\r\n"
    answer = _exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: lequan\r\nConnection: close\r\n", fits, b"\r\n"
    )
    assert _status(answer) == 200
    response = _claim(port, secret, "b1", "edge-k1")
    assert response.status_code == 201, response.text


# -- nginx in front, with the shipped configuration ----------------------------------


def _nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        message = "nginx is not installed (apt-get install nginx-light)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (LEQUAN_TEST_REQUIRE_SERVICES=1: required)", pytrace=False)
        pytest.skip(message)
    return found


def shipped_config(upstream_port: int, listen_port: int) -> str:
    """deploy/nginx/lequan.conf as shipped, its two addresses moved to this test's ports."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    text, servers = re.subn(
        r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};", text
    )
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", text)
    assert (servers, listens) == (1, 1), "the shipped file's addresses moved: update the test"
    return text


@pytest.fixture(scope="module")
def proxied(served: tuple[int, str]) -> Iterator[int]:
    """nginx on a loopback port in front of ``served``, with the shipped configuration."""
    nginx = _nginx()
    upstream, _ = served
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        home = Path(directory)
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (home / name).mkdir()
        (home / "lequan.conf").write_text(shipped_config(upstream, port), encoding="utf-8")
        # Root starts the workers as root too: they write this directory's temp files.
        user = "user root;" if os.geteuid() == 0 else ""
        (home / "nginx.conf").write_text(
            f"""{user}
daemon off;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    include {home}/lequan.conf;
}}
""",
            encoding="utf-8",
        )
        args = [
            nginx,
            "-p",
            str(home),
            "-e",
            str(home / "error.log"),
            "-c",
            str(home / "nginx.conf"),
        ]
        with serving(args, dict(os.environ), port, "/healthz"):
            yield port


@pytest.mark.nginx
def test_nginx_refuses_an_oversized_header_before_lequan_sees_it(proxied: int) -> None:
    big = b"X-Padding: " + b"a" * 65536 + b"\r\n"
    answer = _exchange(proxied, b"GET /healthz HTTP/1.1\r\nHost: lequan\r\n", big, b"\r\n")
    assert _status(answer) in {400, 431}


@pytest.mark.nginx
def test_a_signed_claim_passes_through_nginx(proxied: int, served: tuple[int, str]) -> None:
    _, secret = served
    response = _claim(proxied, secret, "b2", "edge-k2")
    assert response.status_code == 201, response.text
    assert response.json()["voucher"]["voucher_id"]
    # The target reaches lequan as signed, query string and all.
    with httpx.Client(
        base_url=f"http://127.0.0.1:{proxied}", auth=LequanAuth(scenarios.CHANNEL, secret)
    ) as client:
        wallet = client.get("/v1/persons/b2/vouchers", params={"limit": 5}, timeout=30)
    assert wallet.status_code == 200, wallet.text


def test_the_runbook_shows_the_shipped_configuration() -> None:
    runbook = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    start = runbook.index("<!-- deploy/nginx/lequan.conf")
    block = runbook[start:].split("```nginx\n", 1)[1].split("```", 1)[0]
    assert block == NGINX_CONF.read_text(encoding="utf-8")
