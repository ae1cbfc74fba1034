"""What the API reads, and how strictly: every JSON body through one parser with
one answer for what is not JSON, money, counts and flags only as JSON numbers
and booleans, and every uploaded document (campaign YAML, merchant CSV) bounded
in size and depth, refused with a stable code and never a 500.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import (
    ACQUIRER,
    CAMPAIGN,
    Api,
    OpenApi,
    assert_error,
    assert_refused,
    campaign_yaml,
    person_body,
)
from tests.factories import dining_config, id_number


def _operator_post(api: Api, path: str, content: bytes) -> httpx.Response:
    headers = {
        "Authorization": f"Bearer {api.world.tokens['alice']}",
        "Content-Type": "application/json",
    }
    response: httpx.Response = api.client.post(path, content=content, headers=headers)
    return response


# -- one parser for every JSON body ------------------------------------------------

# Every route that takes a JSON body: who calls it, and where.
JSON_ROUTES = [
    ("wechat", "/v1/persons"),
    ("wechat", "/v1/claims"),
    ("wechat", "/v1/claims/batch"),
    (ACQUIRER, "/v1/redemptions/quote"),
    (ACQUIRER, "/v1/redemptions"),
    (ACQUIRER, "/v1/redemptions/r1/confirm"),
    (ACQUIRER, "/v1/redemptions/r1/void"),
    (ACQUIRER, "/v1/redemptions/r1/reverse"),
    (ACQUIRER, "/v1/redemptions/r1/refunds"),
    ("operator", "/v1/admin/apps"),
    ("operator", "/v1/admin/blacklist"),
    ("operator", "/v1/admin/blacklist/remove"),
]
NOT_JSON = {
    "truncated": b'{"channel_user_id": ',
    "not utf-8": b'\xff\xfe{"a": 1}',
    "a lone surrogate": b'"\xed\xa0\x80"',
    "NaN": b"NaN",
    "5000 arrays deep": b"[" * 5000 + b"]" * 5000,
    "3000 objects deep": b'{"a":' * 3000 + b"1" + b"}" * 3000,
}


@pytest.mark.parametrize(("caller", "path"), JSON_ROUTES)
def test_a_body_that_is_not_json_is_422_invalid_request_on_every_route(
    api: Api, caller: str, path: str
) -> None:
    before = api.snapshot()
    for name, raw in NOT_JSON.items():
        if caller == "operator":
            response = _operator_post(api, path, raw)
        else:
            response = api.post(caller, path, content=raw)
        refused = assert_error(response, 422, "invalid_request")
        assert refused["details"]["errors"][0]["field"] == "body", (name, refused)
    assert api.snapshot() == before


# -- money, counts and flags are JSON numbers and booleans ---------------------------

NOT_AN_INTEGER = [True, "56800", 56800.0, 5.68e4]


def _order(**changes: Any) -> dict[str, Any]:
    return {**Api.order("u1", amount_fen=56800), **changes}


@pytest.mark.parametrize("amount", NOT_AN_INTEGER, ids=repr)
def test_an_amount_is_a_json_integer_on_every_route(api: Api, amount: Any) -> None:
    api.register(1)
    voucher_id = api.claim_voucher("u1")["voucher_id"]
    redeem = {**_order(), "voucher_id": voucher_id, "order_id": "POS-1"}
    for path, body in (
        ("/v1/redemptions/quote", _order(order_amount_fen=amount)),
        ("/v1/redemptions", {**redeem, "order_amount_fen": amount}),
        ("/v1/redemptions", {**redeem, "capture": "lock", "order_amount_fen": amount}),
        ("/v1/redemptions/r1/refunds", {"refund_amount_fen": amount}),
    ):
        refused = assert_refused(
            api, partial(api.post, ACQUIRER, path, body), 422, "invalid_request"
        )
        fields = [e["field"] for e in refused["details"]["errors"]]
        assert fields == [next(k for k in body if k.endswith("_fen"))], (path, refused)
    assert api.voucher_state(voucher_id) == "issued"


@pytest.mark.parametrize("grade", [True, "1", 1.0])
def test_a_count_is_a_json_integer(api: Api, grade: Any) -> None:
    api.register(1)
    voucher_id = api.claim_voucher("u1")["voucher_id"]
    body = {
        **_order(),
        "voucher_id": voucher_id,
        "order_id": "POS-1",
        "product": {"category": "refrigerator", "energy_grade": grade},
    }
    refused = assert_refused(
        api, lambda: api.post(ACQUIRER, "/v1/redemptions", body), 422, "invalid_request"
    )
    assert [e["field"] for e in refused["details"]["errors"]] == ["product.energy_grade"]


@pytest.mark.parametrize("consent", ["true", 1, "yes"])
def test_consent_is_a_json_boolean(api: Api, consent: Any) -> None:
    body = person_body(1, consent=consent)
    refused = assert_refused(
        api, lambda: api.post("wechat", "/v1/persons", body), 422, "invalid_request"
    )
    assert [e["field"] for e in refused["details"]["errors"]] == ["consent"]


def test_the_description_says_amounts_are_strict(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    amount = spec["components"]["schemas"]["QuoteIn"]["properties"]["order_amount_fen"]
    assert amount["type"] == "integer"
    assert "JSON integer" in amount["description"]
    consent = spec["components"]["schemas"]["PersonIn"]["properties"]["consent"]
    assert consent["type"] == "boolean"
    assert "JSON boolean" in consent["description"]


# -- campaign files ------------------------------------------------------------------


def _import(api: Api, text: str, operator: str = "alice") -> httpx.Response:
    return api.admin(
        operator, "POST", "/v1/admin/campaigns", content=text, content_type="application/yaml"
    )


def _billion_laughs(levels: int = 9) -> str:
    """Ten aliases per level: a few hundred bytes that expand to 10**levels nodes."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for n in range(1, levels + 1):
        refs = ", ".join([f"*a{n - 1}"] * 10)
        lines.append(f"a{n}: &a{n} [{refs}]")
    lines.append(f"name: *a{levels}")
    return "\n".join(lines) + "\n"


