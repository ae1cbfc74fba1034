"""The request-signing rule, pinned by the test vectors that docs/api.md shows.

The worked example (also in the docs):

    app "wechat", secret "test-secret-do-not-use",
    POST /v1/claims, timestamp 1732932000, nonce "3f9c2a7b1d4e8f60",
    body b'{"round_id":"r1"}'

Each intermediate is asserted literally, so a change to any part of the rule
(digest, line order, separators, case, key encoding) fails here first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lequan.client import LequanAuth
from lequan.domain.errors import AuthError
from lequan.signing import (
    SignedHeaders,
    VerifiedRequest,
    body_digest,
    canonical_string,
    parse_headers,
    sign,
    signature_headers,
    verify,
)

APP_ID = "wechat"
SECRET = "test-secret-do-not-use"
METHOD = "POST"
PATH = "/v1/claims"
TIMESTAMP = 1732932000
NONCE = "3f9c2a7b1d4e8f60"
BODY = b'{"round_id":"r1"}'

BODY_SHA256 = "19ccd2943b2266946d39c7673a9798be7b9387aae82ce50e389ad2a147e37e0e"
CANONICAL = (
    "POST\n"
    "/v1/claims\n"
    "1732932000\n"
    "3f9c2a7b1d4e8f60\n"
    "19ccd2943b2266946d39c7673a9798be7b9387aae82ce50e389ad2a147e37e0e"
)
SIGNATURE = "9cbeecc6e70f74fbfe828944535b058c4ad118046b0b02f0c5b2796592ffc127"

# A second vector: a GET with a query string and no body.
GET_PATH = "/v1/vouchers?person=p1&status=active"
GET_NONCE = "3f9c2a7b1d4e8f61"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
GET_SIGNATURE = "18ffd58158279e87530a21fbd18a5456645be0d87bb9e8e2b2e016c95c466eea"

MAX_SKEW_S = 300

EXAMPLE_HEADERS = {
    "X-Lequan-App": APP_ID,
    "X-Lequan-Timestamp": str(TIMESTAMP),
    "X-Lequan-Nonce": NONCE,
    "X-Lequan-Signature": SIGNATURE,
}


def _verify(
    headers: Mapping[str, str] = EXAMPLE_HEADERS,
    *,
    method: str = METHOD,
    path_with_query: str = PATH,
    body: bytes = BODY,
    secret: str = SECRET,
    now_s: int = TIMESTAMP,
) -> VerifiedRequest:
    return verify(
        secret=secret,
        method=method,
        path_with_query=path_with_query,
        headers=headers,
        body=body,
        now_s=now_s,
        max_skew_s=MAX_SKEW_S,
    )


def _refused(code: str, **kwargs: object) -> None:
    with pytest.raises(AuthError) as caught:
        _verify(**kwargs)  # type: ignore[arg-type]
    assert caught.value.code == code, caught.value


# -- the test vectors ---------------------------------------------------------


def test_body_digest_of_the_worked_example() -> None:
    assert body_digest(BODY) == BODY_SHA256


def test_body_digest_of_an_empty_body_is_the_sha256_of_no_bytes() -> None:
    assert body_digest(b"") == EMPTY_SHA256


def test_canonical_string_of_the_worked_example() -> None:
    assert canonical_string(METHOD, PATH, TIMESTAMP, NONCE, BODY) == CANONICAL


def test_signature_of_the_worked_example() -> None:
    assert sign(SECRET, METHOD, PATH, TIMESTAMP, NONCE, BODY) == SIGNATURE


def test_signature_headers_of_the_worked_example() -> None:
    headers = signature_headers(
        APP_ID, SECRET, METHOD, PATH, BODY, timestamp=TIMESTAMP, nonce=NONCE
    )
    assert headers == EXAMPLE_HEADERS


def test_get_with_query_and_empty_body_vector() -> None:
    assert canonical_string("GET", GET_PATH, TIMESTAMP, GET_NONCE, b"") == (
        f"GET\n{GET_PATH}\n1732932000\n3f9c2a7b1d4e8f61\n{EMPTY_SHA256}"
    )
    assert sign(SECRET, "GET", GET_PATH, TIMESTAMP, GET_NONCE, b"") == GET_SIGNATURE


def test_the_method_is_signed_in_upper_case() -> None:
    assert canonical_string("post", PATH, TIMESTAMP, NONCE, BODY) == CANONICAL
    assert _verify(method="post") == VerifiedRequest(APP_ID, TIMESTAMP, NONCE)


def test_the_secret_is_keyed_as_utf8() -> None:
    secret = "密钥-test"
    signature = sign(secret, METHOD, PATH, TIMESTAMP, NONCE, BODY)
    headers = {**EXAMPLE_HEADERS, "X-Lequan-Signature": signature}
    assert _verify(headers, secret=secret).app_id == APP_ID
    _refused("invalid_signature", headers=headers, secret="密钥-TEST")


# -- verification -------------------------------------------------------------


def test_verify_accepts_the_worked_example() -> None:
    assert _verify() == VerifiedRequest(app_id=APP_ID, timestamp=TIMESTAMP, nonce=NONCE)


def test_parse_headers_reads_the_worked_example() -> None:
    assert parse_headers(EXAMPLE_HEADERS) == SignedHeaders(APP_ID, TIMESTAMP, NONCE, SIGNATURE)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"method": "PUT"}, id="method"),
        pytest.param({"path_with_query": "/v1/claim"}, id="path"),
        pytest.param({"path_with_query": "/v1/claims/"}, id="path-trailing-slash"),
        pytest.param({"path_with_query": "/V1/claims"}, id="path-case"),
        pytest.param({"path_with_query": "/v1/claims?"}, id="empty-query-added"),
        pytest.param({"path_with_query": "/v1/claims?round_id=r2"}, id="query-added"),
        pytest.param({"path_with_query": "/v1/%63laims"}, id="path-percent-encoded"),
        pytest.param({"body": b'{"round_id":"r2"}'}, id="body"),
        pytest.param({"body": BODY + b"\n"}, id="body-trailing-newline"),
        pytest.param({"body": b""}, id="body-removed"),
        pytest.param({"secret": "another-secret"}, id="secret"),
        pytest.param(
            {"headers": {**EXAMPLE_HEADERS, "X-Lequan-Timestamp": str(TIMESTAMP + 1)}},
            id="timestamp",
        ),
        pytest.param(
            {"headers": {**EXAMPLE_HEADERS, "X-Lequan-Nonce": "3f9c2a7b1d4e8f61"}}, id="nonce"
        ),
        pytest.param(
            {"headers": {**EXAMPLE_HEADERS, "X-Lequan-Signature": "0" + SIGNATURE[1:]}},
            id="signature",
        ),
    ],
)
def test_any_tampering_is_refused(changes: dict[str, object]) -> None:
    _refused("invalid_signature", **changes)


def test_a_query_changed_on_a_signed_query_is_refused() -> None:
    headers = {**EXAMPLE_HEADERS, "X-Lequan-Nonce": GET_NONCE, "X-Lequan-Signature": GET_SIGNATURE}
    assert _verify(headers, method="GET", path_with_query=GET_PATH, body=b"").nonce == GET_NONCE
    for path in (
        "/v1/vouchers?person=p2&status=active",
        "/v1/vouchers?status=active&person=p1",  # the order of parameters is signed too
        "/v1/vouchers?person=p1",
        "/v1/vouchers",
    ):
        _refused("invalid_signature", headers=headers, method="GET", path_with_query=path, body=b"")


@pytest.mark.parametrize("skew_s", [-MAX_SKEW_S, -1, 0, 1, MAX_SKEW_S])
def test_timestamps_within_the_skew_are_accepted(skew_s: int) -> None:
    assert _verify(now_s=TIMESTAMP + skew_s).timestamp == TIMESTAMP


@pytest.mark.parametrize("skew_s", [-MAX_SKEW_S - 1, MAX_SKEW_S + 1, -86_400, 86_400])
def test_timestamps_beyond_the_skew_are_stale(skew_s: int) -> None:
    _refused("stale_timestamp", now_s=TIMESTAMP + skew_s)


def test_stale_is_decided_before_the_signature() -> None:
    # A stale request tells the integrator to fix the clock, not the signing.
    headers = {**EXAMPLE_HEADERS, "X-Lequan-Signature": "0" * 64}
    _refused("stale_timestamp", headers=headers, now_s=TIMESTAMP + MAX_SKEW_S + 1)


@pytest.mark.parametrize("absent", list(EXAMPLE_HEADERS))
def test_each_absent_header_is_missing_signature(absent: str) -> None:
    headers = {name: value for name, value in EXAMPLE_HEADERS.items() if name != absent}
    with pytest.raises(AuthError) as caught:
        _verify(headers)
    assert caught.value.code == "missing_signature"
    assert caught.value.details["missing"] == [absent]


@pytest.mark.parametrize("empty", list(EXAMPLE_HEADERS))
def test_an_empty_header_counts_as_absent(empty: str) -> None:
    _refused("missing_signature", headers={**EXAMPLE_HEADERS, empty: ""})


def test_an_unsigned_request_is_missing_signature() -> None:
    _refused("missing_signature", headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({name.lower(): value for name, value in EXAMPLE_HEADERS.items()}, id="lower"),
        pytest.param({name.upper(): value for name, value in EXAMPLE_HEADERS.items()}, id="upper"),
        pytest.param(httpx.Headers(EXAMPLE_HEADERS), id="httpx-headers"),
    ],
)
def test_header_names_are_matched_without_case(headers: Mapping[str, str]) -> None:
    assert _verify(headers).app_id == APP_ID


def test_a_header_given_twice_is_refused() -> None:
    headers = {**EXAMPLE_HEADERS, "x-lequan-nonce": "aaaaaaaaaaaaaaaa"}
    _refused("invalid_signature", headers=headers)


@pytest.mark.parametrize(
    "timestamp",
    [
        "abc",
        "-1732932000",
        "+1732932000",
        "1732932000.0",
        "1.7e9",
        " 1732932000",
        "1732932000 ",
        "01732932000",
        "1_732_932_000",
        "0x674a8ea0",
        "١٧٣٢٩٣٢٠٠٠",  # Arabic-Indic digits, which int() would accept
        "1" * 13,
    ],
)
def test_a_malformed_timestamp_is_invalid(timestamp: str) -> None:
    _refused("invalid_timestamp", headers={**EXAMPLE_HEADERS, "X-Lequan-Timestamp": timestamp})


@pytest.mark.parametrize(
    "nonce",
    [
        "a" * 7,
        "a" * 65,
        "3f9c2a7b 1d4e8f60",
        "3f9c2a7b+1d4e8f60",
        "3f9c2a7b/1d4e8f60",
        "3f9c2a7b=",
        "3f9c2a7b:1d4e8f60",
        "3f9c2a7b1d4e8f60\n",
        "3f9c2a7b1d4e8f6é",
    ],
)
def test_a_malformed_nonce_is_invalid(nonce: str) -> None:
    _refused("invalid_nonce", headers={**EXAMPLE_HEADERS, "X-Lequan-Nonce": nonce})


@pytest.mark.parametrize("nonce", ["a" * 8, "Z" * 64, "abc_DEF-123"])
def test_nonces_at_the_limits_are_accepted(nonce: str) -> None:
    signature = sign(SECRET, METHOD, PATH, TIMESTAMP, nonce, BODY)
    headers = {**EXAMPLE_HEADERS, "X-Lequan-Nonce": nonce, "X-Lequan-Signature": signature}
    assert _verify(headers).nonce == nonce


@pytest.mark.parametrize(
    "signature",
    [SIGNATURE.upper(), SIGNATURE[:-1], SIGNATURE + "0", "g" * 64, "é" * 64],
)
def test_a_malformed_signature_is_invalid(signature: str) -> None:
    _refused("invalid_signature", headers={**EXAMPLE_HEADERS, "X-Lequan-Signature": signature})


def test_an_over_long_app_id_is_unknown() -> None:
    _refused("unknown_app", headers={**EXAMPLE_HEADERS, "X-Lequan-App": "a" * 65})


def test_a_newline_in_the_target_is_refused() -> None:
    signature = sign(SECRET, METHOD, "/v1/claims\n", TIMESTAMP, NONCE, BODY)
    headers = {**EXAMPLE_HEADERS, "X-Lequan-Signature": signature}
    _refused("invalid_signature", headers=headers, path_with_query="/v1/claims\n")


# -- properties -----------------------------------------------------------------

_paths = st.text(
    st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=200
).map(lambda rest: "/" + rest)
_nonces = st.from_regex(r"\A[A-Za-z0-9_-]{8,64}\Z")
_timestamps = st.integers(min_value=0, max_value=10**12 - 1)
_methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])


@given(
    method=_methods,
    path=_paths,
    body=st.binary(max_size=2048),
    timestamp=_timestamps,
    nonce=_nonces,
    secret=st.text(min_size=1, max_size=64),
)
def test_sign_then_verify_round_trips(
    method: str, path: str, body: bytes, timestamp: int, nonce: str, secret: str
) -> None:
    headers = signature_headers(
        APP_ID, secret, method, path, body, timestamp=timestamp, nonce=nonce
    )
    verified = verify(
        secret=secret,
        method=method,
        path_with_query=path,
        headers=headers,
        body=body,
        now_s=timestamp,
        max_skew_s=MAX_SKEW_S,
    )
    assert verified == VerifiedRequest(APP_ID, timestamp, nonce)


@given(body=st.binary(max_size=256), other=st.binary(max_size=256), path=_paths)
def test_another_body_or_path_never_verifies(body: bytes, other: bytes, path: str) -> None:
    headers = signature_headers(
        APP_ID, SECRET, METHOD, PATH, body, timestamp=TIMESTAMP, nonce=NONCE
    )
    if other != body:
        _refused("invalid_signature", headers=headers, body=other)
    if path != PATH:
        _refused("invalid_signature", headers=headers, body=body, path_with_query=path)


# -- the httpx client -------------------------------------------------------------


def _verifying_transport(now_s: int = TIMESTAMP) -> httpx.MockTransport:
    """A server stand-in that checks each request as the API would, from the raw target."""

    def handle(request: httpx.Request) -> httpx.Response:
        try:
            verified = verify(
                secret=SECRET,
                method=request.method,
                path_with_query=request.url.raw_path.decode("ascii"),
                headers=request.headers,
                body=request.content,
                now_s=now_s,
                max_skew_s=MAX_SKEW_S,
            )
        except AuthError as error:
            return httpx.Response(401, json={"code": error.code})
        return httpx.Response(
            200,
            json={
                "app_id": verified.app_id,
                "timestamp": verified.timestamp,
                "nonce": verified.nonce,
                "target": request.url.raw_path.decode("ascii"),
            },
        )

    return httpx.MockTransport(handle)


def _fixed_auth(nonce: str = NONCE) -> LequanAuth:
    return LequanAuth(APP_ID, SECRET, clock=lambda: TIMESTAMP + 0.9, nonce_factory=lambda: nonce)


def test_lequan_auth_signs_the_worked_example_exactly() -> None:
    request = httpx.Request("POST", "https://lequan.test/v1/claims", content=BODY)
    flow = _fixed_auth().sync_auth_flow(request)
    signed = next(flow)
    assert {name: signed.headers[name] for name in EXAMPLE_HEADERS} == EXAMPLE_HEADERS


def test_lequan_auth_signs_the_query_as_sent() -> None:
    request = httpx.Request(
        "GET", "https://lequan.test/v1/vouchers", params={"person": "p1", "status": "active"}
    )
    signed = next(_fixed_auth(GET_NONCE).sync_auth_flow(request))
    assert signed.headers["X-Lequan-Signature"] == GET_SIGNATURE


def test_requests_signed_by_lequan_auth_verify() -> None:
    with httpx.Client(
        base_url="https://lequan.test",
        auth=LequanAuth(APP_ID, SECRET, clock=lambda: float(TIMESTAMP)),
        transport=_verifying_transport(),
    ) as client:
        posted = client.post("/v1/claims", json={"round_id": "r1", "名": "乐券"})
        got = client.get("/v1/vouchers", params={"q": "a b&c=d/é", "status": "active"})
        deleted = client.delete("/v1/locks/abc")
    for response in (posted, got, deleted):
        assert response.status_code == 200, response.json()
        assert response.json()["app_id"] == APP_ID
    assert got.json()["target"] == "/v1/vouchers?q=a+b%26c%3Dd%2F%C3%A9&status=active"
    assert posted.json()["nonce"] != got.json()["nonce"], "each request gets a fresh nonce"


def test_requests_signed_by_lequan_auth_verify_with_an_async_client() -> None:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(
            base_url="https://lequan.test",
            auth=LequanAuth(APP_ID, SECRET, clock=lambda: float(TIMESTAMP)),
            transport=_verifying_transport(),
        ) as client:
            return await client.post("/v1/claims", content=BODY)

    response = asyncio.run(call())
    assert response.status_code == 200
    assert json.loads(response.content)["timestamp"] == TIMESTAMP


def test_a_client_with_a_wrong_secret_or_clock_is_refused() -> None:
    with httpx.Client(
        base_url="https://lequan.test",
        auth=LequanAuth(APP_ID, "wrong-secret", clock=lambda: float(TIMESTAMP)),
        transport=_verifying_transport(),
    ) as client:
        assert client.post("/v1/claims", content=BODY).json() == {"code": "invalid_signature"}
    with httpx.Client(
        base_url="https://lequan.test",
        auth=LequanAuth(APP_ID, SECRET, clock=lambda: float(TIMESTAMP - MAX_SKEW_S - 1)),
        transport=_verifying_transport(),
    ) as client:
        assert client.post("/v1/claims", content=BODY).json() == {"code": "stale_timestamp"}


def test_lequan_auth_keeps_the_secret_out_of_its_repr() -> None:
    assert SECRET not in repr(LequanAuth(APP_ID, SECRET))
