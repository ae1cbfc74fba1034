"""The hot routes answer alike with and without the lean routes in front of the
framework (``http/fastpath.py``): claims, batch claims and redemptions, their
refusals, their replays, their 422s, 429s, 503s and 500s, byte for byte but
for the ids two worlds draw differently, with the same headers, metrics and
log line. The front only makes the app faster.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lequan.adapters.memory_gate import MemoryGate
from lequan.domain.campaigns import CampaignConfig
from lequan.http.app import create_app
from lequan.ports import GateUnavailable, ReserveRequest, ReserveResult
from tests.e2e.conftest import ACQUIRER, Api, OpenApi
from tests.factories import dining_config

Scenario = Callable[[Api], list[httpx.Response]]
# Builds the same world twice: answered with the lean routes in front, and without.
BothPaths = Callable[..., tuple[Api, Api]]

CLAIMS, BATCH, REDEMPTIONS = "/v1/claims", "/v1/claims/batch", "/v1/redemptions"
# What a client reads besides the body: content-length too, so the bytes are the same.
HEADERS = ("content-type", "content-length", "retry-after", "idempotent-replayed")
# Values two worlds draw differently (random ids, the person id from a per-world key);
# a request id the caller sent is its own.
_DRAWN = re.compile(r'"(voucher_id|redemption_id|person_id|request_id)":"((?!trace-)[^"]+)"')


@dataclass(frozen=True)
class Seen:
    """One answer as its client sees it, the drawn ids replaced by their order of
    appearance in the exchange."""

    status: int
    text: str
    headers: tuple[tuple[str, str | None], ...]


def _transcript(responses: Sequence[httpx.Response]) -> list[Seen]:
    names: dict[str, str] = {}

    def name(kind: str, value: str) -> str:
        return names.setdefault(value, f"<{kind}:{len(names)}>")

    seen = []
    for response in responses:
        text = response.text
        for kind, value in _DRAWN.findall(text):
            text = text.replace(value, name(kind, value))
        request_id = response.headers["x-request-id"]  # every answer names its request
        if response.status_code >= 400:
            assert response.json()["request_id"] == request_id, response.text
        headers = tuple((h, _header(h, response.headers.get(h))) for h in HEADERS)
        seen.append(Seen(response.status_code, text, headers))
    return seen


def _header(name: str, value: str | None) -> str | None:
    """A throttled answer's Retry-After counts down while the test runs: to the hundred."""
    if name == "retry-after" and value is not None and int(value) > 100:
        return f"~{round(int(value), -2)}"
    return value


@pytest.fixture
def both_paths(open_api: OpenApi) -> Iterator[BothPaths]:
    with ExitStack() as stack:

        def build(
            config: CampaignConfig | None = None,
            *,
            gate: Callable[[], MemoryGate] | None = None,
            **settings: Any,
        ) -> tuple[Api, Api]:
            fast = open_api(config, gate=gate() if gate else None, **settings)
            other = open_api(config, gate=gate() if gate else None, **settings)
            app = create_app(other.world.platform, close_on_shutdown=False, fast_path=False)
            client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
            return fast, Api(other.world, client)

        yield build


def _same_on_both(both: tuple[Api, Api], scenario: Scenario) -> list[Seen]:
    fast, framework = both
    seen = _transcript(scenario(fast))
    assert _transcript(scenario(framework)) == seen
    return seen


def _codes(seen: Sequence[Seen]) -> list[tuple[int, str | None]]:
    """Each answer's status and, for a refusal, its code."""
    found = []
    for answer in seen:
        code = re.search(r'"code":"([^"]+)"', answer.text) if answer.status >= 400 else None
        found.append((answer.status, code.group(1) if code else None))
    return found


def _item(key: str, user: str, **changes: Any) -> dict[str, Any]:
    return {**Api.claim_body(user), "idempotency_key": key, **changes}


def _redeem_body(voucher_id: str, user: str, order_id: str, **changes: Any) -> dict[str, Any]:
    return {**Api.order(user), "voucher_id": voucher_id, "order_id": order_id, **changes}


# -- claims --------------------------------------------------------------------------


