"""Signed calls over HTTP: who may call, and that nobody changed the request.

Every refusal is 401 (or 403 for the wrong kind of app) with the JSON error
body, and changes nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from lequan.adapters.clock import SystemClock
from lequan.adapters.nonces import MemoryNonceStore
from lequan.client import LequanAuth
from lequan.http.app import create_app
from lequan.signing import signature_headers
from tests.e2e.conftest import ACQUIRER, Api, OpenApi, assert_error, person_body


def _signed(
    api: Api,
    app_id: str,
    method: str,
    target: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    return signature_headers(
        app_id,
        api.world.secrets.get(app_id, "no-such-secret"),
        method,
        target,
        body,
        timestamp=int(time.time()) if timestamp is None else timestamp,
        nonce=nonce or uuid.uuid4().hex,
    )


def _clock(skew_s: int) -> Callable[[], float]:
    return lambda: time.time() + skew_s


def _claim_body(user: str = "u1") -> bytes:
    return json.dumps(
        {
            "channel_user_id": user,
            "campaign_id": "sh-dining-2024",
            "round_id": "r1",
            "template_id": "d300-90",
            "location_region": "310104",
        }
    ).encode()


def _post(api: Api, target: str, body: bytes, headers: dict[str, str]) -> Any:
    return api.client.post(
        target,
        content=body,
        headers={**headers, "Content-Type": "application/json", "Idempotency-Key": "k-sign-1"},
    )


def test_a_correctly_signed_request_passes(api: Api) -> None:
    api.register(1)
    body = _claim_body()
    response = _post(api, "/v1/claims", body, _signed(api, "wechat", "POST", "/v1/claims", body))
    assert response.status_code == 201, response.text


def test_unsigned_requests_are_refused(api: Api) -> None:
    api.register(1)
    before = api.snapshot()
    response = api.client.post(
        "/v1/claims",
        content=_claim_body(),
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1"},
    )
    body = assert_error(response, 401, "missing_signature")
    assert body["details"]["missing"] == [
        "X-Lequan-App",
        "X-Lequan-Timestamp",
        "X-Lequan-Nonce",
        "X-Lequan-Signature",
    ]
    assert_error(api.client.get("/v1/persons/u1/vouchers"), 401, "missing_signature")
    assert api.snapshot() == before


def test_timestamps_more_than_300_s_off_are_refused(api: Api) -> None:
    api.register(1)
    before = api.snapshot()
    body = _claim_body()
    for skew_s in (-301, 301, -3600, 86_400):
        headers = _signed(
            api, "wechat", "POST", "/v1/claims", body, timestamp=int(time.time()) + skew_s
        )
        refused = assert_error(_post(api, "/v1/claims", body, headers), 401, "stale_timestamp")
        assert refused["details"]["max_skew_s"] == 300
    assert api.snapshot() == before


def test_timestamps_within_the_window_pass(api: Api) -> None:
    for skew_s in (-290, 290):
        auth = LequanAuth("wechat", api.world.secrets["wechat"], clock=_clock(skew_s))
        response = api.client.get("/v1/persons/nobody/vouchers", auth=auth)
        # Signed well: the refusal is about the person, not the signature.
        assert_error(response, 404, "not_registered")


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def nonce_api(request: pytest.FixtureRequest, open_api: OpenApi) -> Api:
    """The app with its nonces in this process, or in Redis (checked off the event loop)."""
    if request.param == "memory":
        return open_api()
    return open_api(
        redis_url=request.getfixturevalue("redis_url"),
        redis_key_prefix=request.getfixturevalue("redis_prefix"),
    )


def test_a_reused_nonce_is_refused(nonce_api: Api) -> None:
    api = nonce_api
    api.register(1)
    auth = LequanAuth(
        "wechat", api.world.secrets["wechat"], nonce_factory=lambda: "fixed-nonce-0001"
    )
    first = api.client.get("/v1/persons/u1/vouchers", auth=auth)
    assert first.status_code == 200, first.text
    before = api.snapshot()
    # Even a different request, freshly timed and signed, cannot use the nonce again.
    second = api.client.post(
        "/v1/claims",
        content=_claim_body(),
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1"},
        auth=auth,
    )
    assert_error(second, 401, "nonce_reused")
    assert api.snapshot() == before
    # The same nonce is another app's to use.
    other = LequanAuth(
        "alipay", api.world.secrets["alipay"], nonce_factory=lambda: "fixed-nonce-0001"
    )
    assert_error(api.client.get("/v1/persons/u1/vouchers", auth=other), 404, "not_registered")


def test_an_exact_replay_is_refused(api: Api) -> None:
    api.register(1)
    body = _claim_body()
    headers = _signed(api, "wechat", "POST", "/v1/claims", body)
    assert _post(api, "/v1/claims", body, headers).status_code == 201
    before = api.snapshot()
    assert_error(_post(api, "/v1/claims", body, headers), 401, "nonce_reused")
    assert api.snapshot() == before


def test_a_tampered_body_is_refused(api: Api) -> None:
    api.register(1)
    api.register(2)
    before = api.snapshot()
    headers = _signed(api, "wechat", "POST", "/v1/claims", _claim_body("u1"))
    assert_error(_post(api, "/v1/claims", _claim_body("u2"), headers), 401, "invalid_signature")
    # Whitespace is part of the body too.
    body = _claim_body("u1")
    headers = _signed(api, "wechat", "POST", "/v1/claims", body)
    assert_error(_post(api, "/v1/claims", body + b" ", headers), 401, "invalid_signature")
    assert api.snapshot() == before


def test_a_tampered_path_or_query_is_refused(api: Api) -> None:
    api.register(1)
    api.register(2)
    headers = _signed(api, "wechat", "GET", "/v1/persons/u1/vouchers", b"")
    assert_error(
        api.client.get("/v1/persons/u2/vouchers", headers=headers), 401, "invalid_signature"
    )
    headers = _signed(api, "wechat", "GET", "/v1/persons/u1/vouchers?limit=1", b"")
    assert_error(
        api.client.get("/v1/persons/u1/vouchers?limit=2", headers=headers),
        401,
        "invalid_signature",
    )
    # Dropping the query, or reordering it, breaks the signature as well.
    headers = _signed(api, "wechat", "GET", "/v1/persons/u1/vouchers?limit=1&cursor=a", b"")
    assert_error(
        api.client.get("/v1/persons/u1/vouchers?cursor=a&limit=1", headers=headers),
        401,
        "invalid_signature",
    )
    headers = _signed(api, "wechat", "GET", "/v1/persons/u1/vouchers?limit=1", b"")
    assert_error(
        api.client.get("/v1/persons/u1/vouchers", headers=headers), 401, "invalid_signature"
    )
    # A signature for one method is not one for another.
    body = _claim_body()
    headers = _signed(api, "wechat", "PUT", "/v1/claims", body)
    assert_error(_post(api, "/v1/claims", body, headers), 401, "invalid_signature")
    # Nor for another endpoint with the same body.
    headers = _signed(api, "wechat", "POST", "/v1/claims", body)
    assert_error(_post(api, "/v1/persons", body, headers), 401, "invalid_signature")


def test_a_wrong_secret_is_refused(api: Api) -> None:
    auth = LequanAuth("wechat", api.world.secrets["alipay"])
    assert_error(api.client.get("/v1/persons/u1/vouchers", auth=auth), 401, "invalid_signature")


def test_an_unknown_app_is_refused(api: Api) -> None:
    auth = LequanAuth("no-such-app", "lqs_whatever")
    assert_error(api.client.get("/v1/persons/u1/vouchers", auth=auth), 401, "unknown_app")
    auth = LequanAuth("x" * 65, "lqs_whatever")
    assert_error(api.client.get("/v1/persons/u1/vouchers", auth=auth), 401, "unknown_app")


def test_malformed_signature_headers_are_refused(api: Api) -> None:
    good = _signed(api, "wechat", "GET", "/v1/persons/u1/vouchers", b"")
    cases = {
        "invalid_timestamp": {"X-Lequan-Timestamp": "+" + good["X-Lequan-Timestamp"]},
        "invalid_nonce": {"X-Lequan-Nonce": "short"},
        "invalid_signature": {"X-Lequan-Signature": good["X-Lequan-Signature"].upper()},
        "missing_signature": {"X-Lequan-Signature": ""},
    }
    for code, change in cases.items():
        response = api.client.get("/v1/persons/u1/vouchers", headers={**good, **change})
        assert_error(response, 401, code)


def test_channel_credentials_are_refused_on_the_acquirer_api(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    before = api.snapshot()
    order = api.order(user)
    assert_error(api.post("wechat", "/v1/redemptions/quote", order), 403, "wrong_app_kind")
    redeem = {**order, "voucher_id": voucher["voucher_id"], "order_id": "o1"}
    assert_error(api.post("wechat", "/v1/redemptions", redeem), 403, "wrong_app_kind")
    assert_error(api.get("wechat", "/v1/redemptions/r-none"), 403, "wrong_app_kind")
    assert api.snapshot() == before


def test_acquirer_credentials_are_refused_on_the_channel_api(api: Api) -> None:
    api.register(1)
    before = api.snapshot()
    assert_error(api.post(ACQUIRER, "/v1/persons", person_body(2)), 403, "wrong_app_kind")
    assert_error(api.post(ACQUIRER, "/v1/claims", json.loads(_claim_body())), 403, "wrong_app_kind")
    assert_error(api.get(ACQUIRER, "/v1/persons/u1/vouchers"), 403, "wrong_app_kind")
    assert api.snapshot() == before


def test_operator_tokens_do_not_sign_channel_calls(api: Api) -> None:
    response = api.client.get(
        "/v1/persons/u1/vouchers", headers={"Authorization": f"Bearer {api.world.tokens['alice']}"}
    )
    assert_error(response, 401, "missing_signature")


def test_a_nonce_store_that_cannot_be_reached_is_named_as_such(open_api: OpenApi) -> None:
    """Redis (the nonce store) down: signed calls are refused 503 with a code of its own
    and a Retry-After, not store_unavailable, which sends operators to the database."""
    api = open_api(redis_url="redis://127.0.0.1:1/0", redis_timeout_s=0.5)
    body = _claim_body()
    response = _post(api, "/v1/claims", body, _signed(api, "wechat", "POST", "/v1/claims", body))
    assert_error(response, 503, "nonce_store_unavailable")
    assert response.headers["Retry-After"] == "1"


def _running_for(api: Api, seconds: int) -> None:
    """The nonce store has been holding nonces for ``seconds`` already (the memory
    store's clock is the world's, an hour before the sale; Redis's epoch is set)."""
    settings = api.world.rt.settings
    if not settings.redis_url:
        return
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.set(f"{settings.redis_key_prefix}nonce-epoch", int(time.time()) - seconds)
    finally:
        client.close()


def _restarted(api: Api, stack: ExitStack) -> TestClient:
    """The nonce store starts again, having forgotten every nonce: a new process with
    its own memory, or a Redis restarted without its data."""
    rt = api.world.rt
    if rt.nonces.in_process:
        rt.nonces = MemoryNonceStore(rt.settings.nonce_cache_entries_max, clock=SystemClock())
        app = create_app(api.world.platform, close_on_shutdown=False)
        return stack.enter_context(TestClient(app, raise_server_exceptions=False))
    client = redis.Redis.from_url(rt.settings.redis_url)
    try:
        for key in client.scan_iter(match=rt.settings.redis_key_prefix + "*"):
            client.delete(key)
    finally:
        client.close()
    return api.client


def test_a_request_captured_before_a_restart_is_not_accepted_again(nonce_api: Api) -> None:
    """A captured request replayed after the nonce store started again, still within its
    signature window, is refused: it was signed before the store's epoch. A client
    that signs its retry anew is served."""
    api = nonce_api
    _running_for(api, 60)
    target = "/v1/persons/u1/vouchers"
    # Signed by a client whose clock is a few seconds behind: well within the window.
    captured = _signed(api, "wechat", "GET", target, b"", timestamp=int(time.time()) - 5)
    assert_error(api.client.get(target, headers=captured), 404, "not_registered")

    with ExitStack() as stack:
        client = _restarted(api, stack)
        refused = assert_error(client.get(target, headers=captured), 401, "stale_timestamp")
        assert refused["details"]["nonce_epoch_s"] > int(captured["X-Lequan-Timestamp"])
        fresh = _signed(api, "wechat", "GET", target, b"")
        assert_error(client.get(target, headers=fresh), 404, "not_registered")
