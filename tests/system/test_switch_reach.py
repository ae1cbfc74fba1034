"""An operator's switch pulled in one process reaches every worker of another.

Two workers on PostgreSQL + Redis serve; the switches are pulled from this
test's own process, as ``lequan campaign redemptions pause`` or another API
host would pull them, so no worker is told. Each worker's one-step
redemption writer caches campaigns and merchants, and reads them again once
``campaign_cache_ttl_s`` old: that is when the switch reaches it. The probes
never spend: an order below the voucher's threshold is refused
``below_threshold`` until the paused redemptions are seen, and an unknown
voucher ``voucher_not_found`` until the merchant's suspension is.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks import scenarios
from benchmarks.servers import free_port, start_lequan
from lequan.client import LequanAuth
from lequan.services import switches
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

# Probes per look, each on a connection of its own so both workers take some.
PROBES = 24
MERCHANT = "m-cafe-001"
OPERATOR = "bench-checker"


@pytest.fixture
def database_url(migrated_postgres_url: str) -> str:
    return migrated_postgres_url


@contextmanager
def prepared(database_url: str, redis_url: str) -> Iterator[scenarios.Stack]:
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory), database_url=database_url, redis_url=redis_url, people=4
        ) as stack,
    ):
        yield stack


def test_a_switch_pulled_elsewhere_reaches_both_workers(database_url: str, redis_url: str) -> None:
    with prepared(database_url, redis_url) as stack:
        port = free_port()
        server = start_lequan({**stack.env, "LEQUAN_CAMPAIGN_CACHE_TTL_S": "1"}, port, workers=2)
        base = f"http://127.0.0.1:{port}"
        acquirer = LequanAuth(scenarios.ACQUIRER, stack.secrets[scenarios.ACQUIRER])
        try:
            with httpx.Client(
                base_url=base,
                auth=LequanAuth(scenarios.CHANNEL, stack.secrets[scenarios.CHANNEL]),
                timeout=60,
            ) as client:
                claimed = client.post(
                    "/v1/claims",
                    json=scenarios._claim_item(0),
                    headers={"Idempotency-Key": "reach-0"},
                )
            assert claimed.status_code == 201, claimed.text
            voucher_id = claimed.json()["voucher"]["voucher_id"]

            def redeem(voucher: str, amount_fen: int) -> httpx.Response:
                body: dict[str, Any] = {
                    "voucher_id": voucher,
                    "channel_id": scenarios.CHANNEL,
                    "channel_user_id": "b0",
                    "merchant_id": MERCHANT,
                    "order_id": f"reach-{uuid.uuid4().hex[:12]}",
                    "order_amount_fen": amount_fen,
                    "mode": "in_store",
                }
                with httpx.Client(base_url=base, auth=acquirer, timeout=60) as client:
                    response: httpx.Response = client.post(
                        "/v1/redemptions",
                        json=body,
                        headers={"Idempotency-Key": uuid.uuid4().hex},
                    )
                return response

            def probes(voucher: str, amount_fen: int) -> Counter[str]:
                answers: Counter[str] = Counter()
                for _ in range(PROBES):
                    response = redeem(voucher, amount_fen)
                    assert response.status_code in (404, 409), response.text
                    answers[response.json()["code"]] += 1
                return answers

            def all_answer(code: str, voucher: str, amount_fen: int) -> None:
                wait_until(
                    lambda: probes(voucher, amount_fen) == {code: PROBES},
                    what=f"every worker answers {code}",
                )

            # The caches warm with answers about the order and the voucher.
            assert probes(voucher_id, 100) == {"below_threshold": PROBES}
            assert probes("v-none", 32000) == {"voucher_not_found": PROBES}

            switches.pause_redemptions(
                stack.rt, scenarios.CAMPAIGN_ID, actor=OPERATOR, reason="reach"
            )
            all_answer("redemptions_paused", voucher_id, 100)
            switches.resume_redemptions(stack.rt, scenarios.CAMPAIGN_ID, actor=OPERATOR)
            all_answer("below_threshold", voucher_id, 100)

            switches.suspend_merchant(stack.rt, MERCHANT, reason="reach", actor=OPERATOR)
            all_answer("merchant_suspended", "v-none", 32000)
            switches.reinstate_merchant(stack.rt, MERCHANT, reason="reach over", actor=OPERATOR)
            all_answer("voucher_not_found", "v-none", 32000)

            spent = redeem(voucher_id, 32000)
            assert spent.status_code == 201, spent.text
        finally:
            server.terminate()
            server.wait(15)