def _claims(api: Api) -> list[httpx.Response]:
    for n in (1, 2):
        api.register(n)
    traced = {"X-Request-Id": "trace-claims-1"}
    return [
        api.claim("u1", key="c-1"),
        api.claim("u1", key="c-1"),  # a retry: the first answer, replayed
        api.claim("u1", key="c-1", template="d500-150"),  # the key with another claim
        api.claim("u1"),  # a new key: one voucher per person per round
        api.post("wechat", CLAIMS, Api.claim_body("u9"), headers=traced),  # not registered
        api.claim("u2", round_id="r9"),
        api.claim("u2", key="c-2"),
    ]


def test_claims_and_their_refusals(both_paths: BothPaths) -> None:
    seen = _same_on_both(both_paths(), _claims)
    assert _codes(seen) == [
        (201, None),
        (201, None),
        (422, "idempotency_mismatch"),
        (409, "already_claimed"),
        (404, "not_registered"),
        (404, "round_not_found"),
        (201, None),
    ]
    assert dict(seen[1].headers)["idempotent-replayed"] == "true"
    assert seen[1].text == seen[0].text
    assert '"request_id":"trace-claims-1"' in seen[4].text  # the caller's id, echoed


def _sold_out(api: Api) -> list[httpx.Response]:
    for n in (1, 2):
        api.register(n)
    return [api.claim("u1"), api.claim("u2"), api.claim("u2", template="d500-150")]


def test_sold_out(both_paths: BothPaths) -> None:
    both = both_paths(dining_config(stock={"wechat": {"d300-90": 1}}))
    assert _codes(_same_on_both(both, _sold_out)) == [
        (201, None),
        (409, "sold_out"),
        (409, "sold_out"),
    ]


def _batches(api: Api) -> list[httpx.Response]:
    for n in (1, 2):
        api.register(n)
    items = [_item("b-1", "u1"), _item("b-2", "u2"), _item("b-3", "u3")]
    return [
        api.post("wechat", BATCH, {"items": items}, key=None),
        api.post("wechat", BATCH, {"items": items}, key=None),  # every item replays
        api.post("wechat", BATCH, {"items": [_item("b-1", "u1", round_id="r2")]}, key=None),
        api.claim("u2", key="b-2"),  # a batch's item, retried alone
        api.post("wechat", BATCH, {"items": [_item("b-4", "u1"), _item("b-4", "u1")]}, key=None),
    ]


def test_batch_claims_and_their_items(both_paths: BothPaths) -> None:
    seen = _same_on_both(both_paths(), _batches)
    assert _codes(seen) == [(200, None), (200, None), (200, None), (201, None), (200, None)]
    assert '"outcomes":{"issued":2,"not_registered":1}' in seen[0].text
    assert '"outcomes":{"issued":2,"not_registered":1}' in seen[1].text
    assert '"outcome":"idempotency_mismatch"' in seen[2].text
    assert dict(seen[3].headers)["idempotent-replayed"] == "true"
    assert '"idempotency_in_flight"' in seen[4].text


# -- redemptions ---------------------------------------------------------------------


def _redemptions(api: Api) -> list[httpx.Response]:
    for n in (1, 2):
        api.register(n)
    first = api.claim_voucher("u1")["voucher_id"]
    second = api.claim_voucher("u2")["voucher_id"]
    once = _redeem_body(first, "u1", "POS-1")
    locked = _redeem_body(second, "u2", "POS-2", capture="lock")
    return [
        api.post(ACQUIRER, REDEMPTIONS, once, key="r-1"),
        api.post(ACQUIRER, REDEMPTIONS, once, key="r-1"),  # a retry: replayed
        api.post(ACQUIRER, REDEMPTIONS, {**once, "order_id": "POS-9"}, key="r-1"),
        api.post(ACQUIRER, REDEMPTIONS, once, key="r-2"),  # spent already
        api.post(ACQUIRER, REDEMPTIONS, locked, key="r-3"),
        api.post(ACQUIRER, REDEMPTIONS, locked, key="r-3"),
        api.post(ACQUIRER, REDEMPTIONS, _redeem_body("v404", "u1", "POS-4"), key="r-4"),
        api.post(ACQUIRER, REDEMPTIONS, once | {"order_amount_fen": 100}, key="r-5"),
    ]


