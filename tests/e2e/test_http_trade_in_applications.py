"""Trade-in applications and the outbox over HTTP, as a channel and an operator see them.

Central is the in-process one over central's own services (the real central
process is in tests/central and tests/system).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from lequan.central.in_process import MemoryCentral
from tests.e2e.conftest import Api, OpenApi, assert_error, assert_refused
from tests.unit.test_trade_in_applications import trade_in_config

CAMPAIGN = "sh-trade-in-2024"
PATH = "/v1/trade-in/applications"


class _Clock:
    def __init__(self) -> None:
        self.api: Api | None = None

    def now(self) -> datetime:
        assert self.api is not None
        return self.api.clock.now()


@pytest.fixture
def central_and_api(open_api: OpenApi) -> tuple[MemoryCentral, Api]:
    clock = _Clock()
    central = MemoryCentral.start(clock=clock, province="310000", seed=b"e" * 32)
    api = open_api(campaign=False, central=central, province_code="310000")
    clock.api = api
    api.world.open_campaign(trade_in_config(), merchants=False)
    api.register(1, channel="unionpay")
    return central, api


def body(template: str = "refrigerator", user: str = "u1") -> dict[str, Any]:
    return {
        "channel_user_id": user,
        "campaign_id": CAMPAIGN,
        "round_id": "r1",
        "template_id": template,
        "location_region": "310104",
    }


def test_an_application_issues_a_voucher_and_a_retry_replays_it(
    central_and_api: tuple[MemoryCentral, Api],
) -> None:
    _, api = central_and_api
    first = api.post("unionpay", PATH, body(), key="apply-1")
    assert first.status_code == 201, first.text
    assert first.json()["status"] == "issued"
    voucher = first.json()["voucher"]
    assert (voucher["template_id"], voucher["state"]) == ("refrigerator", "issued")
    again = api.post("unionpay", PATH, body(), key="apply-1")
    assert again.status_code == 201
    assert again.json()["voucher"]["voucher_id"] == voucher["voucher_id"]
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_second_refrigerator_is_refused_and_nothing_changes(
    central_and_api: tuple[MemoryCentral, Api],
) -> None:
    _, api = central_and_api
    assert api.post("unionpay", PATH, body()).status_code == 201
    assert_refused(
        api, lambda: api.post("unionpay", PATH, body()), 409, "qualification_limit_reached"
    )


def test_central_down_is_a_503_with_nothing_issued_then_the_retry_succeeds(
    central_and_api: tuple[MemoryCentral, Api],
) -> None:
    central, api = central_and_api
    central.down()
    refused = assert_refused(
        api, lambda: api.post("unionpay", PATH, body(), key="k"), 503, "central_unavailable"
    )
    assert "same Idempotency-Key" in refused["message"]
    central.up()
    assert api.post("unionpay", PATH, body(), key="k").status_code == 201


def test_a_trade_in_template_is_not_claimed(central_and_api: tuple[MemoryCentral, Api]) -> None:
    _, api = central_and_api
    assert_refused(
        api,
        lambda: api.post("unionpay", "/v1/claims", body()),
        409,
        "trade_in_is_applied_for",
    )


def test_bad_applications_are_4xx(central_and_api: tuple[MemoryCentral, Api]) -> None:
    _, api = central_and_api
    assert_refused(
        api, lambda: api.post("unionpay", PATH, body(template="no-such")), 404, "template_not_found"
    )
    assert_refused(
        api, lambda: api.post("unionpay", PATH, body(user="nobody")), 404, "not_registered"
    )
    assert_refused(
        api, lambda: api.post("unionpay", PATH, {"campaign_id": CAMPAIGN}), 422, "invalid_request"
    )
    assert_refused(
        api, lambda: api.post("unionpay", PATH, body(), key=None), 422, "idempotency_key_required"
    )


def test_operators_see_the_outbox_and_replay_dead_events(
    central_and_api: tuple[MemoryCentral, Api],
) -> None:
    _, api = central_and_api
    assert api.post("unionpay", PATH, body()).status_code == 201
    backlog = api.admin("vera", "GET", "/v1/admin/outbox")
    assert backlog.status_code == 200
    assert backlog.json() == {"pending": 1, "dead": 0, "delivered": 0}
    assert api.admin("vera", "GET", "/v1/admin/outbox/dead").json() == {
        "items": [],
        "next_cursor": None,
    }
    assert_error(api.admin("vera", "POST", "/v1/admin/outbox/replay", json={}), 403, "forbidden")
    replayed = api.admin("alice", "POST", "/v1/admin/outbox/replay", json={})
    assert replayed.json() == {"replayed": 0}
    assert_error(
        api.admin("alice", "POST", "/v1/admin/outbox/replay", json={"event_ids": "e1"}),
        422,
        "invalid_request",
    )
    metrics = api.client.get("/metrics").text
    assert 'lequan_outbox_events{status="pending"} 1.0' in metrics
