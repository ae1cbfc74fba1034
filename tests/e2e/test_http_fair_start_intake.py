"""The fair start's intake and its answers at once: a claim the channel says was pressed
inside the window (``pressed_at``) is entered in the draw when it reaches the platform
during the intake after the window, so the channels' queues, not the people, decide
nothing; with ``Prefer: respond-async`` a claim waiting for the draw is answered 202 at
once and its answer is had by sending it again with its key."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from tests.e2e.conftest import Api, OpenApi, assert_error
from tests.e2e.test_http_fair_start import TEMPLATE, problems_of, published_draw, wait_for
from tests.factories import T0, dining_config

WINDOW_S = 2
INTAKE_S = 10
ASYNC = {"Prefer": "respond-async"}


def intake_api(open_api: OpenApi, *, stock: int, intake_s: int = INTAKE_S) -> Api:
    config = dining_config(
        stock={"wechat": {TEMPLATE: stock}},
        start_window_s=WINDOW_S,
        start_window_intake_s=intake_s,
    )
    return open_api(config)


def items(users: list[str], pressed: datetime | None) -> list[dict[str, Any]]:
    return [
        {
            **Api.claim_body(user),
            "idempotency_key": f"k-{user}",
            **({} if pressed is None else {"pressed_at": pressed.isoformat()}),
        }
        for user in users
    ]


def send(api: Api, body_items: list[dict[str, Any]], *, respond_async: bool) -> httpx.Response:
    response = api.post(
        "wechat",
        "/v1/claims/batch",
        {"items": body_items},
        key=None,
        headers=ASYNC if respond_async else None,
    )
    assert response.status_code == 200, response.text
    return response


def outcomes(response: httpx.Response) -> list[str]:
    return [r["outcome"] for r in response.json()["results"]]


def test_claims_pressed_in_the_window_that_arrive_in_the_intake_are_entered(
    open_api: OpenApi,
) -> None:
    """The channel's queue delivers its window's claims 5 s late: they are still entered,
    answered at once, and served in the draw before anyone pressed after the window."""
    api = intake_api(open_api, stock=10)
    users = [api.register(n) for n in range(30)]
    in_window, after_it = users[:20], users[20:]
    api.clock.set(T0 + timedelta(seconds=5))  # the window closed 3 s ago; the intake is open
    late = send(api, items(after_it, T0 + timedelta(seconds=4)), respond_async=True)
    first = send(api, items(in_window, T0 + timedelta(seconds=1)), respond_async=True)

    assert first.headers["Preference-Applied"] == "respond-async"
    assert outcomes(first) == ["entered"] * 20
    for r in first.json()["results"]:
        assert r["status_code"] == 202
        assert len(r["draw_ticket"]) == 32
        assert r["voucher"] is None
        assert r["error"] is None
        assert r["retry_after_s"] >= 7  # the intake closes at T0+12
    assert outcomes(late) == ["queued"] * 10
    assert all("draw_ticket" not in r for r in late.json()["results"])
    # Sent again while it waits: in flight, nothing new.
    again = send(api, items(in_window[:1], T0 + timedelta(seconds=1)), respond_async=True)
    assert outcomes(again) == ["idempotency_in_flight"]

    api.clock.set(T0 + timedelta(seconds=WINDOW_S + INTAKE_S + 1))
    head, entries = published_draw(api)
    assert (head["entries"], head["won"]) == (20, 10)
    assert head["start_window_intake_s"] == INTAKE_S
    assert head["intake_closes_at"] == (T0 + timedelta(seconds=12)).isoformat()
    assert problems_of(head, entries) == []
    tickets = {r["draw_ticket"] for r in first.json()["results"]}
    assert {e["ticket"] for e in entries} == tickets  # exactly the window's claims

    # Their answers, had by sending the same items again: the winners replay their
    # vouchers; the stock went to the window's claims, none to those after it.
    def settled() -> bool:
        got = outcomes(send(api, items(users, None), respond_async=True))
        return "idempotency_in_flight" not in got and "queued" not in got

    wait_for(settled, "every claim answered")
    final = send(api, items(users, None), respond_async=True).json()["results"]
    won = {r["voucher"]["draw_ticket"] for r in final if r["outcome"] == "issued"}
    assert won == {e["ticket"] for e in entries if e["outcome"] == "won"}
    assert all(r["replayed"] for r in final if r["outcome"] == "issued")
    assert [r["outcome"] for r in final[20:]] == ["sold_out"] * 10
    assert api.check()["ok"]


def test_without_an_intake_a_claim_reaching_the_platform_after_the_window_is_after_it(
    open_api: OpenApi,
) -> None:
    api = intake_api(open_api, stock=5, intake_s=0)
    users = [api.register(n) for n in range(3)]
    api.clock.set(T0 + timedelta(seconds=WINDOW_S, milliseconds=1))
    late = send(api, items(users, T0 + timedelta(seconds=1)), respond_async=True)
    assert outcomes(late) == ["queued"] * 3


def test_a_pressed_at_later_than_the_platform_s_clock_counts_as_now(open_api: OpenApi) -> None:
    """A channel's clock ahead of ours buys nothing: in the window the claim is entered,
    after it the claim is not, whatever it says."""
    api = intake_api(open_api, stock=5)
    users = [api.register(n) for n in range(2)]
    api.clock.set(T0 + timedelta(seconds=1))
    early = send(api, items(users[:1], T0 + timedelta(hours=1)), respond_async=True)
    assert outcomes(early) == ["entered"]
    api.clock.set(T0 + timedelta(seconds=3))
    ahead = send(api, items(users[1:], T0 + timedelta(hours=1)), respond_async=True)
    assert outcomes(ahead) == ["queued"]


def test_a_single_claim_answered_at_once_says_when_to_come_back(open_api: OpenApi) -> None:
    api = intake_api(open_api, stock=5)
    user = api.register(1)
    api.clock.set(T0 + timedelta(seconds=1))
    response = api.post("wechat", "/v1/claims", Api.claim_body(user), key="single-1", headers=ASYNC)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "entered"
    assert len(body["draw_ticket"]) == 32
    assert response.headers["Preference-Applied"] == "respond-async"
    # The intake closes 11 s from now, and the draw begins draw_grace_ms after.
    assert int(response.headers["Retry-After"]) == body["retry_after_s"] == 12

    api.clock.set(T0 + timedelta(seconds=WINDOW_S + INTAKE_S + 1))
    published_draw(api)

    def answered() -> bool:
        again = api.post("wechat", "/v1/claims", Api.claim_body(user), key="single-1")
        return again.status_code == 201

    wait_for(answered, "the entered claim's voucher")
    replay = api.post("wechat", "/v1/claims", Api.claim_body(user), key="single-1")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["voucher"]["draw_ticket"] == body["draw_ticket"]


def test_a_pressed_at_without_an_offset_is_refused_and_nothing_changes(
    open_api: OpenApi,
) -> None:
    api = intake_api(open_api, stock=5)
    user = api.register(1)
    api.clock.set(T0 + timedelta(seconds=1))
    body = {**Api.claim_body(user), "pressed_at": "2024-11-30T10:00:01"}
    refused = api.post("wechat", "/v1/claims", body, key="naive-1")
    error = assert_error(refused, 422, "invalid_request")
    assert "pressed_at" in str(error)
    for bad in ("yesterday", 17, ""):
        got = api.post("wechat", "/v1/claims", {**body, "pressed_at": bad}, key="naive-2")
        assert_error(got, 422, "invalid_request")
    assert api.world.platform.claims.draws.waiting_claims == 0
    assert api.check()["ok"]
