"""Bad input never gives a 500: random JSON, random bytes and near-valid
bodies, properly signed, to every POST endpoint; bodies over the limit;
control characters the store cannot hold; and concurrent duplicates.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lequan.http.app import create_app
from tests.e2e.conftest import (
    ACQUIRER,
    CAMPAIGN,
    Api,
    OpenApi,
    assert_error,
    campaign_yaml,
    merchants_csv,
    person_body,
)
from tests.factories import dining_config, id_number
from tests.integration.test_claim_invariants import writers_held
from tests.waiting import wait_until


@dataclass(frozen=True)
class Endpoint:
    """A POST endpoint, who calls it, and a body it would accept."""

    path: str
    caller: str  # an app id, or "operator"
    valid: Any
    takes_no_body: bool = False


@dataclass
class Fuzzed:
    api: Api
    endpoints: list[Endpoint]


def _endpoints(user: str, voucher_id: str, redemption_id: str) -> list[Endpoint]:
    order = Api.order(user)
    claim = Api.claim_body(user)
    done = f"/v1/redemptions/{redemption_id}"
    return [
        Endpoint("/v1/persons", "wechat", person_body(50)),
        Endpoint("/v1/claims", "wechat", claim),
        Endpoint("/v1/claims/batch", "wechat", {"items": [claim | {"idempotency_key": "k"}]}),
        Endpoint("/v1/redemptions/quote", ACQUIRER, order),
        Endpoint(
            "/v1/redemptions",
            ACQUIRER,
            order | {"voucher_id": voucher_id, "order_id": "o-1", "capture": "lock"},
        ),
        Endpoint(f"{done}/confirm", ACQUIRER, {}),
        Endpoint(f"{done}/void", ACQUIRER, {}),
        Endpoint(f"{done}/reverse", ACQUIRER, {}),
        Endpoint(f"{done}/refunds", ACQUIRER, {"refund_amount_fen": 30000, "reason": "r"}),
        Endpoint("/v1/admin/campaigns", "operator", {"id": "x"}),
        Endpoint("/v1/admin/merchants", "operator", {"merchant_id": "m"}),
        Endpoint("/v1/admin/apps", "operator", {"app_id": "ab", "kind": "channel", "name": "n"}),
        Endpoint("/v1/admin/blacklist", "operator", {"id_number": id_number(60)}),
        Endpoint("/v1/admin/blacklist/remove", "operator", {"id_number": id_number(60)}),
        Endpoint(f"/v1/admin/campaigns/{CAMPAIGN}/resume", "operator", None, takes_no_body=True),
        Endpoint(
            f"/v1/admin/campaigns/{CAMPAIGN}/rounds/r1/start", "operator", None, takes_no_body=True
        ),
    ]


@pytest.fixture
def fuzzed(api: Api) -> Fuzzed:
    """A person with a voucher and a redemption that is over (refunded): every follow-up
    on it is refused, so random bodies can only ever be refused."""
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user)
    redemption_id = paid.json()["redemption_id"]
    refunded = api.follow_up(redemption_id, "refunds", {"refund_amount_fen": 30000})
    assert refunded.status_code == 201, refunded.text
    return Fuzzed(api, _endpoints(user, voucher["voucher_id"], redemption_id))


def _send(api: Api, endpoint: Endpoint, body: bytes) -> httpx.Response:
    if endpoint.caller == "operator":
        response: httpx.Response = api.client.post(
            endpoint.path,
            content=body,
            headers={
                "Authorization": f"Bearer {api.world.tokens['alice']}",
                "Content-Type": "application/json",
            },
        )
        return response
    return api.post(endpoint.caller, endpoint.path, content=body)


def _assert_refused_cleanly(response: httpx.Response, *, may_succeed: bool) -> None:
    assert response.status_code < 500, response.text
    if may_succeed and response.status_code < 400:
        return
    assert 400 <= response.status_code < 500, response.text
    body = response.json()
    assert isinstance(body.get("code"), str), body
    assert body["code"]
    assert isinstance(body.get("message"), str), body


FIELD_NAMES = sorted(
    {
        "channel_user_id",
        "id_number",
        "name",
        "phone",
        "region_code",
        "location_region",
        "consent",
        "campaign_id",
        "round_id",
        "template_id",
        "items",
        "idempotency_key",
        "merchant_id",
        "order_amount_fen",
        "mode",
        "voucher_id",
        "order_id",
        "capture",
        "refund_amount_fen",
        "reason",
        "app_id",
        "kind",
        "product",
    }
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=80)
    | st.sampled_from(["", "0", "-1", "u1", CAMPAIGN, "r1", "d300-90", "310104", "lock"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data(), value=json_values)
def test_random_json_is_refused_with_a_json_error(
    fuzzed: Fuzzed, data: st.DataObject, value: Any
) -> None:
    endpoint = data.draw(st.sampled_from(fuzzed.endpoints))
    response = _send(fuzzed.api, endpoint, json.dumps(value).encode())
    _assert_refused_cleanly(response, may_succeed=endpoint.takes_no_body)


@settings(FUZZ, max_examples=40)
@given(data=st.data(), raw=st.binary(max_size=200))
def test_random_bytes_are_refused_with_a_json_error(
    fuzzed: Fuzzed, data: st.DataObject, raw: bytes
) -> None:
    endpoint = data.draw(st.sampled_from(fuzzed.endpoints))
    _assert_refused_cleanly(_send(fuzzed.api, endpoint, raw), may_succeed=endpoint.takes_no_body)


@st.composite
def _near_valid(draw: st.DrawFn, endpoints: list[Endpoint]) -> tuple[Endpoint, Any]:
    """A body the endpoint would take, with one field dropped, changed or added."""
    endpoint = draw(st.sampled_from([e for e in endpoints if e.valid]))
    body = dict(endpoint.valid)
    field = draw(st.sampled_from(sorted(body)))
    how = draw(st.sampled_from(["drop", "change", "add"]))
    if how == "drop":
        del body[field]
    elif how == "change":
        body[field] = draw(json_values)
    else:
        body[draw(st.text(max_size=12))] = draw(json_values)
    return endpoint, body


@settings(FUZZ, max_examples=80)
@given(data=st.data())
def test_near_valid_bodies_never_fail_the_server(fuzzed: Fuzzed, data: st.DataObject) -> None:
    endpoint, body = data.draw(_near_valid(fuzzed.endpoints))
    response = _send(fuzzed.api, endpoint, json.dumps(body).encode())
    _assert_refused_cleanly(response, may_succeed=True)


# -- limits ------------------------------------------------------------------------


def _chunks(total_bytes: int) -> Iterator[bytes]:
    yield b'{"pad": "'
    for _ in range(total_bytes // 100_000):
        yield b"x" * 100_000
    yield b'"}'


@pytest.mark.parametrize("path", ["/v1/persons", "/v1/claims", "/v1/redemptions"])
def test_a_chunked_body_over_the_limit_is_413(api: Api, path: str) -> None:
    response = api.client.post(
        path,
        content=_chunks(3_000_000),
        headers={"Content-Type": "application/json", "Idempotency-Key": "k"},
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert_error(response, 413, "body_too_large")


def test_a_merchant_file_with_an_oversized_field_is_refused(api: Api) -> None:
    header = merchants_csv().splitlines()[0]
    text = f"{header}\nm-big,{'x' * 140_000},5812,310104,in_store,acq-unionpay,{CAMPAIGN}\n"
    response = api.admin(
        "alice", "POST", "/v1/admin/merchants", content=text, content_type="text/csv"
    )
    assert_error(response, 422, "invalid_merchant_file")


def test_nul_characters_are_refused_on_postgres(
    migrated_postgres_url: str, open_api: OpenApi
) -> None:
    api = open_api(database_url=migrated_postgres_url)
    user = api.register(1)
    voucher = api.claim_voucher(user)
    header = merchants_csv().splitlines()[0]
    calls: dict[str, Callable[[], httpx.Response]] = {
        "wallet path": lambda: api.get("wechat", "/v1/persons/a%00b/vouchers"),
        "confirm path": lambda: api.follow_up("r%00x", "confirm"),
        "redeem order_id": lambda: api.redeem(voucher["voucher_id"], user, order_id="o\x00"),
        "redeem voucher_id": lambda: api.redeem("v\x00", user),
        "app name": lambda: api.admin(
            "alice",
            "POST",
            "/v1/admin/apps",
            json={"app_id": "nul", "kind": "channel", "name": "\x00"},
        ),
        "merchant name": lambda: api.admin(
            "alice",
            "POST",
            "/v1/admin/merchants",
            content=f"{header}\nm-1,a\x00b,5812,310104,in_store,acq-unionpay,\n",
            content_type="text/csv",
        ),
    }
    calls["campaign name"] = lambda: api.admin(
        "alice",
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(dining_config(id="nul-2024", name="a-b")).replace(
            "name: a-b",
            'name: "a\\0b"',  # YAML's escape for NUL
        ),
        content_type="application/yaml",
    )
    failed = {}
    for what, call in calls.items():
        response = call()
        if response.status_code >= 500:
            failed[what] = response.json()["code"]
    assert failed == {}


# -- concurrent duplicates -----------------------------------------------------------


def test_concurrent_retries_with_one_key_take_effect_once(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    start = threading.Barrier(4)

    def pay() -> httpx.Response:
        start.wait()
        return api.redeem(voucher["voucher_id"], user, order_id="o-race", key="race-1")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: pay(), range(4)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(201) >= 1, [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert_error(answer, 409, "idempotency_in_flight")
        else:
            assert answer.status_code == 201, answer.text
    first = next(a for a in answers if a.status_code == 201)
    assert all(a.json() == first.json() for a in answers if a.status_code == 201)
    snapshot = api.snapshot()
    assert snapshot["redemptions"] == 1
    assert api.voucher_state(voucher["voucher_id"]) == "redeemed"


def test_concurrent_claims_never_oversell(open_api: OpenApi) -> None:
    api = open_api(dining_config(stock={"wechat": {"d300-90": 3}}))
    users = [api.register(n) for n in range(1, 9)]
    start = threading.Barrier(len(users))

    def claim(user: str) -> httpx.Response:
        start.wait()
        return api.claim(user)

    with ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(claim, users))
    outcomes = sorted(a.json().get("code", "issued") for a in answers)
    assert outcomes == ["issued"] * 3 + ["sold_out"] * 5
    check = api.check()
    assert (check["issued"], check["ok"]) == (3, True)


def test_concurrent_redemptions_of_one_voucher_spend_it_once(
    database_url: str, open_api: OpenApi
) -> None:
    api = open_api(database_url=database_url if database_url.startswith("postgres") else None)
    user = api.register(1)
    voucher = api.claim_voucher(user)
    start = threading.Barrier(4)

    def pay(n: int) -> httpx.Response:
        start.wait()
        capture = "lock" if n % 2 else "one_step"
        return api.redeem(voucher["voucher_id"], user, order_id=f"o-{n}", capture=capture)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(pay, range(4)))
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409], [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["code"] in ("already_redeemed", "voucher_locked", "voucher_busy")
    assert api.snapshot()["redemptions"] == 1
    assert api.check()["ok"]


def test_a_single_claim_beyond_the_in_flight_bound_is_429_and_changes_nothing(
    open_api: OpenApi,
) -> None:
    api = open_api(claim_inflight_max=1, claim_inflight_wait_ms=0)
    first_user, second_user = api.register(1), api.register(2)
    admission = api.client.app.state.claim_admission  # type: ignore[attr-defined]
    with (
        writers_held(api.world.rt.settings.effective_database_url, for_s=2.0),
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(api.claim, first_user)  # held in the writer meanwhile
        wait_until(lambda: admission.in_flight >= 1, what="the first claim admitted")
        assert admission.in_flight == 1
        refused = api.claim(second_user, key="k-second")
        assert first.result(30).status_code == 201
    assert_error(refused, 429, "overloaded")
    assert refused.headers["retry-after"] == "1"
    assert api.wallet(second_user).json()["items"] == []
    # Nothing of the refusal was kept: the same key, asked again, gets the voucher.
    again = api.claim(second_user, key="k-second")
    assert again.status_code == 201, again.text


def test_a_claim_finding_no_room_waits_for_it_and_is_answered(open_api: OpenApi) -> None:
    """Within ``claim_inflight_wait_ms`` a claim past the bound waits for a place rather
    than being told to send itself again: both people get their voucher."""
    api = open_api(claim_inflight_max=1, claim_inflight_wait_ms=10_000)
    first_user, second_user = api.register(1), api.register(2)
    admission = api.client.app.state.claim_admission  # type: ignore[attr-defined]
    with (
        writers_held(api.world.rt.settings.effective_database_url, for_s=2.0),
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(api.claim, first_user)
        wait_until(lambda: admission.in_flight >= 1, what="the first claim admitted")
        second = pool.submit(api.claim, second_user, key="k-second")
        wait_until(lambda: admission.waiting >= 1, what="the second claim waits for room")
        answers = [first.result(30), second.result(30)]
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    assert admission.in_flight == 0
    assert api.check()["ok"]


def test_claims_beyond_the_in_flight_bound_are_429_and_change_nothing(open_api: OpenApi) -> None:
    api = open_api(claim_inflight_max=2, claim_inflight_wait_ms=0)
    users = [api.register(n) for n in (1, 2, 3)]
    items = [
        {
            "idempotency_key": f"k-{user}",
            "channel_user_id": user,
            "campaign_id": CAMPAIGN,
            "round_id": "r1",
            "template_id": "d300-90",
            "location_region": "310104",
        }
        for user in users
    ]

    refused = api.post("wechat", "/v1/claims/batch", {"items": items}, key=None)

    assert_error(refused, 429, "overloaded")
    assert refused.headers["retry-after"] == "1"
    assert all(api.wallet(user).json()["items"] == [] for user in users)
    # Within the bound, the same keys go through: nothing of the refusal was kept.
    accepted = api.post("wechat", "/v1/claims/batch", {"items": items[:2]}, key=None)
    assert accepted.status_code == 200, accepted.text
    assert [r["outcome"] for r in accepted.json()["results"]] == ["issued", "issued"]


def test_the_claim_paths_answer_behind_a_root_path(open_api: OpenApi) -> None:
    """Mounted under a prefix (a proxy's ``--root-path``), the lean claim routes still
    answer their paths: never the framework's placeholder route behind them."""
    api = open_api()
    user = api.register(1)
    other = api.register(2)
    claim = Api.claim_body(user)
    batch = {"items": [{**claim, "channel_user_id": other, "idempotency_key": "root-b"}]}
    app = create_app(api.world.platform, close_on_shutdown=False)
    with TestClient(app, root_path="/api", raise_server_exceptions=False) as client:
        single = client.post(
            "/api/v1/claims",
            json=claim,
            auth=api.auth("wechat"),
            headers={"Idempotency-Key": "root-s"},
        )
        batched = client.post("/api/v1/claims/batch", json=batch, auth=api.auth("wechat"))
    assert single.status_code == 201, single.text
    assert batched.status_code == 200, batched.text
    assert batched.json()["outcomes"] == {"issued": 1}


def test_batch_claims_waiting_for_room_leave_the_rest_of_the_api_answering(
    open_api: OpenApi,
) -> None:
    """Batch claims wait for room in the commit queue on threads of their own: while
    more of them wait than the framework has threads (40), a wallet is still read,
    and once room is made every waiting claim is issued."""
    api = open_api(claim_queue_max=1, claim_queue_wait_ms=10_000)
    users = [api.register(n) for n in range(1, 47)]
    committer = api.world.platform.claims.committer
    committer.make_room(1, wait_s=0)  # the queue is full until given back

    def claim(user: str) -> httpx.Response:
        item = {**Api.claim_body(user), "idempotency_key": f"room-{user}"}
        return api.post("wechat", "/v1/claims/batch", {"items": [item]}, key=None)

    waiters = users[1:]
    admission = api.client.app.state.claim_admission  # type: ignore[attr-defined]
    with ThreadPoolExecutor(len(waiters)) as pool:
        answers = [pool.submit(claim, user) for user in waiters]
        wait_until(lambda: admission.in_flight >= len(waiters), what="every waiting batch admitted")
        assert admission.in_flight == len(waiters)  # every batch is in, none answered
        wallet = api.wallet(users[0])
        # Answered while every claim still waited: it did not queue behind them.
        assert not any(a.done() for a in answers)
        committer.give_back(1)
        results = [a.result(60) for a in answers]
    assert wallet.status_code == 200, wallet.text
    for result in results:
        assert result.status_code == 200, result.text
        assert [r["outcome"] for r in result.json()["results"]] == ["issued"]
    assert committer.waiting == 0
