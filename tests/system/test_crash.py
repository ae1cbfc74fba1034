"""Crash consistency: SIGKILL the server in the middle of a crowd, start it
again on the same store, and nothing acknowledged is lost, nothing is sold
twice, and the gate comes back from the store."""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from lequan.adapters.sql import tables as t
from lequan.bench import scenarios
from lequan.bench.servers import free_port, start_lequan
from lequan.client import LequanAuth

PEOPLE = 6000
STOCK = 4000


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


@pytest.mark.slow
def test_sigkill_mid_crowd_loses_nothing_acknowledged_and_oversells_nothing() -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{directory}/lequan.db"
        with scenarios.prepare_stack(
            Path(directory),
            database_url=url,
            redis_url="",
            people=PEOPLE,
            stock_by_channel={scenarios.CHANNEL: STOCK},
        ) as stack:
            env, secret = stack.env, stack.secrets[scenarios.CHANNEL]
            engine = stack.rt.store.engine
        port = free_port()
        server = start_lequan(env, port)
        acknowledged: dict[str, str] = {}
        errors: list[BaseException] = []

        def crowd() -> None:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                auth=LequanAuth(scenarios.CHANNEL, secret),
                timeout=30,
            ) as client:
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
        server.send_signal(signal.SIGKILL)  # no shutdown, no flush: a crash
        server.wait()
        thread.join(60)
        assert len(acknowledged) >= 500, "the crowd never got going"

        with engine.connect() as connection:
            stored = dict(
                connection.execute(sa.select(t.vouchers.c.id, t.vouchers.c.person_id)).all()
            )
        # Durability: every acknowledged voucher is in the store.
        missing = set(acknowledged.values()) - set(stored)
        assert not missing, f"{len(missing)} acknowledged vouchers were lost"

        # Restart on the same store: the gate is rebuilt from it.
        server = start_lequan(env, port)
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}",
                auth=LequanAuth(scenarios.CHANNEL, secret),
                timeout=30,
            ) as client:
                # Everyone claims (again): nobody twice, and never past the stock.
                for start in range(0, PEOPLE, 500):
                    _batch(client, range(start, start + 500), "b")
        finally:
            server.terminate()
            server.wait(15)
        with engine.connect() as connection:
            rows = connection.execute(sa.select(t.vouchers.c.person_id)).all()
        engine.dispose()
        people = [row.person_id for row in rows]
        assert len(people) == STOCK  # sold out exactly: no oversell, no leak
        assert len(set(people)) == len(people)  # nobody twice
