"""Claim-time risk over HTTP: each rule refusing with its code and nothing issued, a
held claim worked through the review queue (approve issues, reject refuses), the
rules file's maker-checker and its hot reload, the blacklists, who may do what, and
the audit log naming the operator."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from lequan.services import admin, risk_rules
from tests.e2e.conftest import AUTO, CAMPAIGN, Api, OpenApi, assert_error
from tests.factories import dining_config, id_number
from tests.waiting import wait_until

DEVICE = "dev-0000000001"


@pytest.fixture
def risky(open_api: OpenApi) -> Api:
    """The dining campaign live, an analyst (ana), the rules polled every 50 ms."""
    api = open_api(risk_rules_poll_s=0.05)
    api.world.tokens["ana"] = admin.add_operator(api.world.rt, "ana", role="analyst")
    return api


def rules_yaml(version: int, **claim: dict[str, Any]) -> str:
    return yaml.safe_dump({"version": version, "claim": claim, "redemption": {}})


def put_rules(api: Api, version: int, **claim: dict[str, Any]) -> None:
    """Draft (alice, a maker) and approve (bob, a checker) a version of the rules."""
    drafted = api.admin(
        "alice",
        "POST",
        "/v1/admin/risk/rules",
        content=rules_yaml(version, **claim),
        content_type="application/yaml",
    )
    assert drafted.status_code == 201, drafted.text
    approved = api.admin("bob", "POST", f"/v1/admin/risk/rules/{version}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "active"


def claim(
    api: Api, user: str, *, key: str | None = AUTO, template: str = "d300-90", **signals: Any
) -> httpx.Response:
    body = {**api.claim_body(user, template=template), "signals": signals}
    return api.post("wechat", "/v1/claims", body, key=key)


def vouchers(api: Api) -> int:
    with api.engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM vouchers")).scalar_one()
    return int(count)


def audit(api: Api) -> list[tuple[str, str, str, dict[str, Any]]]:
    with api.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT actor, action, target, details_json FROM audit_log ORDER BY seq")
        ).all()
    return [(r.actor, r.action, r.target, json.loads(r.details_json)) for r in rows]


def refused(response: httpx.Response, *codes: str) -> None:
    body = assert_error(response, 403, "risk_refused")
    assert body["details"]["reasons"] == list(codes)


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


# -- each rule, refusing ------------------------------------------------------------------

REFUSE = {"action": "refuse"}


def test_velocity_device_ip_and_subnet(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        velocity_device={"limit": 1, "window_s": 600, **REFUSE},
        velocity_ip={"limit": 2, "window_s": 60, **REFUSE},
        velocity_subnet={"limit": 3, "window_s": 60, **REFUSE},
    )
    users = [api.register(n) for n in range(1, 7)]
    assert ok(claim(api, users[0], device_id=DEVICE, ip="10.0.0.1"), 201)
    refused(claim(api, users[1], device_id=DEVICE, ip="10.0.9.9"), "velocity_device")
    assert ok(claim(api, users[2], device_id="dev-0000000002", ip="10.0.0.1"), 201)
    refused(claim(api, users[3], device_id="dev-0000000003", ip="10.0.0.1"), "velocity_ip")
    # 10.0.0.0/24 has seen 10.0.0.1 three times now: the fourth claim from it is one too many.
    refused(claim(api, users[4], device_id="dev-0000000004", ip="10.0.0.2"), "velocity_subnet")
    assert vouchers(api) == 2
    # Nothing known, nothing fires: a claim without signals is judged on what is known.
    assert ok(claim(api, users[5]), 201)


def test_identities_per_device_and_devices_per_identity(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        identities_per_device={"limit": 1, "window_s": 86400, **REFUSE},
        devices_per_identity={"limit": 1, "window_s": 86400, **REFUSE},
    )
    first, second = api.register(1), api.register(2)
    assert ok(claim(api, first, device_id=DEVICE), 201)
    # The same person on the same phone counts once (the gate refuses the second claim).
    assert ok(claim(api, first, device_id=DEVICE), 409)["code"] == "already_claimed"
    refused(claim(api, second, device_id=DEVICE), "identities_per_device")
    # The same person again on another phone: every attempt counts, allowed or not.
    refused(claim(api, first, device_id="dev-0000000002"), "devices_per_identity")
    assert vouchers(api) == 1


def test_region_mismatch_for_a_local_campaign(risky: Api) -> None:
    api = risky
    put_rules(api, 1, region_mismatch={"level": "province", **REFUSE})
    user, other = api.register(1), api.register(2)
    refused(claim(api, user, network_region="440305"), "region_mismatch")
    assert ok(claim(api, other, network_region="310115"), 201)
    assert vouchers(api) == 1


def test_blacklists_of_persons_devices_and_phones(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        blacklisted_person=REFUSE,
        blacklisted_device=REFUSE,
        blacklisted_phone=REFUSE,
    )
    users = [api.register(n) for n in range(1, 5)]
    person = api.admin(
        "ana",
        "POST",
        "/v1/admin/blacklist",
        json={"id_number": id_number(1), "reason": "scalper"},
    )
    assert ok(person)["added"] is True
    device = api.admin(
        "ana",
        "POST",
        "/v1/admin/risk/blacklist",
        json={"kind": "device", "value": DEVICE, "reason": "farm"},
    )
    assert ok(device)["added"] is True
    phone = api.admin(
        "ana",
        "POST",
        "/v1/admin/risk/blacklist",
        json={"kind": "phone", "value": "13900000003", "reason": "farm"},
    )
    assert ok(phone)["added"] is True
    # The person blacklist is the rule's now: refused as a risk, not as ineligible.
    refused(claim(api, users[0]), "blacklisted_person")
    refused(claim(api, users[1], device_id=DEVICE), "blacklisted_device")
    refused(claim(api, users[2]), "blacklisted_phone")
    assert ok(claim(api, users[3], device_id="dev-0000000009"), 201)
    assert vouchers(api) == 1
    listed = ok(api.admin("ana", "GET", "/v1/admin/risk/blacklist?kind=device"))
    assert [(i["value"], i["reason"], i["created_by"]) for i in listed["items"]] == [
        (DEVICE, "farm", "ana")
    ]
    removed = api.admin(
        "ana",
        "POST",
        "/v1/admin/risk/blacklist/remove",
        json={"kind": "device", "value": DEVICE, "reason": "cleared"},
    )
    assert ok(removed)["removed"] is True
    assert ok(claim(api, users[1], device_id=DEVICE), 201)


def test_new_accounts_and_the_channels_own_risk(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        new_account={"min_before_release_s": 600, **REFUSE},
        channel_risk_high=REFUSE,
    )
    users = [api.register(n) for n in range(1, 4)]
    api.clock.advance(timedelta(seconds=60))  # a minute after the release
    # Opened 61 s ago: 1 s before the release, well under ten minutes.
    refused(claim(api, users[0], account_age_s=61), "new_account")
    refused(claim(api, users[1], account_age_s=86_400, channel_risk="high"), "channel_risk_high")
    assert ok(claim(api, users[2], account_age_s=660, channel_risk="medium"), 201)
    assert vouchers(api) == 1


def test_without_claim_rules_signals_change_nothing(risky: Api) -> None:
    api = risky
    put_rules(api, 1)  # a version with no claim rule: nothing is on
    first, second = api.register(1), api.register(2)
    assert ok(claim(api, first, device_id=DEVICE, channel_risk="high", account_age_s=0), 201)
    assert ok(claim(api, second, device_id=DEVICE, channel_risk="high", account_age_s=0), 201)


# -- the review queue -----------------------------------------------------------------------


def held(response: httpx.Response) -> str:
    body = ok(response, 202)
    assert body["status"] == "held_for_review"
    review_id: str = body["review_id"]
    return review_id


def test_a_held_claim_is_issued_when_an_analyst_approves(
    open_api: OpenApi, database_url: str
) -> None:
    api = open_api(database_url=database_url, risk_rules_poll_s=0.05)
    api.world.tokens["ana"] = admin.add_operator(api.world.rt, "ana", role="analyst")
    put_rules(api, 1, channel_risk_high={"action": "review"})
    user = api.register(1)
    first = claim(api, user, key="k-held", channel_risk="high", device_id=DEVICE)
    review_id = held(first)
    assert vouchers(api) == 0
    # A retry replays the same answer, whatever signals it sends now.
    again = claim(api, user, key="k-held", channel_risk="low")
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"

    queue = ok(api.admin("ana", "GET", "/v1/admin/reviews?status=pending&kind=claim"))
    assert [i["review_id"] for i in queue["items"]] == [review_id]
    item = ok(api.admin("bob", "GET", f"/v1/admin/reviews/{review_id}"))  # a checker reads
    assert item["reasons"] == [
        {"code": "channel_risk_high", "action": "review", "figures": {"channel_risk": "high"}}
    ]
    assert item["subject"]["channel_user_id"] == user
    assert item["subject"]["signals"] == {"channel_risk": "high", "device_id": DEVICE}
    assert (item["status"], item["rules_version"], item["campaign_id"]) == ("pending", 1, CAMPAIGN)

    approved = ok(
        api.admin(
            "ana", "POST", f"/v1/admin/reviews/{review_id}/approve", json={"reason": "known user"}
        )
    )
    assert (approved["status"], approved["decided_by"], approved["outcome"]) == (
        "approved",
        "ana",
        "issued",
    )
    voucher_id = approved["outcome_detail"]["voucher_id"]
    wallet = ok(api.wallet(user))
    assert [v["voucher_id"] for v in wallet["items"]] == [voucher_id]
    # Decided once: a second approval, or a rejection, is refused.
    for verb in ("approve", "reject"):
        assert_error(
            api.admin("ana", "POST", f"/v1/admin/reviews/{review_id}/{verb}", json={"reason": "x"}),
            409,
            "review_state",
        )
    assert api.check()["ok"] is True
    assert ("ana", "review.approve", review_id) in [(a, b, c) for a, b, c, _ in audit(api)]


def test_a_rejected_claim_is_never_issued(risky: Api) -> None:
    api = risky
    put_rules(api, 1, channel_risk_high={"action": "review"})
    user = api.register(1)
    review_id = held(claim(api, user, key="k-1", channel_risk="high"))
    rejected = ok(
        api.admin("ana", "POST", f"/v1/admin/reviews/{review_id}/reject", json={"reason": "farm"})
    )
    assert (rejected["status"], rejected["decision_reason"], rejected["outcome"]) == (
        "rejected",
        "farm",
        None,
    )
    assert claim(api, user, key="k-1").status_code == 202  # the held answer stays
    assert vouchers(api) == 0
    assert ok(api.admin("ana", "GET", "/v1/admin/reviews?status=pending"))["items"] == []
    assert ("ana", "review.reject", review_id) in [(a, b, c) for a, b, c, _ in audit(api)]


def test_an_approval_may_still_be_refused_and_says_why(risky: Api) -> None:
    api = risky
    put_rules(api, 1, channel_risk_high={"action": "review"})
    user = api.register(1)
    review_id = held(claim(api, user, channel_risk="high"))
    # Meanwhile the person claimed without the flag, and got the round's voucher.
    assert ok(claim(api, user), 201)
    approved = ok(
        api.admin("ana", "POST", f"/v1/admin/reviews/{review_id}/approve", json={"reason": "ok"})
    )
    assert (approved["status"], approved["outcome"]) == ("approved", "already_claimed")
    assert vouchers(api) == 1  # one per person


def test_a_batch_answers_held_and_refused_items(risky: Api) -> None:
    api = risky
    put_rules(
        api, 1, channel_risk_high={"action": "review"}, blacklisted_device={"action": "refuse"}
    )
    ok(
        api.admin(
            "ana",
            "POST",
            "/v1/admin/risk/blacklist",
            json={"kind": "device", "value": DEVICE, "reason": "farm"},
        )
    )
    users = [api.register(n) for n in range(1, 4)]
    items = [
        {**api.claim_body(users[0]), "idempotency_key": "b-0", "signals": {"channel_risk": "high"}},
        {**api.claim_body(users[1]), "idempotency_key": "b-1", "signals": {"device_id": DEVICE}},
        {**api.claim_body(users[2]), "idempotency_key": "b-2", "signals": {}},
    ]
    body = ok(api.post("wechat", "/v1/claims/batch", {"items": items}, key=None))
    results = body["results"]
    assert [r["outcome"] for r in results] == ["held_for_review", "risk_refused", "issued"]
    assert [r["status_code"] for r in results] == [202, 403, 201]
    assert results[0]["review_id"].startswith("rv")
    assert results[1]["error"]["details"] == {"reasons": ["blacklisted_device"]}
    assert "review_id" not in results[2]
    assert body["outcomes"] == {"held_for_review": 1, "risk_refused": 1, "issued": 1}
    again = ok(api.post("wechat", "/v1/claims/batch", {"items": items[:1]}, key=None))
    assert again["results"][0]["replayed"] is True
    assert again["results"][0]["review_id"] == results[0]["review_id"]


# -- the rules file ---------------------------------------------------------------------------


def test_a_new_version_changes_decisions_without_a_restart(risky: Api) -> None:
    api = risky
    put_rules(api, 1, channel_risk_high=REFUSE)
    users = [api.register(n) for n in range(1, 4)]
    refused(claim(api, users[0], channel_risk="high"), "channel_risk_high")
    # Approved elsewhere (another process, the CLI): this one finds it by polling.
    risk_rules.draft_rules(api.world.rt, rules_yaml(2), actor="alice")
    risk_rules.approve_rules(api.world.rt, 2, actor="bob")
    rulebook = api.world.platform.risk
    assert rulebook is not None
    wait_until(
        lambda: rulebook.current.version == 2,
        what="the process put version 2 in force",
    )
    assert ok(claim(api, users[0], channel_risk="high"), 201)
    listed = ok(api.admin("vera", "GET", "/v1/admin/risk/rules"))  # any role reads the rules
    assert listed["active_version"] == 2
    assert [(v["version"], v["status"]) for v in listed["versions"]] == [
        (2, "active"),
        (1, "retired"),
    ]
    assert listed["versions"][1]["claim_rules"] == ["channel_risk_high"]


def test_an_invalid_file_is_refused_with_its_path_and_the_rules_stay(risky: Api) -> None:
    api = risky
    put_rules(api, 1, channel_risk_high=REFUSE)
    bad = api.admin(
        "alice",
        "POST",
        "/v1/admin/risk/rules",
        content="version: 2\nclaim:\n  velocity_ip: {limit: -1, window_s: 60}\n",
        content_type="application/yaml",
    )
    body = assert_error(bad, 422, "invalid_risk_rules")
    assert [e["field"] for e in body["details"]["errors"]] == ["claim.velocity_ip.limit"]
    refused(claim(api, api.register(1), channel_risk="high"), "channel_risk_high")
    assert ok(api.admin("vera", "GET", "/v1/admin/risk/rules"))["active_version"] == 1
    # A version not above the latest is refused too.
    stale = api.admin(
        "alice",
        "POST",
        "/v1/admin/risk/rules",
        content=rules_yaml(1),
        content_type="application/yaml",
    )
    assert_error(stale, 409, "risk_rules_version")


def test_maker_checker_on_the_rules(risky: Api) -> None:
    api = risky
    drafted = api.admin(
        "bob", "POST", "/v1/admin/risk/rules", content=rules_yaml(1), content_type="text/yaml"
    )
    assert drafted.status_code == 201, drafted.text
    assert_error(
        api.admin("bob", "POST", "/v1/admin/risk/rules/1/approve"), 403, "maker_cannot_approve"
    )
    assert_error(api.admin("ana", "POST", "/v1/admin/risk/rules/1/approve"), 403, "forbidden")
    assert_error(api.admin("alice", "POST", "/v1/admin/risk/rules/9/approve"), 403, "forbidden")
    api.world.tokens["cora"] = admin.add_operator(api.world.rt, "cora", role="checker")
    assert_error(
        api.admin("cora", "POST", "/v1/admin/risk/rules/9/approve"), 404, "risk_rules_not_found"
    )
    assert ok(api.admin("cora", "POST", "/v1/admin/risk/rules/1/approve"))["approved_by"] == "cora"
    assert_error(
        api.admin("cora", "POST", "/v1/admin/risk/rules/1/approve"), 409, "risk_rules_state"
    )
    actions = [(a, b, c) for a, b, c, _ in audit(api)]
    assert ("bob", "risk_rules.draft", "1") in actions
    assert ("cora", "risk_rules.approve", "1") in actions


# -- who may do what ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/admin/reviews", None),
        ("GET", "/v1/admin/reviews/rv1", None),
        ("POST", "/v1/admin/reviews/rv1/approve", {"reason": "x"}),
        ("POST", "/v1/admin/reviews/rv1/reject", {"reason": "x"}),
        ("GET", "/v1/admin/risk/blacklist?kind=device", None),
        ("POST", "/v1/admin/risk/blacklist", {"kind": "device", "value": DEVICE, "reason": "x"}),
        (
            "POST",
            "/v1/admin/risk/blacklist/remove",
            {"kind": "device", "value": DEVICE, "reason": "x"},
        ),
    ],
)
def test_a_viewer_is_refused(risky: Api, method: str, path: str, body: Any) -> None:
    assert_error(risky.admin("vera", method, path, json=body), 403, "forbidden")


def test_only_an_analyst_decides_reviews(risky: Api) -> None:
    api = risky
    put_rules(api, 1, channel_risk_high={"action": "review"})
    review_id = held(claim(api, api.register(1), channel_risk="high"))
    for operator in ("alice", "bob"):  # the rules' maker and checker
        assert_error(
            api.admin(
                operator, "POST", f"/v1/admin/reviews/{review_id}/approve", json={"reason": "x"}
            ),
            403,
            "forbidden",
        )
    assert_error(api.admin("alice", "GET", "/v1/admin/reviews"), 403, "forbidden")
    assert_error(api.admin("ana", "GET", "/v1/admin/reviews/rv-none"), 404, "review_not_found")
    assert_error(
        api.admin("ana", "POST", f"/v1/admin/reviews/{review_id}/approve", json={"reason": ""}),
        422,
        "invalid_request",
    )
    assert vouchers(api) == 0


def test_bad_blacklist_input(risky: Api) -> None:
    api = risky
    short = api.admin(
        "ana",
        "POST",
        "/v1/admin/risk/blacklist",
        json={"kind": "device", "value": "short", "reason": "x"},
    )
    assert_error(short, 422, "invalid_device_id")
    phone = api.admin(
        "ana",
        "POST",
        "/v1/admin/risk/blacklist",
        json={"kind": "phone", "value": "12", "reason": "x"},
    )
    assert_error(phone, 422, "invalid_phone")
    kind = api.admin(
        "ana",
        "POST",
        "/v1/admin/risk/blacklist",
        json={"kind": "ip", "value": DEVICE, "reason": "x"},
    )
    assert_error(kind, 422, "invalid_request")


def test_other_campaigns_rules_apply_too(open_api: OpenApi) -> None:
    """A nationwide campaign (no regions): region_mismatch never fires there."""
    config = dining_config(eligibility={"regions": [], "check": "location"})
    api = open_api(config, risk_rules_poll_s=0.05)
    put_rules(api, 1, region_mismatch=REFUSE)
    assert ok(claim(api, api.register(1), network_region="440305"), 201)


def test_a_sold_out_pool_is_refused_before_the_rules_count_its_flood(
    open_api: OpenApi,
) -> None:
    """After a sell-out, each fresh look at the campaign forgives the process's sold-out
    flag; the gate is asked again before the rules judge the next claims, so a family
    phone's later presses hear sold_out, not a velocity refusal their losing presses
    would have earned."""
    api = open_api(
        dining_config(stock={"wechat": {"d300-90": 1}}),
        risk_rules_poll_s=0.05,
        campaign_cache_ttl_s=0,  # the campaign looked at afresh for every call
    )
    put_rules(api, 1, velocity_device={"limit": 2, "window_s": 600, **REFUSE})
    users = [api.register(n) for n in range(1, 6)]
    assert ok(claim(api, users[0], device_id=DEVICE), 201)
    for user in users[1:]:
        assert_error(claim(api, user, device_id=DEVICE), 409, "sold_out")
    assert vouchers(api) == 1
