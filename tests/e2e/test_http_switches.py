"""The operators' switches over HTTP: a campaign's redemptions paused apart from its
claims, a merchant suspended and reinstated. Each switch is a maker's or a
checker's, audited with its reason; a refused pull changes nothing, and a
refused redemption neither.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.redis_gate import RedisGate
from lequan.ports import ClaimGate
from tests.e2e.conftest import (
    CAMPAIGN,
    Api,
    OpenApi,
    assert_error,
    assert_refused,
    merchants_csv,
)

CAFE = "m-cafe-001"


def _redemptions(api: Api, verb: str, operator: str = "bob", **body: Any) -> httpx.Response:
    return api.admin(
        operator,
        "POST",
        f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/{verb}",
        json=body or None,
    )


def _merchant(api: Api, verb: str, operator: str = "bob", merchant: str = CAFE, **body: Any) -> Any:
    return api.admin(operator, "POST", f"/v1/admin/merchants/{merchant}/{verb}", json=body)


def _campaign(api: Api) -> dict[str, Any]:
    response = api.admin("vera", "GET", f"/v1/admin/campaigns/{CAMPAIGN}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _audit(api: Api) -> list[tuple[str, str, str, dict[str, Any]]]:
    with api.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT actor, action, target, details_json FROM audit_log ORDER BY seq")
        ).all()
    return [(r.actor, r.action, r.target, json.loads(r.details_json)) for r in rows]


def _holder(api: Api, n: int = 1) -> tuple[str, str]:
    """Person ``n`` registered, holding a d300-90 voucher: (user, voucher_id)."""
    user = api.register(n)
    return user, api.claim_voucher(user)["voucher_id"]


def _ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def stack_gate(database_url: str, request: pytest.FixtureRequest) -> ClaimGate:
    """SQLite gets the in-process gate, PostgreSQL gets Redis."""
    if database_url.startswith("sqlite"):
        return MemoryGate()
    redis_url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return RedisGate.from_url(redis_url, key_prefix=prefix)


def test_both_switches_on_each_stack(
    database_url: str, stack_gate: ClaimGate, open_api: OpenApi
) -> None:
    api = open_api(database_url=database_url, gate=stack_gate)
    user, voucher = _holder(api)
    _ok(_redemptions(api, "pause", reason="drill"), 200)
    assert_refused(api, lambda: api.redeem(voucher, user), 409, "redemptions_paused")
    _ok(_redemptions(api, "resume"), 200)
    _ok(_merchant(api, "suspend", reason="drill"), 200)
    assert_refused(api, lambda: api.redeem(voucher, user), 409, "merchant_suspended")
    _ok(_merchant(api, "reinstate", reason="drill over"), 200)
    assert _ok(api.redeem(voucher, user))["voucher_state"] == "redeemed"
    assert [(a, t) for _, a, t, _ in _audit(api)[-4:]] == [
        ("campaign.redemptions_pause", CAMPAIGN),
        ("campaign.redemptions_resume", CAMPAIGN),
        ("merchant.suspend", CAFE),
        ("merchant.reinstate", CAFE),
    ]


# -- a campaign's redemptions -------------------------------------------------------------


def test_paused_redemptions_refuse_every_spending_and_change_nothing(api: Api) -> None:
    user, voucher = _holder(api)
    paused = _ok(_redemptions(api, "pause", reason="budget check"), 200)
    assert (paused["id"], paused["redemptions_paused"], paused["status"]) == (
        CAMPAIGN,
        True,
        "live",
    )
    assert _campaign(api)["redemptions_paused"] is True

    assert_refused(api, lambda: api.redeem(voucher, user), 409, "redemptions_paused")
    assert_refused(
        api, lambda: api.redeem(voucher, user, capture="lock"), 409, "redemptions_paused"
    )
    # A quote offers nothing that would be refused.
    assert _ok(api.quote(user), 200)["quotes"] == []
    assert api.voucher_state(voucher) == "issued"

    resumed = _ok(_redemptions(api, "resume", reason="budget confirmed"), 200)
    assert resumed["redemptions_paused"] is False
    assert [q["voucher"]["voucher_id"] for q in _ok(api.quote(user), 200)["quotes"]] == [voucher]
    redeemed = _ok(api.redeem(voucher, user))
    assert redeemed["voucher_state"] == "redeemed"
    assert api.check()["ok"]


def test_claims_go_on_while_only_redemptions_are_paused_and_the_other_way_round(
    api: Api,
) -> None:
    user, voucher = _holder(api)
    _ok(_redemptions(api, "pause"), 200)
    # Redemptions paused, claims open: another person still gets a voucher.
    _holder(api, 2)
    assert _campaign(api)["status"] == "live"

    _ok(_redemptions(api, "resume"), 200)
    paused = _ok(api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/pause"), 200)
    assert (paused["status"], paused["redemptions_paused"]) == ("paused", False)
    # Claims paused, redemptions open: the voucher is spent, the newcomer refused.
    api.register(3)
    assert_error(api.claim("u3"), 409, "campaign_paused")
    assert _ok(api.redeem(voucher, user))["voucher_state"] == "redeemed"
    # Both switches on, then the claims' lifted: redemptions stay paused.
    _ok(_redemptions(api, "pause"), 200)
    resumed = _ok(api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/resume"), 200)
    assert (resumed["status"], resumed["redemptions_paused"]) == ("live", True)
    assert _ok(api.claim("u3"))["voucher"]["template_id"] == "d300-90"
    _, other = _holder(api, 4)
    assert_refused(api, lambda: api.redeem(other, "u4"), 409, "redemptions_paused")


def test_an_authorization_taken_before_the_pause_is_confirmed_or_voided(api: Api) -> None:
    user, first = _holder(api, 1)
    other_user, second = _holder(api, 2)
    held = _ok(api.redeem(first, user, capture="lock"))
    released = _ok(api.redeem(second, other_user, capture="lock"))
    _ok(_redemptions(api, "pause"), 200)

    confirmed = _ok(api.follow_up(held["redemption_id"], "confirm"), 200)
    assert (confirmed["status"], confirmed["voucher_state"]) == ("redeemed", "redeemed")
    voided = _ok(api.follow_up(released["redemption_id"], "void"), 200)
    assert voided["voucher_state"] == "issued"
    # And what gives back goes on: the spent voucher is refunded and usable again...
    refunded = _ok(
        api.follow_up(confirmed["redemption_id"], "refunds", {"refund_amount_fen": 30000})
    )
    assert refunded["voucher_state"] == "issued"
    # ...but not spent again while the switch is on.
    assert_refused(api, lambda: api.redeem(first, user), 409, "redemptions_paused")
    assert api.check()["ok"]


def test_a_switch_pulled_here_is_seen_at_once_whatever_the_cache(open_api: OpenApi) -> None:
    """The campaign and merchant caches of the one-step writer hold rows for a minute
    here; this process's own switch drops them at once (``rt.campaign_changed``)."""
    api = open_api(campaign_cache_ttl_s=60)
    user, voucher = _holder(api)
    # The writer caches the campaign and the merchant with a refused redemption...
    assert_error(api.redeem(voucher, user, amount_fen=100), 409, "below_threshold")
    _ok(_redemptions(api, "pause"), 200)
    assert_refused(api, lambda: api.redeem(voucher, user), 409, "redemptions_paused")
    _ok(_redemptions(api, "resume"), 200)
    _ok(_merchant(api, "suspend", reason="probe"), 200)
    assert_refused(api, lambda: api.redeem(voucher, user), 409, "merchant_suspended")
    _ok(_merchant(api, "reinstate", reason="probe over"), 200)
    assert _ok(api.redeem(voucher, user))["voucher_state"] == "redeemed"


