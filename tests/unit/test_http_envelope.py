"""The pieces of the one HTTP envelope (``lequan.http.envelope``) that both paths build
their answers from: errors with their headers, the 422 body, the rendered bytes."""

from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError

from lequan.domain.errors import Conflict, Unavailable
from lequan.http.claims import claim_headers
from lequan.http.envelope import error_answer, invalid_request, parse_body, render
from lequan.http.schemas import BatchClaimIn
from lequan.ports import StoreUnavailable, UnstorableValue
from lequan.services.claim_answers import ClaimResult
from lequan.services.idempotency import Answer


def test_retry_after_is_the_errors_own() -> None:
    throttled = Unavailable("throttled", "slow down", retry_after_s=37)
    assert error_answer(throttled) == (
        429,
        {"code": "throttled", "message": "slow down"},
        ((b"retry-after", b"37"),),
    )
    # A claim refused for now carries its error to the answer's headers, whichever path.
    refused = ClaimResult("throttled", Answer(429, {"code": "throttled"}), error=throttled)
    assert claim_headers(refused) == ((b"retry-after", b"37"),)
    gone = Conflict("sold_out", "gone")
    assert claim_headers(ClaimResult("sold_out", Answer(409, {}), error=gone)) == ()
    assert claim_headers(ClaimResult("replayed", Answer(201, {}), replayed=True)) == (
        (b"idempotent-replayed", b"true"),
    )


def test_the_stores_failures_are_the_callers_or_for_now() -> None:
    assert error_answer(UnstorableValue("too long")) == (
        422,
        {"code": "invalid_request", "message": "a value in the request cannot be stored"},
        (),
    )
    assert error_answer(StoreUnavailable("timeout")) == (
        503,
        {"code": "store_unavailable", "message": "the store is unavailable; retry shortly"},
        ((b"retry-after", b"1"),),
    )
    status, body, headers = error_answer(RuntimeError("a bug"))
    assert (status, body["code"], headers) == (500, "internal_error", ())


def test_the_422_names_at_most_twenty_fields_and_five_in_its_message() -> None:
    items = [{"idempotency_key": "", "channel_user_id": "u"}] * 30
    with pytest.raises(RequestValidationError) as refused:
        parse_body(BatchClaimIn, json.dumps({"items": items}).encode())
    status, body, _ = error_answer(refused.value)
    assert status == 422
    problems = body["details"]["errors"]
    assert len(problems) == 20
    assert problems[0] == {
        "field": "items.0.campaign_id",
        "rule": "Field required",
    }
    assert body["message"].count(";") == 4
    # Only the framework's leading "body" is left out: a field of that name keeps its own.
    assert invalid_request([{"loc": ("body", "items", 0, "body"), "msg": "no"}]) == {
        "code": "invalid_request",
        "message": "items.0.body: no",
        "details": {"errors": [{"field": "items.0.body", "rule": "no"}]},
    }
    assert invalid_request([{"loc": ("query", "limit"), "msg": "no"}])["message"] == (
        "query.limit: no"
    )


def test_errors_name_their_request_and_rendered_answers_go_as_they_are() -> None:
    assert render(409, {"code": "sold_out"}, "r-1") == b'{"code":"sold_out","request_id":"r-1"}'
    issued = Answer.rendered(201, '{"status":"issued", "voucher":{}}')
    assert render(201, issued.body, "r-2") == b'{"status":"issued", "voucher":{}}'
    assert render(200, {"name": "市民"}, "r-3") == '{"name":"市民"}'.encode()
