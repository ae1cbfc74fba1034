"""The admin API over HTTP: Bearer operator tokens, the roles maker, checker
and viewer, maker-checker approval and the campaign lifecycle, merchants,
app credentials and the blacklist.
"""

from __future__ import annotations

from datetime import timedelta

import httpx

from tests.e2e.conftest import (
    CAMPAIGN,
    Api,
    OpenApi,
    assert_error,
    campaign_yaml,
    merchants_csv,
    person_body,
)
from tests.factories import T0, dining_config, id_number


def _import(api: Api, operator: str = "alice", text: str | None = None) -> httpx.Response:
    return api.admin(
        operator,
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(dining_config()) if text is None else text,
        content_type="application/yaml",
    )


def _act(api: Api, operator: str, action: str) -> httpx.Response:
    return api.admin(operator, "POST", f"/v1/admin/campaigns/{CAMPAIGN}/{action}")


def _status(api: Api) -> str:
    response = api.admin("vera", "GET", f"/v1/admin/campaigns/{CAMPAIGN}")
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status


def test_operators_must_present_a_valid_token(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    assert_error(api.client.get("/v1/admin/campaigns"), 401, "unauthenticated")
    wrong = {"Authorization": "Bearer lqo_not-a-token"}
    assert_error(api.client.get("/v1/admin/campaigns", headers=wrong), 401, "unauthenticated")
    basic = {"Authorization": "Basic YWxpY2U6cHc="}
    assert_error(api.client.get("/v1/admin/campaigns", headers=basic), 401, "unauthenticated")
    # A channel's signature is no operator token.
    assert_error(
        api.client.get("/v1/admin/campaigns", auth=api.auth("wechat")), 401, "unauthenticated"
    )
    listed = api.admin("vera", "GET", "/v1/admin/campaigns")
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"items": []}


def test_import_a_campaign_from_yaml(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    # A viewer drafts nothing (makers and checkers draft).
    assert_error(_import(api, "vera"), 403, "forbidden")
    created = _import(api)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["status"], body["drafted_by"]) == (CAMPAIGN, "draft", "alice")
    assert body["approved_by"] is None
    assert body["budget_fen"] == 50_000_000_000
    assert [r["round_id"] for r in body["rounds"]] == ["r1", "r2", "r3"]
    assert body["rounds"][0]["release_at"] == T0.isoformat()
    assert_error(_import(api), 409, "campaign_exists")
    # Operators of every role read.
    assert api.admin("vera", "GET", "/v1/admin/campaigns").json()["items"][0]["id"] == CAMPAIGN
    assert_error(api.admin("vera", "GET", "/v1/admin/campaigns/no-such"), 404, "campaign_not_found")