def test_redemptions_and_their_refusals(both_paths: BothPaths) -> None:
    seen = _same_on_both(both_paths(), _redemptions)
    assert _codes(seen) == [
        (201, None),
        (201, None),
        (422, "idempotency_mismatch"),
        (409, "already_redeemed"),
        (201, None),
        (201, None),
        (404, "voucher_not_found"),
        (409, "already_redeemed"),
    ]
    assert [dict(s.headers)["idempotent-replayed"] for s in seen[:2]] == [None, "true"]
    assert dict(seen[5].headers)["idempotent-replayed"] == "true"


# -- bodies and keys -----------------------------------------------------------------


def _bad_bodies(api: Api) -> list[httpx.Response]:
    api.register(1)
    claim = Api.claim_body("u1")
    order = _redeem_body("v1", "u1", "POS-1")
    sent: list[httpx.Response] = []
    for app_id, path, body in (
        ("wechat", CLAIMS, claim),
        ("wechat", BATCH, {"items": [_item("k-1", "u1")]}),
        (ACQUIRER, REDEMPTIONS, order),
    ):
        first = next(iter(body))
        sent += [
            api.post(app_id, path, content=b'{"channel_user_id": '),  # not JSON
            api.post(app_id, path, content=b"[" * 5000 + b"]" * 5000),  # too deep to be one
            api.post(app_id, path, content=b'\xff{"a": 1}'),  # not UTF-8
            api.post(app_id, path, {**body, first: True}),  # strict: never read as 1
            api.post(app_id, path, None),  # no body at all
            api.post(app_id, path, content=b"null"),
            api.post(app_id, path, content=b"[]"),
            api.post(app_id, path, {k: v for k, v in body.items() if k != first}),
            api.post(app_id, path, {**body, "nickname": "x"}),  # unknown fields are refused
            api.post(app_id, path, {**body, "body": 1}),
            api.post(app_id, path, {**body, first: 7}),
            # JSON under another content type is still read as JSON, as the front reads it.
            api.post(
                app_id,
                path,
                content=httpx.Request("POST", "/", json=body).content,
                headers={"Content-Type": "text/plain"},
            ),
        ]
    sent += [
        api.post("wechat", BATCH, {"items": []}, key=None),
        api.post("wechat", BATCH, {"items": [_item("k-1", "u1", body={"x": 1})]}, key=None),
        api.post("wechat", BATCH, {"items": [_item("k" * 129, "u1")]}, key=None),
        api.post(ACQUIRER, REDEMPTIONS, {**order, "product": {"category": "x", "e": 1}}),
    ]
    return sent


def test_bad_bodies_are_the_same_422(both_paths: BothPaths) -> None:
    seen = _same_on_both(both_paths(), _bad_bodies)
    statuses = [status for status, _ in _codes(seen)]
    # The text/plain bodies are valid: the claim and the batch issue, the voucher is unknown.
    assert statuses == [*[422] * 11, 201] + [*[422] * 11, 200] + [*[422] * 11, 404] + [422] * 4
    assert all(code == "invalid_request" for status, code in _codes(seen) if status == 422)
    assert '"field":"body","rule":"Invalid JSON: recursion limit exceeded' in seen[1].text
    assert '"field":"body","rule":"Invalid JSON: EOF while parsing a value' in seen[4].text
    assert '"field":"body","rule":"Extra inputs are not permitted"' in seen[9].text


def _keys(api: Api) -> list[httpx.Response]:
    api.register(1)
    claim = Api.claim_body("u1")
    order = _redeem_body("v1", "u1", "POS-1")
    return [
        api.post("wechat", CLAIMS, claim, key=None),
        api.post("wechat", CLAIMS, claim, key=""),
        api.post("wechat", CLAIMS, claim, key="not a key"),
        api.post("wechat", CLAIMS, claim, key="k" * 129),
        api.post(ACQUIRER, REDEMPTIONS, order, key=None),
        api.post(ACQUIRER, REDEMPTIONS, order, key="k/1"),
        # A key is checked before the body: a bad body with no key is refused for the key.
        api.post("wechat", CLAIMS, content=b"{", key=None),
        api.post("wechat", BATCH, {"items": [_item("k 1", "u1")]}, key=None),
    ]


