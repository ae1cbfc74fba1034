"""The fair start on ``lequan serve --workers 2`` over PostgreSQL + Redis, over real
HTTP: claims spread over both workers inside the start window are served in exactly
the order the published seed gives, nothing is sold twice, each person once, and
``lequan fairness verify`` passes; a worker SIGKILLed inside the window answers its
waiting claims nothing, and what its winners had reserved comes back to the stock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa

from benchmarks import scenarios
from benchmarks.servers import free_port
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.client import LequanAuth
from lequan.services.campaigns import pool_key
from lequan.services.invariants import check_campaign

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PEOPLE = 300
STOCK = 40
WINDOW_S = 4
BATCH = 10
CAMPAIGN = scenarios.CAMPAIGN_ID
DRAW = f"{CAMPAIGN}:r1"
START_TIMEOUT_S = 60.0


@pytest.fixture
def database_url(migrated_postgres_url: str) -> str:
    return migrated_postgres_url


@contextmanager
def window_stack(
    database_url: str, redis_url: str, *, intake_s: int = 0
) -> Iterator[scenarios.Stack]:
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory),
            database_url=database_url,
            redis_url=redis_url,
            people=PEOPLE,
            stock_by_channel={scenarios.CHANNEL: STOCK},
            start_window_s=WINDOW_S,
            start_window_intake_s=intake_s,
        ) as stack,
    ):
        yield stack


@contextmanager
def lequan_serve(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``lequan serve --workers 2`` on a free port, its own process group."""
    port = free_port()
    lequan = Path(sys.executable).with_name("lequan")
    # Our own interpreter's script and arguments; nothing here comes from outside.
    process = subprocess.Popen(
        [str(lequan), "serve", "--workers", "2", "--port", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(workers_of(process)) < 2 or not ready(base):
            assert process.poll() is None, "lequan serve exited"
            assert time.monotonic() < deadline, "lequan serve did not start"
            time.sleep(0.2)
        yield process, base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def workers_of(process: subprocess.Popen[bytes]) -> list[int]:
    """The worker processes uvicorn spawned (its children, not its resource tracker)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    found = []
    for pid in children.read_text().split() if children.exists() else []:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(pid))
    return found


def claim_wave(
    stack: scenarios.Stack, base: str, people: range
) -> dict[int, dict[str, Any] | None]:
    """Everyone in ``people`` claims at once, ``BATCH`` to a call, each call on a
    connection of its own (so the kernel spreads them over the workers); each
    person's result, None where the call got no answer."""

    def send(start: int) -> dict[int, dict[str, Any] | None]:
        items = [
            {**scenarios._claim_item(i), "idempotency_key": f"fair-{i}"}
            for i in range(start, min(start + BATCH, people.stop))
        ]
        auth = LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL])
        try:
            with httpx.Client(base_url=base, auth=auth, timeout=120) as client:
                response = client.post("/v1/claims/batch", json={"items": items})
            response.raise_for_status()
        except httpx.HTTPError:
            return dict.fromkeys(range(start, start + len(items)))
        return dict(zip(range(start, start + len(items)), response.json()["results"], strict=True))

    answered: dict[int, dict[str, Any] | None] = {}
    with ThreadPoolExecutor(len(people) // BATCH + 1) as pool:
        for part in pool.map(send, range(people.start, people.stop, BATCH)):
            answered.update(part)
    return answered


def async_wave(
    stack: scenarios.Stack, base: str, people: range, *, pressed_at: str | None
) -> dict[int, dict[str, Any]]:
    """Everyone in ``people`` claims at once with ``Prefer: respond-async`` (and, given,
    when they pressed), ``BATCH`` to a call, each call on a connection of its own."""

    def send(start: int) -> dict[int, dict[str, Any]]:
        items = [
            {
                **scenarios._claim_item(i),
                "idempotency_key": f"fair-{i}",
                **({} if pressed_at is None else {"pressed_at": pressed_at}),
            }
            for i in range(start, min(start + BATCH, people.stop))
        ]
        auth = LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL])
        with httpx.Client(base_url=base, auth=auth, timeout=30) as client:
            response = client.post(
                "/v1/claims/batch", json={"items": items}, headers={"Prefer": "respond-async"}
            )
        assert response.status_code == 200, response.text
        return dict(zip(range(start, start + len(items)), response.json()["results"], strict=True))

    answered: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(len(people) // BATCH + 1) as pool:
        for part in pool.map(send, range(people.start, people.stop, BATCH)):
            answered.update(part)
    return answered


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def draw_keys(stack: scenarios.Stack) -> dict[str, str]:
    base = f"{stack.env['LEQUAN_REDIS_KEY_PREFIX']}{{d:{DRAW}}}"
    return {"entries": f"{base}:entries", "entry": f"{base}:entry"}


def entry_owners(stack: scenarios.Stack, redis_url: str) -> Counter[bytes]:
    """The draw's entries in the gate, counted by the process that entered them."""
    client = redis.Redis.from_url(redis_url)
    try:
        payloads = client.hvals(draw_keys(stack)["entry"])
    finally:
        client.close()
    return Counter((p if isinstance(p, bytes) else p.encode()).split(b"\x1f")[0] for p in payloads)


def verify_cli(base: str) -> dict[str, Any]:
    lequan = Path(sys.executable).with_name("lequan")
    # Our own interpreter's script and arguments; nothing here comes from outside.
    done = subprocess.run(
        [str(lequan), "fairness", "verify", "--campaign", CAMPAIGN, "--round", "r1",
         "--url", base, "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def published(base: str) -> list[dict[str, Any]]:
    path = f"/v1/public/campaigns/{CAMPAIGN}/rounds/r1/fairness"
    wait_until(
        lambda: httpx.get(f"{base}{path}").json()["seed"] is not None, "the draw published", 60
    )
    return list(httpx.get(f"{base}{path}/entries", params={"limit": 10_000}).json()["items"])


def stored_vouchers(stack: scenarios.Stack) -> list[tuple[str, str | None]]:
    with sql_store(stack.rt.store).engine.connect() as connection:
        return [
            (row.person_id, row.draw_ticket)
            for row in connection.execute(
                sa.select(t.vouchers.c.person_id, t.vouchers.c.draw_ticket)
            )
        ]


def test_two_workers_serve_the_window_in_exactly_the_published_order(
    database_url: str, redis_url: str
) -> None:
    with window_stack(database_url, redis_url) as stack, lequan_serve(stack.env) as (_p, base):
        release = scenarios.release_soon(stack, lead_s=2.0)
        time.sleep(max(0.0, release - time.time()) + 0.2)
        started = time.time()
        answers = claim_wave(stack, base, range(PEOPLE))
        assert time.time() - started > WINDOW_S - 1.0  # held until the window closed

        owners = entry_owners(stack, redis_url)  # both workers entered claims in the one draw
        assert len(owners) == 2, owners
        assert sum(owners.values()) == PEOPLE

        entries = published(base)
        assert [e["outcome"] for e in entries] == ["won"] * STOCK + ["sold_out"] * (PEOPLE - STOCK)
        won = {e["ticket"] for e in entries[:STOCK]}
        issued = [a for a in answers.values() if a is not None and a["outcome"] == "issued"]
        assert {a["voucher"]["draw_ticket"] for a in issued} == won
        assert all(a is not None for a in answers.values())
        vouchers = stored_vouchers(stack)
        assert len(vouchers) == STOCK
        assert len({person for person, _ticket in vouchers}) == STOCK  # each person once
        assert {ticket for _person, ticket in vouchers} == won

        verified = verify_cli(base)
        assert (verified["ok"], verified["entries"], verified["won"]) == (True, PEOPLE, STOCK)
        check = check_campaign(stack.rt, CAMPAIGN)
        assert check.ok, check.problems


def test_a_worker_killed_in_the_window_answers_nothing_and_leaks_no_stock(
    database_url: str, redis_url: str
) -> None:
    with (
        window_stack(database_url, redis_url) as stack,
        lequan_serve(stack.env) as (
            process,
            base,
        ),
    ):
        release = scenarios.release_soon(stack, lead_s=2.0)
        time.sleep(max(0.0, release - time.time()) + 0.2)
        client = redis.Redis.from_url(redis_url)
        with ThreadPoolExecutor(1) as crowd:
            wave = crowd.submit(claim_wave, stack, base, range(PEOPLE))
            try:
                wait_until(
                    lambda: client.zcard(draw_keys(stack)["entries"]) == PEOPLE,
                    "every claim entered",
                    WINDOW_S,
                )
            finally:
                client.close()
            victim = workers_of(process)[0]
            os.kill(victim, signal.SIGKILL)  # inside the window, its claims waiting
            answers = wave.result(timeout=180)

        lost = sorted(i for i, a in answers.items() if a is None)
        assert 0 < len(lost) < PEOPLE  # the victim's claims, answered nothing
        entries = published(base)
        assert [e["outcome"] for e in entries] == ["won"] * STOCK + ["sold_out"] * (PEOPLE - STOCK)
        verify_cli(base)

        # The victim's winners' reservations are reaped after the fence: the stock
        # comes back, and the people whose calls died get it when they retry.
        gate = stack.rt.gate
        pool = pool_key(CAMPAIGN, "r1", scenarios.CHANNEL)
        issued_now = len(stored_vouchers(stack))
        wait_until(
            lambda: gate.remaining(pool, scenarios.TEMPLATE) == STOCK - issued_now,
            "the dead worker's reservations reaped",
            60,
        )
        # Their keys stay held (for every worker) until the dead worker's holds expire:
        # until then a retry hears "in flight", and is sent again.
        waiting = set(lost)
        deadline = time.monotonic() + 90
        while waiting and time.monotonic() < deadline:
            for person in sorted(waiting):
                [answer] = claim_wave(stack, base, range(person, person + 1)).values()
                if answer is not None and (
                    answer["status_code"] not in (409, 503) or answer["outcome"] == "sold_out"
                ):
                    waiting.discard(person)
            time.sleep(1)
        assert not waiting
        vouchers = stored_vouchers(stack)
        assert len(vouchers) == STOCK  # every voucher given out, none twice
        assert len({person for person, _ticket in vouchers}) == STOCK
        check = check_campaign(stack.rt, CAMPAIGN)
        assert check.ok, check.problems


def test_two_workers_take_in_claims_pressed_in_the_window_during_its_intake(
    database_url: str, redis_url: str
) -> None:
    """The window has closed when the channel's queue delivers its claims: those it says
    were pressed inside are entered by either worker and answered at once, those
    pressed after are queued; sent again after the draw, the winners are exactly the
    published order's first, and the queued claims find the stock gone."""
    in_window, after_it = range(0, 200), range(200, PEOPLE)
    with (
        window_stack(database_url, redis_url, intake_s=6) as stack,
        lequan_serve(stack.env) as (_p, base),
    ):
        release = scenarios.release_soon(stack, lead_s=2.0)
        time.sleep(max(0.0, release - time.time()) + WINDOW_S + 0.5)  # the window is shut

        def at(offset_s: float) -> str:
            return datetime.fromtimestamp(release + offset_s, UTC).isoformat()

        first = async_wave(stack, base, in_window, pressed_at=at(1.0))
        late = async_wave(stack, base, after_it, pressed_at=at(WINDOW_S + 0.2))
        assert {a["outcome"] for a in first.values()} == {"entered"}
        assert {a["status_code"] for a in first.values()} == {202}
        assert {a["outcome"] for a in late.values()} == {"queued"}

        owners = entry_owners(stack, redis_url)  # both workers entered claims in the one draw
        assert len(owners) == 2, owners
        assert sum(owners.values()) == len(in_window)

        entries = published(base)
        won = {e["ticket"] for e in entries[:STOCK]}
        assert {e["ticket"] for e in entries} == {a["draw_ticket"] for a in first.values()}

        def answers() -> dict[int, dict[str, Any]]:
            return {
                **async_wave(stack, base, in_window, pressed_at=None),
                **async_wave(stack, base, after_it, pressed_at=None),
            }

        final: dict[int, dict[str, Any]] = {}

        def settled() -> bool:
            final.update(answers())
            waiting = {"idempotency_in_flight", "entered", "queued"}
            return not any(a["outcome"] in waiting for a in final.values())

        wait_until(settled, "every claim answered", 60)
        issued = [a for a in final.values() if a["outcome"] == "issued"]
        assert {a["voucher"]["draw_ticket"] for a in issued} == won
        assert {final[i]["outcome"] for i in after_it} == {"sold_out"}
        vouchers = stored_vouchers(stack)
        assert len(vouchers) == STOCK
        assert len({person for person, _ticket in vouchers}) == STOCK  # each person once
        verified = verify_cli(base)
        assert (verified["ok"], verified["entries"], verified["won"]) == (True, 200, STOCK)
        check = check_campaign(stack.rt, CAMPAIGN)
        assert check.ok, check.problems
