"""Two worker processes on PostgreSQL + a bucketed Redis gate, over real HTTP:
claims and one-step redemptions from many connections at once, each worker
with its own group committer and redemption writer. Nothing is sold twice,
no voucher is spent twice, and the books balance; a claim's key in flight in
one worker is in flight in the other."""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from benchmarks import scenarios
from benchmarks.servers import free_port, start_lequan
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.client import LequanAuth
from lequan.services import admin
from lequan.services.invariants import check_campaign
from tests.loopback import loopback_client

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PEOPLE = 600
STOCK = 400


@pytest.fixture
def database_url(migrated_postgres_url: str) -> str:
    return migrated_postgres_url


@contextmanager
def prepared(database_url: str, redis_url: str, **options: Any) -> Iterator[scenarios.Stack]:
    """The bench's store (one live campaign, apps, people) in a scratch directory."""
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory), database_url=database_url, redis_url=redis_url, **options
        ) as stack,
    ):
        yield stack


def test_two_workers_sell_and_redeem_each_voucher_once(database_url: str, redis_url: str) -> None:
    with prepared(
        database_url,
        redis_url,
        people=PEOPLE,
        stock_by_channel={scenarios.CHANNEL: STOCK},
        gate_buckets=4,
    ) as stack:
        viewer = admin.add_operator(stack.rt, "vera", role="viewer")
        port = free_port()
        server = start_lequan(stack.env, port, workers=2)
        base = f"http://127.0.0.1:{port}"
        try:
            # Everyone claims, in batches of 50 from 8 connections at once.
            def claim(start: int) -> dict[str, str]:
                items = [
                    {**scenarios._claim_item(i), "idempotency_key": f"w-{i}"}
                    for i in range(start, start + 50)
                ]
                with loopback_client(
                    base,
                    auth=LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL]),
                    timeout=60,
                ) as client:
                    response = client.post("/v1/claims/batch", json={"items": items})
                response.raise_for_status()
                return {
                    item["channel_user_id"]: result["voucher"]["voucher_id"]
                    for item, result in zip(items, response.json()["results"], strict=True)
                    if result["outcome"] == "issued"
                }

            with ThreadPoolExecutor(8) as pool:
                issued: dict[str, str] = {}
                for part in pool.map(claim, range(0, PEOPLE, 50)):
                    issued.update(part)
            assert len(issued) == STOCK  # the stock, exactly, across both workers

            # Every voucher redeemed twice at once (two tills, two keys).
            def redeem(job: tuple[str, str, str]) -> tuple[int, str]:
                user, voucher_id, till = job
                body = {
                    "voucher_id": voucher_id,
                    "channel_id": scenarios.CHANNEL,
                    "channel_user_id": user,
                    "merchant_id": "m-cafe-001",
                    "order_id": f"{till}-{voucher_id}",
                    "order_amount_fen": 32000,
                    "mode": "in_store",
                }
                with loopback_client(
                    base,
                    auth=LequanAuth(scenarios.ACQUIRER, stack.secrets[scenarios.ACQUIRER]),
                    timeout=60,
                ) as client:
                    response = client.post(
                        "/v1/redemptions", json=body, headers={"Idempotency-Key": f"{till}-{user}"}
                    )
                return response.status_code, str(response.json().get("code", "redeemed"))

            jobs = [(u, v, till) for u, v in issued.items() for till in ("a", "b")]
            with ThreadPoolExecutor(32) as pool:
                answers = Counter(pool.map(redeem, jobs))
            screens = screen_figures(base, viewer)
        finally:
            server.terminate()
            server.wait(15)

        assert answers == {(201, "redeemed"): STOCK, (409, "already_redeemed"): STOCK}, answers
        # The big screen, asked of either worker, shows both workers' work.
        for figures in screens:
            assert figures == {
                "issued": STOCK,
                "sold_out": PEOPLE - STOCK,
                "redemptions": STOCK,
                "pool_issued": STOCK,
                "redeemed_in_region": STOCK,
            }
        with sql_store(stack.rt.store).engine.connect() as connection:
            redeemed = connection.execute(
                sa.select(sa.func.count())
                .select_from(t.vouchers)
                .where(t.vouchers.c.state == "redeemed")
            ).scalar_one()
            redemptions = connection.execute(
                sa.select(sa.func.count()).select_from(t.redemptions)
            ).scalar_one()
        assert redeemed == redemptions == STOCK
        check = check_campaign(stack.rt, scenarios.CAMPAIGN_ID)
        assert check.ok, check.problems