def test_pulling_a_switch_twice_changes_nothing_more_and_both_pulls_are_audited(
    api: Api,
) -> None:
    _ok(_redemptions(api, "pause", "alice", reason="incident 42"), 200)
    again = _ok(_redemptions(api, "pause", "bob"), 200)
    assert again["redemptions_paused"] is True
    _ok(_redemptions(api, "resume", "bob", reason="incident 42 closed"), 200)
    _ok(_redemptions(api, "resume", "alice"), 200)
    assert _audit(api)[-4:] == [
        (
            "alice",
            "campaign.redemptions_pause",
            CAMPAIGN,
            {"changed": True, "reason": "incident 42"},
        ),
        ("bob", "campaign.redemptions_pause", CAMPAIGN, {"changed": False}),
        (
            "bob",
            "campaign.redemptions_resume",
            CAMPAIGN,
            {"changed": True, "reason": "incident 42 closed"},
        ),
        ("alice", "campaign.redemptions_resume", CAMPAIGN, {"changed": False}),
    ]


# -- a merchant ---------------------------------------------------------------------------


def test_a_suspended_merchant_takes_no_voucher_until_reinstated(api: Api) -> None:
    user, voucher = _holder(api)
    suspended = _ok(_merchant(api, "suspend", reason="套现 reported by the district"), 200)
    assert suspended["suspended"] is True
    assert suspended["suspension"]["reason"] == "套现 reported by the district"
    assert suspended["suspension"]["suspended_by"] == "bob"
    assert _ok(api.admin("vera", "GET", f"/v1/admin/merchants/{CAFE}"), 200) == suspended

    assert_refused(api, lambda: api.quote(user), 409, "merchant_suspended")
    assert_refused(api, lambda: api.redeem(voucher, user), 409, "merchant_suspended")
    assert_refused(
        api, lambda: api.redeem(voucher, user, capture="lock"), 409, "merchant_suspended"
    )
    # Whatever the voucher: the merchant learns nothing of it.
    assert_refused(api, lambda: api.redeem("v-nope", user), 409, "merchant_suspended")
    # Another merchant of the same campaign is untouched.
    assert api.redeem(voucher, user, merchant="m-noodle-002").status_code == 201

    _, second = _holder(api, 2)
    reinstated = _ok(_merchant(api, "reinstate", reason="cleared after inspection"), 200)
    assert (reinstated["suspended"], reinstated["suspension"]) == (False, None)
    assert _ok(api.redeem(second, "u2"))["voucher_state"] == "redeemed"
    assert _audit(api)[-2:] == [
        (
            "bob",
            "merchant.suspend",
            CAFE,
            {"changed": True, "reason": "套现 reported by the district"},
        ),
        (
            "bob",
            "merchant.reinstate",
            CAFE,
            {"changed": True, "reason": "cleared after inspection"},
        ),
    ]


