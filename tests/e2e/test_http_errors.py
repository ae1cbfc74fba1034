"""Every refusal a channel or an acquirer can meet, over HTTP: its status, its
stable code, the JSON error body, and a store left exactly as it was.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import pytest

from tests.e2e.conftest import (
    ACQUIRER,
    CAMPAIGN,
    Api,
    OpenApi,
    assert_error,
    assert_refused,
    campaign_yaml,
    merchants_csv,
    person_body,
)
from tests.factories import T0, dining_config, id_number


def _claim_item(key: str, user: str) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "channel_user_id": user,
        "campaign_id": CAMPAIGN,
        "round_id": "r1",
        "template_id": "d300-90",
        "location_region": "310104",
    }


# -- claiming ----------------------------------------------------------------------


def test_sold_out(open_api: OpenApi) -> None:
    api = open_api(dining_config(stock={"wechat": {"d300-90": 1}}))
    api.register(1)
    api.register(2)
    api.claim_voucher("u1")
    assert_refused(api, lambda: api.claim("u2"), 409, "sold_out")
    # A template this round does not stock in the channel is sold out as well.
    assert_refused(api, lambda: api.claim("u2", template="d500-150"), 409, "sold_out")
    assert api.check()["issued"] == 1


def test_already_claimed(api: Api) -> None:
    user = api.register(1)
    api.claim_voucher(user)
    assert_refused(api, lambda: api.claim(user), 409, "already_claimed")
    # One claim per person per round per channel, whatever the template.
    assert_refused(api, lambda: api.claim(user, template="d500-150"), 409, "already_claimed")
    # The same person through a second account in the same channel is refused at sign-up.
    assert_refused(
        api,
        lambda: api.post("wechat", "/v1/persons", person_body(1, user="u1-second")),
        409,
        "person_already_bound",
    )


def test_not_started_and_round_ended(api: Api) -> None:
    user = api.register(1)
    body = assert_refused(api, lambda: api.claim(user, round_id="r2"), 409, "not_started")
    assert body["details"]["release_at"] == (T0 + timedelta(days=7)).isoformat()
    api.clock.advance(timedelta(days=7))
    assert_refused(api, lambda: api.claim(user, round_id="r1"), 409, "round_ended")
    assert api.claim(user, round_id="r2").status_code == 201


def test_ineligible_outside_shanghai(api: Api) -> None:
    user = api.register(1, located="320102")
    registered = api.post("wechat", "/v1/persons", person_body(1, located="320102"))
    [verdict] = registered.json()["eligibility"]
    assert verdict["eligible"] is False
    assert [r["code"] for r in verdict["reasons"]] == ["outside_region"]
    body = assert_refused(api, lambda: api.claim(user, located="320102"), 409, "ineligible")
    assert [r["code"] for r in body["details"]["reasons"]] == ["outside_region"]
    body = assert_refused(api, lambda: api.claim(user, located=None), 409, "ineligible")
    assert [r["code"] for r in body["details"]["reasons"]] == ["location_required"]


def test_ineligible_when_blacklisted(api: Api) -> None:
    user = api.register(1)
    listed = api.admin(
        "bob", "POST", "/v1/admin/blacklist", json={"id_number": id_number(1), "reason": "scalper"}
    )
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"added": True}
    body = assert_refused(api, lambda: api.claim(user), 409, "ineligible")
    assert [r["code"] for r in body["details"]["reasons"]] == ["blacklisted"]
    # The verdict at sign-up says so too.
    again = api.post("wechat", "/v1/persons", person_body(1))
    assert again.json()["eligibility"][0]["reasons"][0]["code"] == "blacklisted"
    removed = api.admin(
        "alice", "POST", "/v1/admin/blacklist/remove", json={"id_number": id_number(1)}
    )
    assert removed.json() == {"removed": True}
    assert api.claim(user).status_code == 201


def test_not_registered(api: Api) -> None:
    owner = api.register(1)
    voucher = api.claim_voucher(owner)
    assert_refused(api, lambda: api.claim("ghost"), 404, "not_registered")
    assert_refused(api, lambda: api.wallet("ghost"), 404, "not_registered")
    assert_refused(api, lambda: api.quote("ghost"), 404, "not_registered")
    # Someone else's voucher, or one paid for by nobody known, is as good as none.
    assert_refused(
        api, lambda: api.redeem(voucher["voucher_id"], "ghost"), 404, "voucher_not_found"
    )
    api.register(2)
    assert_refused(api, lambda: api.redeem(voucher["voucher_id"], "u2"), 404, "voucher_not_found")


def test_unknown_campaign_round_and_template(api: Api) -> None:
    user = api.register(1)
    body = {
        "channel_user_id": user,
        "campaign_id": "no-such-campaign",
        "round_id": "r1",
        "template_id": "d300-90",
        "location_region": "310104",
    }
    assert_refused(api, lambda: api.post("wechat", "/v1/claims", body), 404, "campaign_not_found")
    assert_refused(api, lambda: api.claim(user, round_id="r9"), 404, "round_not_found")
    assert_refused(api, lambda: api.claim(user, template="d9-9"), 404, "template_not_found")


def test_budget_exhausted(open_api: OpenApi) -> None:
    # Money for exactly two 90-yuan vouchers, whatever the stock.
    api = open_api(dining_config(budget_fen=2 * 9000))
    for n in (1, 2, 3):
        api.register(n)
    api.claim_voucher("u1")
    api.claim_voucher("u2")
    assert_refused(api, lambda: api.claim("u3"), 409, "budget_exhausted")
    assert_refused(api, lambda: api.claim("u3", template="d500-150"), 409, "budget_exhausted")
    check = api.check()
    assert (check["committed_fen"], check["budget_fen"], check["issued"]) == (18000, 18000, 2)
    assert check["ok"], check["problems"]


def test_a_bigger_voucher_that_does_not_fit_is_budget_exhausted(open_api: OpenApi) -> None:
    api = open_api(dining_config(budget_fen=2 * 9000))
    api.register(1)
    api.register(2)
    api.claim_voucher("u1")
    # 150 yuan does not fit in the 90 left.
    assert_refused(api, lambda: api.claim("u2", template="d500-150"), 409, "budget_exhausted")


def test_a_smaller_voucher_still_fits_after_a_bigger_one_did_not(open_api: OpenApi) -> None:
    # A long cache TTL makes the window of the wrong refusal the whole test.
    api = open_api(dining_config(budget_fen=2 * 9000), campaign_cache_ttl_s=60)
    api.register(1)
    api.register(2)
    api.claim_voucher("u1")
    assert_error(api.claim("u2", template="d500-150"), 409, "budget_exhausted")
    # 90 yuan are left, exactly one d300-90.
    response = api.claim("u2", template="d300-90")
    assert response.status_code == 201, response.text
    assert api.check()["committed_fen"] == 18000


def test_budget_exhausted_within_one_batch(open_api: OpenApi) -> None:
    api = open_api(dining_config(budget_fen=2 * 9000))
    for n in (1, 2, 3):
        api.register(n)
    batch = api.post(
        "wechat",
        "/v1/claims/batch",
        {"items": [_claim_item(f"k{n}", f"u{n}") for n in (1, 2, 3)]},
        key=None,
    )
    assert batch.status_code == 200, batch.text
    assert [r["outcome"] for r in batch.json()["results"]] == [
        "issued",
        "issued",
        "budget_exhausted",
    ]
    assert batch.json()["results"][2]["status_code"] == 409
    assert api.check()["committed_fen"] == 18000


def test_campaign_paused_then_not_live(api: Api) -> None:
    user = api.register(1)
    paused = api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert_refused(api, lambda: api.claim(user), 409, "campaign_paused")
    resumed = api.admin("alice", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/resume")
    assert resumed.json()["status"] == "live"
    api.register(2)
    assert api.claim("u2").status_code == 201
    ended = api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/end")
    assert ended.json()["status"] == "ended"
    assert_refused(api, lambda: api.claim(user), 409, "campaign_not_live")


def test_campaign_not_live_before_activation(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    created = api.admin(
        "alice",
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(dining_config()),
        content_type="application/yaml",
    )
    assert created.status_code == 201, created.text
    api.clock.set(T0)
    api.register(1)
    assert_refused(api, lambda: api.claim("u1"), 409, "campaign_not_live")
    assert api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/approve").status_code == 200
    assert_refused(api, lambda: api.claim("u1"), 409, "campaign_not_live")


def test_batch_too_large(open_api: OpenApi) -> None:
    api = open_api(claim_batch_items_max=5)
    for n in range(1, 7):
        api.register(n)
    items = [_claim_item(f"k{n}", f"u{n}") for n in range(1, 7)]
    assert_refused(
        api,
        lambda: api.post("wechat", "/v1/claims/batch", {"items": items}, key=None),
        422,
        "batch_too_large",
    )
    ok = api.post("wechat", "/v1/claims/batch", {"items": items[:5]}, key=None)
    assert ok.status_code == 200, ok.text
    assert ok.json()["outcomes"] == {"issued": 5}


def test_an_empty_batch_is_invalid(api: Api) -> None:
    assert_refused(
        api,
        lambda: api.post("wechat", "/v1/claims/batch", {"items": []}, key=None),
        422,
        "invalid_request",
    )


# -- sign-up -------------------------------------------------------------------


REGISTRATION_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"id_number": "310104198001011235"}, "invalid_id_number"),  # wrong check digit
    ({"id_number": "31010419800101123"}, "invalid_id_number"),
    ({"id_number": "310104199902301234"}, "invalid_id_number"),  # 30 February
    ({"id_number": "31010419800101123Y"}, "invalid_id_number"),
    ({"phone": "12345678901"}, "invalid_phone"),
    ({"phone": "1391234567"}, "invalid_phone"),
    ({"phone": "139-1234-567a"}, "invalid_phone"),
    ({"consent": False}, "consent_required"),
    ({"consent_version": "1999-01"}, "invalid_consent_version"),
    ({"region_code": "990000"}, "invalid_region"),
    ({"location_region": "000000"}, "invalid_region"),
    ({"name": "张\u200b三"}, "invalid_name"),
    ({"name": "   "}, "invalid_name"),
]


def test_registration_refusals(api: Api) -> None:
    for change, code in REGISTRATION_REFUSALS:
        body = person_body(7) | change
        assert_refused(api, partial(api.post, "wechat", "/v1/persons", body), 422, code)


def test_an_account_bound_to_another_person(api: Api) -> None:
    api.register(1)
    assert_refused(
        api,
        lambda: api.post("wechat", "/v1/persons", person_body(2, user="u1")),
        409,
        "account_already_bound",
    )


# -- redemption -----------------------------------------------------------------


@pytest.fixture
def holder(api: Api) -> tuple[Api, str, str]:
    """A person u1 holding one d300-90 voucher: (api, user, voucher_id)."""
    user = api.register(1)
    return api, user, api.claim_voucher(user)["voucher_id"]


def test_below_threshold(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    assert_refused(
        api, lambda: api.redeem(voucher_id, user, amount_fen=29999), 409, "below_threshold"
    )
    assert api.redeem(voucher_id, user, amount_fen=30000).status_code == 201


def test_merchant_not_in_scope(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    # m-bar-004 is a bar (MCC 5813): enrolled, but outside the dining scope.
    assert_refused(
        api,
        lambda: api.redeem(voucher_id, user, merchant="m-bar-004"),
        409,
        "merchant_not_in_scope",
    )
    # m-hotel-005 is not enrolled in the dining campaign at all.
    assert_refused(
        api,
        lambda: api.redeem(voucher_id, user, merchant="m-hotel-005"),
        409,
        "merchant_not_in_scope",
    )
    assert_refused(
        api, lambda: api.redeem(voucher_id, user, merchant="m-none"), 404, "merchant_not_found"
    )


def test_a_merchant_import_is_seen_by_the_next_redemption(
    holder: tuple[Api, str, str],
) -> None:
    """The redemption writer keeps merchants in a cache; an import in this process
    empties it, so the next redemption is decided with the merchant as imported."""
    api, user, voucher_id = holder
    # Decided with m-cafe-001 enrolled in the campaign (and so cached).
    assert_refused(
        api, lambda: api.redeem(voucher_id, user, amount_fen=29999), 409, "below_threshold"
    )
    unenrolled = merchants_csv().replace(
        "m-cafe-001,静安咖啡馆,5812,310106,in_store,acq-unionpay,sh-dining-2024",
        "m-cafe-001,静安咖啡馆,5812,310106,in_store,acq-unionpay,",
    )
    assert unenrolled != merchants_csv()
    imported = api.admin(
        "alice", "POST", "/v1/admin/merchants", content=unenrolled, content_type="text/csv"
    )
    assert imported.status_code == 200, imported.text
    assert_refused(api, lambda: api.redeem(voucher_id, user), 409, "merchant_not_in_scope")
    assert api.redeem(voucher_id, user, merchant="m-noodle-002").status_code == 201


def test_mode_and_order_type_out_of_scope(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    # m-cafe-001 sells in store only.
    assert_refused(
        api, lambda: api.redeem(voucher_id, user, mode="online"), 409, "mode_not_in_scope"
    )
    body = {
        **api.order(user),
        "voucher_id": voucher_id,
        "order_id": "gift-1",
        "order_type": "gift_card",
    }
    assert_refused(
        api, lambda: api.post(ACQUIRER, "/v1/redemptions", body), 409, "order_type_excluded"
    )


def test_channel_mismatch(holder: tuple[Api, str, str]) -> None:
    api, _, voucher_id = holder
    # The same person pays with Alipay: the wechat voucher stays with wechat.
    api.register(1, channel="alipay", user="alipay-u1")
    assert_refused(
        api,
        lambda: api.redeem(voucher_id, "alipay-u1", channel="alipay"),
        409,
        "channel_mismatch",
    )
    assert api.quote("alipay-u1", channel="alipay").json()["quotes"] == []


def test_already_redeemed(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    assert api.redeem(voucher_id, user).status_code == 201
    assert_refused(api, lambda: api.redeem(voucher_id, user), 409, "already_redeemed")
    assert_refused(
        api, lambda: api.redeem(voucher_id, user, capture="lock"), 409, "already_redeemed"
    )


def test_voucher_expired(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    api.clock.advance(timedelta(days=10))
    assert_refused(api, lambda: api.redeem(voucher_id, user), 409, "voucher_expired")
    assert_refused(
        api, lambda: api.redeem(voucher_id, user, capture="lock"), 409, "voucher_expired"
    )
    assert api.quote(user).json()["quotes"] == []


def test_lock_expired(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    locked = api.redeem(voucher_id, user, capture="lock")
    redemption_id = locked.json()["redemption_id"]
    api.clock.advance(timedelta(seconds=900))
    assert_refused(api, lambda: api.follow_up(redemption_id, "confirm"), 409, "lock_expired")


def test_partial_refund_unsupported(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    paid = api.redeem(voucher_id, user, amount_fen=50000)
    redemption_id = paid.json()["redemption_id"]
    for amount in (49999, 50001, 1):
        assert_refused(
            api,
            partial(api.follow_up, redemption_id, "refunds", {"refund_amount_fen": amount}),
            422,
            "partial_refund_unsupported",
        )
    assert api.voucher_state(voucher_id) == "redeemed"


def test_reversal_window_passed(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    paid = api.redeem(voucher_id, user)
    redemption_id = paid.json()["redemption_id"]
    api.clock.advance(timedelta(seconds=86_401))
    assert_refused(
        api, lambda: api.follow_up(redemption_id, "reverse"), 409, "reversal_window_passed"
    )
    # A refund is still possible.
    refunded = api.follow_up(redemption_id, "refunds", {"refund_amount_fen": 30000})
    assert refunded.status_code == 201, refunded.text


def test_follow_ups_in_the_wrong_state(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    paid = api.redeem(voucher_id, user)
    redemption_id = paid.json()["redemption_id"]
    for action in ("confirm", "void"):
        assert_refused(api, partial(api.follow_up, redemption_id, action), 409, "redemption_state")
    assert_refused(api, lambda: api.follow_up("r-none", "confirm"), 404, "redemption_not_found")
    assert_refused(
        api, lambda: api.get(ACQUIRER, "/v1/redemptions/r-none"), 404, "redemption_not_found"
    )


def test_another_acquirers_merchant_and_redemption(holder: tuple[Api, str, str]) -> None:
    api, user, voucher_id = holder
    created = api.admin(
        "alice",
        "POST",
        "/v1/admin/apps",
        json={"app_id": "acq-jd", "kind": "acquirer", "name": "JD"},
    )
    assert created.status_code == 201, created.text
    api.world.secrets["acq-jd"] = created.json()["secret"]
    assert_refused(
        api,
        lambda: api.post("acq-jd", "/v1/redemptions/quote", api.order(user), key=None),
        403,
        "forbidden",
    )
    paid = api.redeem(voucher_id, user)
    redemption_id = paid.json()["redemption_id"]
    assert_refused(
        api,
        lambda: api.get("acq-jd", f"/v1/redemptions/{redemption_id}"),
        404,
        "redemption_not_found",
    )
    assert_refused(
        api,
        lambda: api.post("acq-jd", f"/v1/redemptions/{redemption_id}/reverse", None),
        404,
        "redemption_not_found",
    )


# -- schema violations ------------------------------------------------------------


def _quote_body(**change: Any) -> dict[str, Any]:
    body = Api.order("u1")
    body.update(change)
    return body


ACQUIRER_SCHEMA_VIOLATIONS: list[tuple[str, Any]] = [
    ("/v1/redemptions/quote", _quote_body(order_amount_fen=-1)),
    ("/v1/redemptions/quote", _quote_body(order_amount_fen=0)),
    ("/v1/redemptions/quote", _quote_body(order_amount_fen=10**12)),
    ("/v1/redemptions/quote", _quote_body(order_amount_fen=100.5)),
    ("/v1/redemptions/quote", _quote_body(order_amount_fen=[1])),
    ("/v1/redemptions/quote", _quote_body(mode="drive_through")),
    ("/v1/redemptions/quote", _quote_body(tip_fen=10)),
    ("/v1/redemptions/quote", _quote_body(channel_user_id="u" * 65)),
    ("/v1/redemptions/quote", _quote_body(merchant_id="m/../x")),
    ("/v1/redemptions/quote", {}),
    ("/v1/redemptions/quote", [1, 2]),
    ("/v1/redemptions", _quote_body(voucher_id="v1")),  # no order_id
    ("/v1/redemptions", _quote_body(voucher_id="v1", order_id="o1", capture="later")),
    ("/v1/redemptions", _quote_body(voucher_id="v" * 65, order_id="o1")),
    ("/v1/redemptions/r1/refunds", {"refund_amount_fen": -5}),
    ("/v1/redemptions/r1/refunds", {"refund_amount_fen": 5, "reason": "x" * 201}),
    ("/v1/redemptions/r1/confirm", {"force": True}),
]


def test_acquirer_schema_violations(api: Api) -> None:
    for path, body in ACQUIRER_SCHEMA_VIOLATIONS:
        response = assert_refused(
            api, partial(api.post, ACQUIRER, path, body), 422, "invalid_request"
        )
        assert response["details"]["errors"], (path, body)


CHANNEL_SCHEMA_VIOLATIONS: list[tuple[str, Any]] = [
    ("/v1/persons", person_body(1) | {"nickname": "x"}),
    ("/v1/persons", person_body(1) | {"consent": [1]}),
    ("/v1/persons", person_body(1) | {"name": "张" * 65}),
    ("/v1/persons", person_body(1) | {"id_number": "1" * 33}),
    ("/v1/persons", person_body(1) | {"region_code": "31010"}),
    ("/v1/persons", {k: v for k, v in person_body(1).items() if k != "consent"}),
    ("/v1/claims", _claim_item("k", "u1")),  # the key belongs in the header here
    (
        "/v1/claims",
        {
            "channel_user_id": "u1",
            "campaign_id": "Bad Id",
            "round_id": "r1",
            "template_id": "d300-90",
        },
    ),
    (
        "/v1/claims",
        {"channel_user_id": 1, "campaign_id": CAMPAIGN, "round_id": "r1", "template_id": "d300-90"},
    ),
    ("/v1/claims", None),
    ("/v1/claims/batch", {"items": [_claim_item("k", "u1") | {"idempotency_key": ""}]}),
    ("/v1/claims/batch", {"items": [_claim_item("k", "u1") | {"idempotency_key": "k" * 129}]}),
    ("/v1/claims/batch", {"items": "u1"}),
]


def test_channel_schema_violations(api: Api) -> None:
    for path, body in CHANNEL_SCHEMA_VIOLATIONS:
        response = assert_refused(
            api, partial(api.post, "wechat", path, body), 422, "invalid_request"
        )
        assert response["details"]["errors"], (path, body)


def test_invalid_json_and_query(api: Api) -> None:
    api.register(1)
    assert_refused(
        api,
        lambda: api.post("wechat", "/v1/claims", content=b'{"channel_user_id": '),
        422,
        "invalid_request",
    )
    assert_refused(api, lambda: api.wallet("u1", limit=0), 422, "invalid_request")
    assert_refused(api, lambda: api.wallet("u1", limit="many"), 422, "invalid_request")
    assert_refused(api, lambda: api.wallet("u1", cursor="c" * 65), 422, "invalid_request")
    assert_refused(api, lambda: api.wallet("u" * 65), 422, "invalid_request")


@pytest.mark.parametrize(
    ("app_id", "path"),
    [("wechat", "/v1/persons"), ("wechat", "/v1/claims"), (ACQUIRER, "/v1/redemptions")],
)
def test_a_body_over_the_limit_is_413(api: Api, app_id: str, path: str) -> None:
    # The hottest routes answer in front of the framework: they keep the same limit.
    body = b'{"pad": "' + b"x" * 2_000_000 + b'"}'
    refused = assert_refused(
        api, lambda: api.post(app_id, path, content=body), 413, "body_too_large"
    )
    assert refused["request_id"]


def test_unknown_paths_and_methods(api: Api) -> None:
    assert_error(api.client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(api.client.delete("/v1/claims"), 405, "method_not_allowed")