def test_a_broken_campaign_file_names_its_problems(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    before = api.snapshot()
    assert_error(_import(api, text="id: [unclosed"), 422, "invalid_campaign_config")
    assert_error(_import(api, text="- a list"), 422, "invalid_campaign_config")
    broken = campaign_yaml(dining_config()).replace("budget_fen: 50000000000", "budget_fen: -1")
    body = assert_error(_import(api, text=broken), 422, "invalid_campaign_config")
    assert body["details"]["errors"][0]["field"] == "budget_fen"
    not_utf8 = api.client.post(
        "/v1/admin/campaigns",
        content=b"id: \xff\xfe",
        headers={
            "Authorization": f"Bearer {api.world.tokens['alice']}",
            "Content-Type": "application/yaml",
        },
    )
    assert_error(not_utf8, 422, "invalid_encoding")
    # A campaign file is at most 1 MB, below the 2 MB every request may carry.
    assert_error(_import(api, text="#" * 1_100_000), 413, "body_too_large")
    assert api.snapshot() == before
    assert api.admin("vera", "GET", "/v1/admin/campaigns").json() == {"items": []}


def test_approval_is_for_a_checker_who_did_not_draft(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    assert _import(api).status_code == 201
    before = api.snapshot()
    assert_error(_act(api, "alice", "approve"), 403, "maker_cannot_approve")
    assert_error(_act(api, "vera", "approve"), 403, "forbidden")
    assert _status(api) == "draft"
    assert api.snapshot() == before
    approved = _act(api, "bob", "approve")
    assert approved.status_code == 200, approved.text
    assert (approved.json()["status"], approved.json()["approved_by"]) == ("approved", "bob")
    assert_error(_act(api, "bob", "approve"), 409, "campaign_state")


def test_the_drafter_approving_is_refused_as_forbidden(open_api: OpenApi) -> None:
    # An authorization refusal, like a viewer's: 403, whatever the campaign's state allows.
    api = open_api(campaign=False)
    assert _import(api).status_code == 201
    assert_error(_act(api, "alice", "approve"), 403, "maker_cannot_approve")


def test_a_checker_who_drafted_cannot_approve_their_own_draft(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    assert _import(api, "bob").status_code == 201
    assert_error(_act(api, "bob", "approve"), 403, "maker_cannot_approve")
    assert _status(api) == "draft"


def test_the_campaign_lifecycle(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    assert _import(api).status_code == 201
    # A draft cannot go live, pause or start a round before approval.
    for action in ("activate", "pause", "resume"):
        assert_error(_act(api, "bob", action), 409, "campaign_state")
    assert_error(_act(api, "bob", "rounds/r1/start"), 409, "campaign_state")
    assert _act(api, "bob", "approve").status_code == 200
    # A viewer operates nothing.
    for action in ("activate", "pause", "resume", "end", "rounds/r1/start"):
        assert_error(_act(api, "vera", action), 403, "forbidden")
    steps = [
        ("alice", "activate", "live"),
        ("bob", "pause", "paused"),
        ("alice", "resume", "live"),
        ("alice", "pause", "paused"),
        ("bob", "end", "ended"),
    ]
    for operator, action, status in steps:
        response = _act(api, operator, action)
        assert response.status_code == 200, (action, response.text)
        assert response.json()["status"] == status
    for action in ("activate", "pause", "resume", "end"):
        assert_error(_act(api, "bob", action), 409, "campaign_state")
    assert_error(
        api.admin("bob", "POST", "/v1/admin/campaigns/no-such/pause"), 404, "campaign_not_found"
    )


def test_start_a_round_now(api: Api) -> None:
    user = api.register(1)
    assert_error(api.claim(user, round_id="r2"), 409, "not_started")
    started = _act(api, "bob", "rounds/r2/start")
    assert started.status_code == 200, started.text
    r2 = next(r for r in started.json()["rounds"] if r["round_id"] == "r2")
    assert r2["release_at"] == api.clock.now().isoformat()
    assert r2["ends_at"] == (T0 + timedelta(days=14, seconds=-1)).isoformat()
    assert api.claim(user, round_id="r2").status_code == 201
    assert_error(_act(api, "bob", "rounds/r9/start"), 404, "round_not_found")
    # A round that is over cannot be started again.
    api.clock.advance(timedelta(days=8))
    assert_error(_act(api, "alice", "rounds/r1/start"), 409, "round_ended")


def test_starting_a_round_makes_an_approved_campaign_live(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    assert _import(api).status_code == 201
    assert _act(api, "bob", "approve").status_code == 200
    started = _act(api, "alice", "rounds/r1/start")
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "live"
    api.register(1)
    assert api.claim("u1").status_code == 201


def test_import_merchants_from_csv(open_api: OpenApi) -> None:
    api = open_api(campaign=False)
    assert _import(api).status_code == 201

    def upload(operator: str, text: str) -> httpx.Response:
        return api.admin(
            operator, "POST", "/v1/admin/merchants", content=text, content_type="text/csv"
        )

    assert_error(upload("vera", merchants_csv()), 403, "forbidden")
    assert_error(upload("bob", merchants_csv()), 403, "forbidden")
    assert_error(upload("alice", "id,name\nm1,x\n"), 422, "invalid_merchant_file")
    header = "merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns\n"
    bad_rows = [
        "m-1,名,58120,310104,in_store,acq-unionpay,sh-dining-2024\n",
        "m-1,名,5812,990000,in_store,acq-unionpay,sh-dining-2024\n",
        "m-1,名,5812,310104,by_post,acq-unionpay,sh-dining-2024\n",
        "m-1,名,5812,310104,in_store,acq-unionpay,no-such-campaign\n",
    ]
    for row in bad_rows:
        body = assert_error(upload("alice", header + row), 422, "invalid_merchant_file")
        assert body["message"], row
    imported = upload("alice", merchants_csv())
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"imported": 6}
    # Importing again updates in place.
    assert upload("alice", merchants_csv()).json() == {"imported": 6}


def test_register_an_app_and_sign_with_its_secret(api: Api) -> None:
    new_app = {"app_id": "jdpay", "kind": "channel", "name": "JD Pay"}
    assert_error(api.admin("vera", "POST", "/v1/admin/apps", json=new_app), 403, "forbidden")
    assert_error(api.admin("bob", "POST", "/v1/admin/apps", json=new_app), 403, "forbidden")
    created = api.admin("alice", "POST", "/v1/admin/apps", json=new_app)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["app_id"], body["kind"], body["name"]) == ("jdpay", "channel", "JD Pay")
    secret = body["secret"]
    assert secret.startswith("lqs_")
    # Shown once: a second registration is refused without it.
    again = assert_error(
        api.admin("alice", "POST", "/v1/admin/apps", json=new_app), 409, "app_exists"
    )
    assert secret not in str(again)
    api.world.secrets["jdpay"] = secret
    registered = api.post("jdpay", "/v1/persons", person_body(1, user="jd-1"))
    assert registered.status_code == 201, registered.text
    for bad in (
        {"app_id": "x", "kind": "channel", "name": "too short an id"},
        {"app_id": "ok-id", "kind": "bank", "name": "n"},
        {"app_id": "ok-id", "kind": "channel", "name": ""},
        {"app_id": "ok-id", "kind": "channel", "name": "n", "secret": "mine"},
    ):
        response = api.admin("alice", "POST", "/v1/admin/apps", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["code"] in ("invalid_request", "invalid_app_id")


def test_blacklist(api: Api) -> None:
    listing = {"id_number": id_number(1), "reason": "scalper"}
    assert_error(api.admin("vera", "POST", "/v1/admin/blacklist", json=listing), 403, "forbidden")
    assert_error(
        api.admin("bob", "POST", "/v1/admin/blacklist", json={"id_number": "123"}),
        422,
        "invalid_id_number",
    )
    assert api.admin("alice", "POST", "/v1/admin/blacklist", json=listing).json() == {"added": True}
    assert api.admin("bob", "POST", "/v1/admin/blacklist", json=listing).json() == {"added": False}
    registered = api.post("wechat", "/v1/persons", person_body(1))
    assert registered.json()["eligibility"][0]["eligible"] is False
    remove = {"id_number": id_number(1)}
    assert_error(
        api.admin("vera", "POST", "/v1/admin/blacklist/remove", json=remove), 403, "forbidden"
    )
    assert api.admin("bob", "POST", "/v1/admin/blacklist/remove", json=remove).json() == {
        "removed": True
    }
    assert api.admin("bob", "POST", "/v1/admin/blacklist/remove", json=remove).json() == {
        "removed": False
    }
    assert api.claim("u1").status_code == 201


def test_campaign_check_reports_invariants(api: Api) -> None:
    api.register(1)
    api.claim_voucher("u1")
    check = api.check()
    assert check["ok"] is True
    assert check["problems"] == []
    assert check["issued"] == 1
    assert check["committed_fen"] == 9000
    assert_error(
        api.admin("vera", "GET", "/v1/admin/campaigns/no-such/check"), 404, "campaign_not_found"
    )
