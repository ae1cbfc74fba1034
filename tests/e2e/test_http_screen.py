"""The big screen's and the public page's API: who may see it, what it shows after a
crowd claimed and spent, and that no person is in it."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest

from lequan.http.screen_schemas import PublicOut, ScreenOut
from tests.e2e.conftest import CAMPAIGN, Api, assert_error


def sign_in(api: Api, operator: str) -> None:
    response = api.client.post("/v1/screen/session", json={"token": api.world.tokens[operator]})
    assert response.status_code == 204, response.text
    assert "lequan_session" in api.client.cookies


def snapshot(api: Api) -> dict[str, Any]:
    response = api.client.get("/v1/screen/snapshot")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    ScreenOut.model_validate(body)
    return body


def test_the_screen_needs_a_session(api: Api) -> None:
    assert_error(api.client.get("/v1/screen/snapshot"), 401, "unauthenticated")
    assert_error(api.client.get("/v1/screen/stream"), 401, "unauthenticated")
    assert_error(api.client.get("/v1/screen/whoami"), 401, "unauthenticated")
    page = api.client.get("/screen", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/screen/login"
    bad = api.client.post("/v1/screen/session", json={"token": "not-a-real-token"})
    assert_error(bad, 401, "unauthenticated")
    assert "lequan_session" not in api.client.cookies


def test_a_forged_or_foreign_cookie_is_refused(api: Api) -> None:
    sign_in(api, "vera")
    value = api.client.cookies["lequan_session"]
    payload, _, signature = value.rpartition(".")
    api.client.cookies.set("lequan_session", payload + "." + "0" * len(signature))
    assert_error(api.client.get("/v1/screen/whoami"), 401, "unauthenticated")
    api.client.cookies.set("lequan_session", "x" * 600)
    assert_error(api.client.get("/v1/screen/whoami"), 401, "unauthenticated")


def test_a_viewer_signs_in_and_sees_the_screen(api: Api) -> None:
    sign_in(api, "vera")
    assert api.client.get("/v1/screen/whoami").json() == {"operator_id": "vera", "role": "viewer"}
    cookie = api.client.cookies.jar
    assert any(c.name == "lequan_session" and c.has_nonstandard_attr("HttpOnly") for c in cookie)
    body = snapshot(api)
    assert [c["id"] for c in body["campaigns"]] == [CAMPAIGN]
    assert len(body["series"]["claims"]) == 900
    api.client.delete("/v1/screen/session")
    assert_error(api.client.get("/v1/screen/whoami"), 401, "unauthenticated")


def test_claims_and_redemptions_show_on_the_screen(api: Api) -> None:
    users = [api.register(n) for n in range(1, 6)]
    vouchers = [api.claim_voucher(user) for user in users]
    paid = api.redeem(vouchers[0]["voucher_id"], users[0], amount_fen=31000)
    assert paid.status_code == 201, paid.text
    sign_in(api, "vera")
    body = snapshot(api)
    assert sum(body["series"]["issued"]) == 5
    assert sum(body["series"]["redemptions"]) == 1
    assert body["outcomes"]["issued"] == 5
    campaign = body["campaigns"][0]
    assert campaign["first_redemption_at"] is not None
    assert campaign["first_redemption_after_s"] is not None
    issued = sum(pool["issued"] for pool in campaign["pools"])
    assert issued == 5
    (region,) = body["regions"]
    assert region["redemptions"] == 1
    assert region["subsidy_fen"] > 0
    assert region["name"]  # a district's name, from the reference data
    assert body["leverage"]["order_fen"] == 31000
    assert body["leverage"]["subsidy_fen"] == region["subsidy_fen"]
    (merchant,) = body["top_merchants"]
    assert merchant["redemptions"] == 1
    assert {c["key"] for c in body["channels"]} >= {"wechat"}


def test_a_refund_takes_the_subsidy_back_off_the_screen(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user, amount_fen=31000)
    api.clock.advance(timedelta(days=2))
    refunded = api.follow_up(paid.json()["redemption_id"], "refunds", {"refund_amount_fen": 31000})
    assert refunded.status_code == 201, refunded.text
    sign_in(api, "vera")
    body = snapshot(api)
    assert body["leverage"]["subsidy_fen"] == 0
    assert body["leverage"]["order_fen"] == 0


def test_no_person_is_on_the_screen_or_the_public_page(api: Api) -> None:
    users = [api.register(n) for n in range(1, 4)]
    vouchers = [api.claim_voucher(user) for user in users]
    api.redeem(vouchers[0]["voucher_id"], users[0], amount_fen=31000)
    sign_in(api, "vera")
    texts = [api.client.get("/v1/screen/snapshot").text, api.client.get("/v1/public/live").text]
    for text in texts:
        for user, voucher in zip(users, vouchers, strict=True):
            assert f'"{user}"' not in text
            assert voucher["voucher_id"] not in text
        assert "139000" not in text  # phone numbers
        assert "张三" not in text


def test_the_public_page_needs_no_login_and_is_cacheable(api: Api) -> None:
    api.claim_voucher(api.register(1))
    response = api.client.get("/v1/public/live")
    assert response.status_code == 200
    assert "public" in response.headers["cache-control"]
    body = PublicOut.model_validate(response.json())
    (campaign,) = body.campaigns
    assert campaign.id == CAMPAIGN
    assert sum(pool.issued for pool in campaign.pools) == 1
    assert "drafted_by" not in response.text
    assert "budget" not in response.text


def test_the_stream_sends_snapshots_as_server_sent_events(api: Api) -> None:
    api.claim_voucher(api.register(1))
    sign_in(api, "vera")
    with api.client.stream("GET", "/v1/screen/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 2:
                    break
    for event in events:
        ScreenOut.model_validate(event)
        assert sum(event["series"]["issued"]) == 1


@pytest.mark.parametrize("every_s", ["0", "61", "soon"])
def test_the_stream_validates_its_query(api: Api, every_s: str) -> None:
    sign_in(api, "vera")
    response = api.client.get("/v1/screen/stream", params={"every_s": every_s})
    assert response.status_code == 422


def test_streams_per_operator_are_bounded(api: Api) -> None:
    sign_in(api, "vera")
    limit = api.world.rt.settings.screen_streams_per_operator_max
    streams = [api.client.stream("GET", "/v1/screen/stream") for _ in range(limit)]
    opened = [s.__enter__() for s in streams]
    try:
        assert all(r.status_code == 200 for r in opened)
        assert_error(api.client.get("/v1/screen/stream"), 429, "too_many_streams")
    finally:
        for s in streams:
            s.__exit__(None, None, None)
    # A client that went away gives its slot back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with api.client.stream("GET", "/v1/screen/stream") as again:
            if again.status_code == 200:
                break
        time.sleep(0.2)
    assert again.status_code == 200


def test_a_change_with_the_cookie_needs_the_csrf_header(api: Api) -> None:
    sign_in(api, "bob")
    refused = api.client.post(f"/v1/admin/campaigns/{CAMPAIGN}/pause")
    assert_error(refused, 403, "csrf_header_required")
    assert snapshot(api)["campaigns"][0]["status"] == "live"
    paused = api.client.post(
        f"/v1/admin/campaigns/{CAMPAIGN}/pause", headers={"X-Lequan-CSRF": "1"}
    )
    assert paused.status_code == 200, paused.text
    body = snapshot(api)
    assert body["campaigns"][0]["claims_paused"] is True


def test_a_viewer_cannot_pull_the_switch_from_the_screen(api: Api) -> None:
    sign_in(api, "vera")
    refused = api.client.post(
        f"/v1/admin/campaigns/{CAMPAIGN}/pause", headers={"X-Lequan-CSRF": "1"}
    )
    assert_error(refused, 403, "forbidden")
    assert snapshot(api)["campaigns"][0]["claims_paused"] is False


def test_the_screen_shows_the_switches_an_operator_pulls_from_it(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user, amount_fen=31000)
    assert paid.status_code == 201, paid.text
    sign_in(api, "bob")
    (merchant,) = snapshot(api)["top_merchants"]
    assert merchant["suspended"] is False
    csrf = {"X-Lequan-CSRF": "1"}
    suspended = api.client.post(
        f"/v1/admin/merchants/{merchant['key']}/suspend",
        json={"reason": "redemptions far above its baseline"},
        headers=csrf,
    )
    assert suspended.status_code == 200, suspended.text
    paused = api.client.post(f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/pause", headers=csrf)
    assert paused.status_code == 200, paused.text
    body = snapshot(api)
    assert body["top_merchants"][0]["suspended"] is True
    (campaign,) = body["campaigns"]
    assert campaign["redemptions_paused"] is True
    assert campaign["claims_paused"] is False