DEEP_FILES = {
    "5000 flow sequences": "[" * 5000 + "]" * 5000,
    "3000 flow mappings": "{a: " * 3000 + "1" + "}" * 3000,
    "300 block mappings": "".join(f"{' ' * n}a:\n" for n in range(300)) + " " * 300 + "b\n",
    "an alias bomb": _billion_laughs(),
}


@pytest.mark.parametrize("name", list(DEEP_FILES))
def test_a_deep_or_exploding_campaign_file_isassert_refused(open_api: OpenApi, name: str) -> None:
    api = open_api(campaign=False)
    refused = assert_refused(
        api, lambda: _import(api, DEEP_FILES[name]), 422, "invalid_campaign_config"
    )
    assert refused["details"]["errors"][0]["field"] == "(file)"


def test_a_campaign_file_may_use_anchors_within_its_bounds(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    text = campaign_yaml(dining_config()).replace("validity:\n", "validity: &validity\n", 1)
    text += "x-validity-again: *validity\n"
    refused = assert_error(_import(api, text), 422, "invalid_campaign_config")
    # Read whole, anchors resolved: refused only for the unknown top-level field.
    assert [e["field"] for e in refused["details"]["errors"]] == ["x-validity-again"]


def test_a_campaign_file_over_its_byte_limit_is_413(open_api: OpenApi) -> None:
    text = campaign_yaml(dining_config())
    api = open_api(campaign=False, campaign_file_bytes_max=len(text.encode()) - 1)
    refused = assert_refused(api, lambda: _import(api, text), 413, "body_too_large")
    assert str(len(text.encode()) - 1) in refused["message"]
    exact = open_api(campaign=False, campaign_file_bytes_max=len(text.encode()))
    assert _import(exact, text).status_code == 201


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold_fen", "30000"),
        ("threshold_fen", 30000.0),
        ("discount_fen", True),
    ],
)
def test_a_template_amount_in_a_campaign_file_is_an_integer(
    open_api: OpenApi, field: str, value: Any
) -> None:
    api = open_api(campaign=False)
    config = dining_config().model_dump(mode="json")
    config["templates"][0][field] = value
    refused = assert_refused(
        api, lambda: _import(api, yaml.safe_dump(config)), 422, "invalid_campaign_config"
    )
    assert [e["field"] for e in refused["details"]["errors"]] == [f"templates[0].{field}"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("validity", "days_from_issue"), True),
        (("validity", "days_from_issue"), "10"),
        (("scope", "enrolled_only"), "false"),
        (("scope", "channel_bound"), 0),
    ],
)
def test_counts_and_flags_in_a_campaign_file_are_strict(
    open_api: OpenApi, path: tuple[str, str], value: Any
) -> None:
    api = open_api(campaign=False)
    config = dining_config().model_dump(mode="json")
    section, field = path
    config[section] = {**config[section], field: value}
    if field == "days_from_issue":
        config[section] = {field: value}
    refused = assert_refused(
        api, lambda: _import(api, yaml.safe_dump(config)), 422, "invalid_campaign_config"
    )
    assert [e["field"] for e in refused["details"]["errors"]] == [f"{section}.{field}"]