def test_missing_and_invalid_keys(both_paths: BothPaths) -> None:
    assert _codes(_same_on_both(both_paths(), _keys)) == [
        (422, "idempotency_key_required"),
        (422, "idempotency_key_required"),
        (422, "invalid_idempotency_key"),
        (422, "invalid_idempotency_key"),
        (422, "idempotency_key_required"),
        (422, "invalid_idempotency_key"),
        (422, "idempotency_key_required"),
        (422, "invalid_idempotency_key"),
    ]


# -- refused for now -----------------------------------------------------------------


def _throttled(api: Api) -> list[httpx.Response]:
    # Signed up without HTTP: every call spends a token of the channel's two.
    for n in (1, 2, 3):
        api.world.register(n)
    issued = api.claim("u1")
    voucher_id = issued.json()["voucher"]["voucher_id"]
    return [
        issued,
        api.claim("u2"),
        api.claim("u3"),
        # Two tokens, three items: the call pays one, the items two more.
        api.post("alipay", BATCH, {"items": [_item(f"a-{n}", f"u{n}") for n in (1, 2, 3)]}),
        api.post(ACQUIRER, REDEMPTIONS, _redeem_body(voucher_id, "u1", "POS-1")),
        api.post(ACQUIRER, REDEMPTIONS, _redeem_body(voucher_id, "u1", "POS-2")),
        api.post(ACQUIRER, REDEMPTIONS, _redeem_body(voucher_id, "u1", "POS-3")),
    ]


def test_throttled_calls_are_told_when_to_come_back(both_paths: BothPaths) -> None:
    # One token in 1,000 s: the wait the error computes, not a fixed second.
    seen = _same_on_both(both_paths(app_rate_per_s=0.001, app_burst=2), _throttled)
    assert _codes(seen) == [
        (201, None),
        (201, None),
        (429, "throttled"),
        (429, "throttled"),
        (201, None),
        (409, "already_redeemed"),
        (429, "throttled"),
    ]
    waits = [dict(s.headers)["retry-after"] for s in seen]
    assert waits == [None, None, "~1000", "~1000", None, None, "~1000"]


class _GateDown(MemoryGate):
    """A gate whose server cannot be reached once claims ask it."""

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        raise GateUnavailable("connection refused")


class _GateBroken(MemoryGate):
    """A gate with a bug: what no one expected is answered 500, never a hang."""

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        raise RuntimeError("a bug in the gate")


def _claim_and_batch(api: Api) -> list[httpx.Response]:
    api.register(1)
    return [api.claim("u1"), api.post("wechat", BATCH, {"items": [_item("g-1", "u1")]})]


def test_an_unreachable_gate_is_503_with_retry_after(both_paths: BothPaths) -> None:
    seen = _same_on_both(both_paths(gate=_GateDown), _claim_and_batch)
    assert _codes(seen) == [(503, "gate_unavailable"), (200, None)]
    assert dict(seen[0].headers)["retry-after"] == "1"
    assert '"status_code":503,"outcome":"gate_unavailable"' in seen[1].text


def test_an_unexpected_error_is_500_in_the_envelope(
    both_paths: BothPaths, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    seen = _same_on_both(both_paths(gate=_GateBroken), _claim_and_batch)
    assert _codes(seen) == [(500, "internal_error"), (500, "internal_error")]
    assert sum(e["event"] == "unhandled_error" for e in captured_logs) == 4


def _overloaded(api: Api) -> list[httpx.Response]:
    api.register(1)
    committer = api.world.platform.claims.committer
    committer.make_room(1, wait_s=0)  # the commit queue is full until given back
    try:
        refused = [
            api.claim("u1", key="o-1"),
            api.post("wechat", BATCH, {"items": [_item("o-2", "u1")]}),
        ]
    finally:
        committer.give_back(1)
    return [*refused, api.claim("u1", key="o-1")]


def test_a_full_commit_queue_is_429_with_retry_after(both_paths: BothPaths) -> None:
    seen = _same_on_both(both_paths(claim_queue_max=1, claim_queue_wait_ms=0), _overloaded)
    assert _codes(seen) == [(429, "overloaded"), (200, None), (201, None)]
    assert dict(seen[0].headers)["retry-after"] == "1"
    assert '"status_code":429,"outcome":"overloaded"' in seen[1].text


# -- what a request leaves behind ----------------------------------------------------


def _request_lines(events: Sequence[MutableMapping[str, Any]]) -> list[tuple[Any, ...]]:
    fields = ("method", "route", "status", "app_id", "operator_id", "outcome")
    return [
        (*(e.get(f) for f in fields), "request_id" in e) for e in events if e["event"] == "request"
    ]


def _counted(api: Api) -> dict[str, float]:
    registry = api.client.app.state.metrics.registry  # type: ignore[attr-defined]
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name in _REQUEST_FAMILIES
    }


