"""Crash consistency: SIGKILL the server in the middle of a crowd, start it
again on the same store, and nothing acknowledged is lost, nothing is sold
twice, and the gate comes back from the store."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from benchmarks import scenarios
from benchmarks.servers import free_port, fresh_postgres, kill_hard, start_lequan
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.client import LequanAuth

PEOPLE = 3000
STOCK = 2000


def _batch(client: httpx.Client, people: range, attempt: str) -> dict[str, str]:
    """Claim for ``people``; returns person -> voucher id for every "issued" answer."""
    items = [
        {
            **scenarios._claim_item(i),
            "idempotency_key": f"crash-{i}-{attempt}",
        }
        for i in people
    ]
    response = client.post("/v1/claims/batch", json={"items": items})
    response.raise_for_status()
    return {
        item["channel_user_id"]: result["voucher"]["voucher_id"]
        for item, result in zip(items, response.json()["results"], strict=True)
        if result["outcome"] == "issued"
    }


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("postgres+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def mode(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, int]]:
    """(database_url, redis_url, workers): the embedded default in one process, or
    PostgreSQL with a bucketed Redis gate shared by two worker processes."""
    if request.param == "embedded":
        yield "", "", 1
        return
    postgres_url: str = request.getfixturevalue("postgres_url")
    redis_url: str = request.getfixturevalue("redis_url")
    url, drop = fresh_postgres(postgres_url)
    try:
        yield url, redis_url, 2
    finally:
        drop()


@pytest.mark.slow
def test_sigkill_mid_crowd_loses_nothing_acknowledged_and_oversells_nothing(
    mode: tuple[str, str, int],
) -> None:
    database_url, redis_url, workers = mode
    with tempfile.TemporaryDirectory() as directory:
        url = database_url or f"sqlite:///{directory}/lequan.db"
        with scenarios.prepare_stack(
            Path(directory),
            database_url=url,
            redis_url=redis_url,
            people=PEOPLE,
            stock_by_channel={scenarios.CHANNEL: STOCK},
        ) as stack:
            # A short reservation ttl: what the killed processes left pending in
            # the shared gate is reaped soon after the restart.
            env = {
                **stack.env,
                "LEQUAN_CLAIM_RESERVATION_TTL_S": "0.5",
                "LEQUAN_GATE_BUCKETS": "4" if redis_url else "1",
            }
            secret = stack.secrets[scenarios.CHANNEL]
            engine = sql_store(stack.rt.store).engine
            if redis_url:  # the stack loaded the gate with one bucket; these servers use four
                stack.rt.gate.forget(scenarios.CAMPAIGN_ID, [])
        port = free_port()
        server = start_lequan(env, port, workers=workers)
        acknowledged: dict[str, str] = {}
        errors: list[BaseException] = []

        def crowd() -> None:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                auth=LequanAuth(scenarios.CHANNEL, secret),
                timeout=30,
            ) as client:
                # Round and round (a shared gate may still be loading at first:
                # gate_rebuilding, retried with the same keys) until the kill.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    for start in range(0, PEOPLE // 2, 250):
                        try:
                            acknowledged.update(_batch(client, range(start, start + 250), "a"))
                        except (httpx.HTTPError, json.JSONDecodeError) as error:
                            errors.append(error)  # the kill cuts a request short
                            return

        thread = threading.Thread(target=crowd)
        thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        kill_hard(server)  # no shutdown, no flush: a crash
        thread.join(60)
        assert len(acknowledged) >= 500, f"the crowd never got going: {errors[:1]}"

        with engine.connect() as connection:
            stored = dict(
                connection.execute(sa.select(t.vouchers.c.id, t.vouchers.c.person_id)).all()
            )
        # Durability: every acknowledged voucher is in the store.
        missing = set(acknowledged.values()) - set(stored)
        assert not missing, f"{len(missing)} acknowledged vouchers were lost"

        # Restart on the same store: the embedded gate is rebuilt from it; the
        # shared one is still there, and what the dead processes left pending
        # in it is settled or released once older than the fence.
        server = start_lequan(env, port, workers=workers)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                auth=LequanAuth(scenarios.CHANNEL, secret),
                timeout=30,
            ) as client:
                # Everyone claims (again), until the stock is gone: nobody twice,
                # never past the stock, and no unit lost to the crash.
                deadline = time.monotonic() + 60
                for attempt in "bcdefgh":
                    for start in range(0, PEOPLE, 500):
                        _batch(client, range(start, start + 500), attempt)
                    with engine.connect() as connection:
                        count = connection.execute(
                            sa.select(sa.func.count()).select_from(t.vouchers)
                        ).scalar_one()
                    if count >= STOCK or time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
        finally:
            server.terminate()
            server.wait(15)
        with engine.connect() as connection:
            rows = connection.execute(sa.select(t.vouchers.c.person_id)).all()
        engine.dispose()
        people = [row.person_id for row in rows]
        assert len(people) == STOCK  # sold out exactly: no oversell, no leak
        assert len(set(people)) == len(people)  # nobody twice