def test_a_suspended_merchant_captures_nothing_but_may_void(api: Api) -> None:
    user, first = _holder(api, 1)
    other_user, second = _holder(api, 2)
    held = _ok(api.redeem(first, user, capture="lock"))
    released = _ok(api.redeem(second, other_user, capture="lock"))
    _ok(_merchant(api, "suspend", reason="captures in doubt"), 200)
    assert_refused(
        api, lambda: api.follow_up(held["redemption_id"], "confirm"), 409, "merchant_suspended"
    )
    assert api.voucher_state(first) == "locked"
    voided = _ok(api.follow_up(released["redemption_id"], "void"), 200)
    assert voided["voucher_state"] == "issued"
    # Reinstated within the lock's time, the capture goes through.
    _ok(_merchant(api, "reinstate", reason="cleared"), 200)
    assert _ok(api.follow_up(held["redemption_id"], "confirm"), 200)["status"] == "redeemed"
    assert api.check()["ok"]


def test_a_merchant_import_does_not_reinstate_a_suspended_merchant(api: Api) -> None:
    _ok(_merchant(api, "suspend", reason="under inspection"), 200)
    imported = api.admin(
        "alice", "POST", "/v1/admin/merchants", content=merchants_csv(), content_type="text/csv"
    )
    assert imported.status_code == 200, imported.text
    after = _ok(api.admin("vera", "GET", f"/v1/admin/merchants/{CAFE}"), 200)
    assert after["suspended"] is True
    assert after["suspension"]["reason"] == "under inspection"