# What a request leaves in the metrics, whichever path answered it.
_REQUEST_FAMILIES = frozenset(
    {
        "lequan_http_requests_total",
        "lequan_http_errors_total",
        "lequan_http_request_seconds_count",
        "lequan_app_requests_total",
        "lequan_claims_total",
        "lequan_redemptions_total",
    }
)


def _claims_then_a_batch(api: Api) -> list[httpx.Response]:
    sent = _claims(api)
    for n in (3, 4):
        api.register(n)
    items = [_item("m-3", "u3"), _item("m-4", "u4"), _item("m-5", "u5")]
    return [*sent, api.post("wechat", BATCH, {"items": items}, key=None)]


def test_both_paths_count_and_log_a_request_alike(
    both_paths: BothPaths, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    fast, framework = both_paths()

    def lines(api: Api) -> list[tuple[Any, ...]]:
        start = len(captured_logs)
        _claims_then_a_batch(api)
        return _request_lines(captured_logs[start:])

    logged = lines(fast)
    assert lines(framework) == logged
    assert ("POST", CLAIMS, 201, "wechat", None, "replayed", True) in logged
    assert ("POST", CLAIMS, 409, "wechat", None, "already_claimed", True) in logged
    assert ("POST", BATCH, 200, "wechat", None, "batch:3", True) in logged
    assert _counted(framework) == _counted(fast)
    counted = _counted(fast)
    assert counted["lequan_claims_total[('outcome', 'issued')]"] == 4
    assert counted["lequan_claims_total[('outcome', 'not_registered')]"] == 2


def test_both_paths_count_redemptions_by_acquirer_and_outcome_alike(
    both_paths: BothPaths,
) -> None:
    fast, framework = both_paths()
    _same_on_both((fast, framework), _redemptions)
    assert _counted(framework) == _counted(fast)
    assert _by_label(fast, "lequan_redemptions_total", "outcome", acquirer=ACQUIRER) == {
        "redeemed": 2,  # the retry's replayed answer too
        "locked": 2,
        "idempotency_mismatch": 1,
        "already_redeemed": 2,
        "voucher_not_found": 1,
    }
    assert _by_label(fast, "lequan_app_requests_total", "class", app=ACQUIRER, kind="acquirer") == {
        "2xx": 4,
        "4xx": 4,
    }
    assert _by_label(fast, "lequan_http_errors_total", "code", route=REDEMPTIONS) == {
        "idempotency_mismatch": 1,
        "already_redeemed": 2,
        "voucher_not_found": 1,
    }


def _by_label(api: Api, name: str, label: str, **fixed: str) -> dict[str, float]:
    """One label's values of a sample, where the others are ``fixed``."""
    registry = api.client.app.state.metrics.registry  # type: ignore[attr-defined]
    return {
        sample.labels[label]: sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == name and fixed.items() <= sample.labels.items()
    }


def test_the_description_of_the_hot_routes_names_their_bodies(both_paths: BothPaths) -> None:
    """The routes read their bodies themselves; the description still names each model."""
    _, framework = both_paths()
    spec = framework.client.get("/openapi.json").json()
    bodies = {
        path: spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for path in (CLAIMS, BATCH, REDEMPTIONS)
    }
    assert bodies == {
        CLAIMS: {"schema": {"$ref": "#/components/schemas/ClaimIn"}},
        BATCH: {"schema": {"$ref": "#/components/schemas/BatchClaimIn"}},
        REDEMPTIONS: {"schema": {"$ref": "#/components/schemas/RedeemIn"}},
    }
    schemas = spec["components"]["schemas"]
    refs = re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec))
    assert {"ClaimIn", "BatchClaimItemIn", "RedeemIn", "ProductIn"} <= set(refs)
    assert set(refs) <= set(schemas)
    # The limit the server holds a batch to (`claim_batch_items_max`), not another.
    assert schemas["BatchClaimIn"]["properties"]["items"]["maxItems"] == 1000