def screen_figures(base: str, token: str, *, asks: int = 6) -> list[dict[str, int]]:
    """What the screen shows, asked ``asks`` times on new connections (so of both
    workers), once every process's counts have reached the pulse (a flush later)."""

    def figures() -> dict[str, int]:
        with loopback_client(base, timeout=30) as client:
            signed_in = client.post("/v1/screen/session", json={"token": token})
            assert signed_in.status_code == 204, signed_in.text
            body = client.get("/v1/screen/snapshot").json()
        (campaign,) = body["campaigns"]
        return {
            "issued": sum(body["series"]["issued"]),
            "sold_out": body["outcomes"]["sold_out"],
            "redemptions": sum(body["series"]["redemptions"]),
            "pool_issued": sum(pool["issued"] for pool in campaign["pools"]),
            "redeemed_in_region": sum(region["redemptions"] for region in body["regions"]),
        }

    deadline = time.monotonic() + 20
    while figures()["redemptions"] < STOCK and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)  # every process's last flush, and a snapshot built after it
    return [figures() for _ in range(asks)]


SENDERS = 12
PEOPLE_SENDING_TWICE = 8


def test_one_key_sent_to_both_workers_at_once_is_answered_issued_or_in_flight(
    database_url: str, redis_url: str
) -> None:
    """A channel's retries of one claim, all at once over connections of their own:
    one voucher, and every answer the voucher (replayed) or "still in progress",
    whichever worker took it, never "already claimed"."""
    with prepared(database_url, redis_url, people=PEOPLE_SENDING_TWICE) as stack:
        port = free_port()
        server = start_lequan(stack.env, port, workers=2)
        auth = LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL])
        answers: list[list[tuple[int, dict[str, Any]]]] = []
        try:
            for person in range(PEOPLE_SENDING_TWICE):
                barrier = threading.Barrier(SENDERS)

                def send(_n: int, person: int = person, barrier: Any = barrier) -> Any:
                    with loopback_client(
                        f"http://127.0.0.1:{port}", auth=auth, timeout=60
                    ) as client:
                        client.get("/healthz")  # connected before the others are
                        barrier.wait(30)
                        response = client.post(
                            "/v1/claims",
                            json=scenarios._claim_item(person),
                            headers={"Idempotency-Key": f"twice-{person}"},
                        )
                    return response.status_code, response.json()

                with ThreadPoolExecutor(SENDERS) as pool:
                    answers.append(list(pool.map(send, range(SENDERS))))
        finally:
            server.terminate()
            server.wait(15)

        for person_answers in answers:
            seen = Counter(
                "issued" if status == 201 else f"{status} {body.get('code')}"
                for status, body in person_answers
            )
            assert set(seen) <= {"issued", "409 idempotency_in_flight"}, seen
            vouchers = {b["voucher"]["voucher_id"] for s, b in person_answers if s == 201}
            assert len(vouchers) == 1, person_answers
        with sql_store(stack.rt.store).engine.connect() as connection:
            per_person = connection.execute(
                sa.select(t.vouchers.c.person_id, sa.func.count()).group_by(t.vouchers.c.person_id)
            ).all()
        assert len(per_person) == PEOPLE_SENDING_TWICE
        assert {count for _person, count in per_person} == {1}