# -- merchant files ------------------------------------------------------------------

HEADER = "merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns\n"


def _merchants(api: Api, text: str) -> httpx.Response:
    return api.admin("alice", "POST", "/v1/admin/merchants", content=text, content_type="text/csv")


@pytest.mark.parametrize(
    ("acquirer", "campaigns", "missing"),
    [
        ("acq-nobody", CAMPAIGN, "no acquirer acq-nobody"),
        ("wechat", CAMPAIGN, "no acquirer wechat"),  # an app, but a channel
        (ACQUIRER, f"{CAMPAIGN};no-such-campaign", "no campaign no-such-campaign"),
    ],
)
def test_a_merchant_file_naming_what_does_not_exist_is_refused_at_its_line(
    api: Api, acquirer: str, campaigns: str, missing: str
) -> None:
    rows = [
        f"m-a,甲,5812,310104,in_store,{ACQUIRER},{CAMPAIGN}\n",
        f"m-b,乙,5812,310104,in_store,{acquirer},{campaigns}\n",
    ]
    refused = assert_refused(
        api, lambda: _merchants(api, HEADER + "".join(rows)), 422, "invalid_merchant_file"
    )
    assert refused["details"]["line"] == 3
    assert refused["message"] == f"line 3: {missing}"


@pytest.mark.parametrize(
    "text",
    ["\\\rñ¯\x1a×", "merchant_id,na\rme\n", ""],
    ids=["a carriage return in the header", "a broken header", "empty"],
)
def test_a_merchant_file_with_a_broken_header_is_refused_at_line_1(api: Api, text: str) -> None:
    # Found by the contract test: the header's own CSV error escaped as a 500.
    refused = assert_refused(api, lambda: _merchants(api, text), 422, "invalid_merchant_file")
    assert refused["details"]["line"] == 1


def test_a_merchant_file_over_its_limits_isassert_refused(open_api: OpenApi) -> None:
    rows = 30
    text = HEADER + "".join(
        f"m-{n:03d},店{n},5812,310104,in_store,{ACQUIRER},{CAMPAIGN}\n" for n in range(rows)
    )
    api = open_api(merchant_file_bytes_max=len(text.encode()) - 1)
    assert_refused(api, lambda: _merchants(api, text), 413, "body_too_large")
    api = open_api(merchant_file_rows_max=rows - 1)
    refused = assert_refused(api, lambda: _merchants(api, text), 422, "invalid_merchant_file")
    assert refused["details"]["line"] == rows + 1
    exact = open_api(merchant_file_rows_max=rows, merchant_file_bytes_max=len(text.encode()))
    assert _merchants(exact, text).json() == {"imported": rows}


# -- the empty body of a route that takes no fields ----------------------------------


@pytest.mark.parametrize("first", [b"{}", b"", b" { } "])
@pytest.mark.parametrize("again", [b"{}", b""])
def test_no_body_and_an_empty_object_are_the_same_request(
    api: Api, first: bytes, again: bytes
) -> None:
    user = api.register(1)
    voucher_id = api.claim_voucher(user)["voucher_id"]
    locked = api.redeem(voucher_id, user, capture="lock")
    assert locked.status_code == 201, locked.text
    path = f"/v1/redemptions/{locked.json()['redemption_id']}/confirm"
    confirmed = api.post(ACQUIRER, path, content=first, key="confirm-1")
    assert confirmed.status_code == 200, confirmed.text
    retried = api.post(ACQUIRER, path, content=again, key="confirm-1")
    assert retried.status_code == 200, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json() == confirmed.json()
    # Fields this route does not take are still refused, and null is not an empty body.
    for refused in (b'{"force": true}', b"null", b"[]"):
        assert_error(api.post(ACQUIRER, path, content=refused), 422, "invalid_request")


def test_an_operators_role_is_checked_before_the_body_is_read(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.world.tokens['vera']}"}
    for path in ("/v1/admin/apps", "/v1/admin/blacklist", "/v1/admin/blacklist/remove"):
        refused = api.client.post(path, content=b'{"app_id": ', headers=headers)
        assert_error(refused, 403, "forbidden")


def test_a_blacklist_call_reads_its_body_as_the_others_do(api: Api) -> None:
    listed = _operator_post(
        api, "/v1/admin/blacklist", b'{"id_number": "%s"}' % id_number(1).encode()
    )
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"added": True}