# -- who may, and what is refused ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/pause", None),
        (f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/resume", {"reason": "why"}),
        (f"/v1/admin/merchants/{CAFE}/suspend", {"reason": "why"}),
        (f"/v1/admin/merchants/{CAFE}/reinstate", {"reason": "why"}),
    ],
    ids=["pause", "resume", "suspend", "reinstate"],
)
def test_a_viewer_pulls_no_switch_and_nothing_changes(
    api: Api, path: str, body: dict[str, str] | None
) -> None:
    if path.endswith("resume"):
        _ok(_redemptions(api, "pause"), 200)
    if path.endswith("reinstate"):
        _ok(_merchant(api, "suspend", reason="before"), 200)
    campaign, merchant, audit = (
        _campaign(api),
        api.admin("vera", "GET", f"/v1/admin/merchants/{CAFE}").json(),
        _audit(api),
    )
    assert_refused(api, lambda: api.admin("vera", "POST", path, json=body), 403, "forbidden")
    assert _campaign(api) == campaign
    assert api.admin("vera", "GET", f"/v1/admin/merchants/{CAFE}").json() == merchant
    assert _audit(api) == audit


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/admin/campaigns/no-such/redemptions/pause", None, 404, "campaign_not_found"),
        ("/v1/admin/campaigns/NO_SUCH/redemptions/pause", None, 422, "invalid_request"),
        ("/v1/admin/merchants/m-nope/suspend", {"reason": "x"}, 404, "merchant_not_found"),
        ("/v1/admin/merchants/m-nope/reinstate", {"reason": "x"}, 404, "merchant_not_found"),
        ("/v1/admin/merchants/m.bad/suspend", {"reason": "x"}, 422, "invalid_request"),
        (f"/v1/admin/merchants/{'m' * 65}/suspend", {"reason": "x"}, 422, "invalid_request"),
        (f"/v1/admin/merchants/{CAFE}/suspend", {}, 422, "invalid_request"),
        (f"/v1/admin/merchants/{CAFE}/reinstate", None, 422, "invalid_request"),
        (f"/v1/admin/merchants/{CAFE}/suspend", {"reason": ""}, 422, "invalid_request"),
        (f"/v1/admin/merchants/{CAFE}/suspend", {"reason": "x" * 201}, 422, "invalid_request"),
        (f"/v1/admin/merchants/{CAFE}/suspend", {"reason": "a\nb"}, 422, "invalid_request"),
        (f"/v1/admin/merchants/{CAFE}/suspend", {"reason": "   "}, 422, "invalid_reason"),
        (f"/v1/admin/merchants/{CAFE}/suspend", {"reason": 7}, 422, "invalid_request"),
        (
            f"/v1/admin/merchants/{CAFE}/suspend",
            {"reason": "x", "by": "me"},
            422,
            "invalid_request",
        ),
        (
            f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/pause",
            {"reason": "x" * 201},
            422,
            "invalid_request",
        ),
        (f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/pause", [], 422, "invalid_request"),
    ],
)
def test_bad_switch_requests_are_refused_with_their_code(
    api: Api, path: str, body: Any, status: int, code: str
) -> None:
    audit = _audit(api)
    assert_refused(api, lambda: api.admin("bob", "POST", path, json=body), status, code)
    assert _audit(api) == audit
    assert _campaign(api)["redemptions_paused"] is False


def test_a_body_that_is_not_json_is_refused(api: Api) -> None:
    for path in (
        f"/v1/admin/campaigns/{CAMPAIGN}/redemptions/pause",
        f"/v1/admin/merchants/{CAFE}/suspend",
    ):
        sent = api.admin("bob", "POST", path, content="pause!", content_type="application/json")
        assert_error(sent, 422, "invalid_request")
    assert _campaign(api)["redemptions_paused"] is False


def test_an_unknown_merchant_is_not_found_and_any_role_reads_one(api: Api) -> None:
    assert_error(api.admin("vera", "GET", "/v1/admin/merchants/m-nope"), 404, "merchant_not_found")
    found = _ok(api.admin("vera", "GET", f"/v1/admin/merchants/{CAFE}"), 200)
    assert found == {
        "id": CAFE,
        "name": "静安咖啡馆",
        "mcc": "5812",
        "region_code": "310106",
        "modes": ["in_store"],
        "acquirer_id": "acq-unionpay",
        "campaigns": [CAMPAIGN],
        "suspended": False,
        "suspension": None,
    }
