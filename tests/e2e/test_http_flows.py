"""The main journeys over HTTP: an operator sets a campaign up, channels
register people and claim, acquirers quote, redeem, reverse and refund.

The happy path runs on both stacks (SQLite + in-process gate, PostgreSQL +
Redis); the other flows on SQLite.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.redis_gate import RedisGate
from lequan.ports import ClaimGate
from lequan.services.sweeper import sweep
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
from tests.factories import T0, dining_config


def _set_up_campaign_over_http(api: Api) -> None:
    """Import (maker), enroll merchants (maker), approve and activate (checker)."""
    config = dining_config(
        stock={"wechat": {"d300-90": 3, "d500-150": 2}, "alipay": {"d300-90": 1}}
    )
    created = api.admin(
        "alice",
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(config),
        content_type="application/yaml",
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    assert created.json()["drafted_by"] == "alice"
    merchants = api.admin(
        "alice", "POST", "/v1/admin/merchants", content=merchants_csv(), content_type="text/csv"
    )
    assert merchants.status_code == 200, merchants.text
    assert merchants.json() == {"imported": 6}
    approved = api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/approve")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert approved.json()["approved_by"] == "bob"
    live = api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/activate")
    assert live.status_code == 200, live.text
    assert live.json()["status"] == "live"


@pytest.fixture
def stack_gate(database_url: str, request: pytest.FixtureRequest) -> ClaimGate:
    """SQLite gets the in-process gate, PostgreSQL gets Redis."""
    if database_url.startswith("sqlite"):
        return MemoryGate()
    redis_url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return RedisGate.from_url(redis_url, key_prefix=prefix)


def test_happy_path_on_each_stack(
    database_url: str, stack_gate: ClaimGate, open_api: OpenApi
) -> None:
    # The store and gate fixtures come first so they are torn down after the app.
    api = open_api(campaign=False, database_url=database_url, gate=stack_gate)
    _set_up_campaign_over_http(api)

    # Before the release: registered, eligible, but the round has not opened.
    registered = api.post("wechat", "/v1/persons", person_body(1))
    assert registered.status_code == 201, registered.text
    assert registered.json()["eligibility"] == [
        {"campaign_id": CAMPAIGN, "eligible": True, "reasons": []}
    ]
    assert_error(api.claim("u1"), 409, "not_started")
    api.clock.set(T0)

    # One claim alone, then a batch for three more people.
    voucher = api.claim_voucher("u1")
    assert voucher["state"] == "issued"
    assert voucher["face_fen"] == 9000
    for n in (2, 3, 4):
        api.register(n)
    batch = api.post(
        "wechat",
        "/v1/claims/batch",
        {
            "items": [
                _item("k-u2", "u2", "d300-90"),
                _item("k-u3", "u3", "d500-150"),
                _item("k-u4", "u4", "d300-90"),
            ]
        },
        key=None,
    )
    assert batch.status_code == 200, batch.text
    assert [r["outcome"] for r in batch.json()["results"]] == ["issued", "issued", "issued"]
    assert batch.json()["outcomes"] == {"issued": 3}
    # d300-90 had 3 in wechat: u5 finds it sold out.
    api.register(5)
    assert_error(api.claim("u5"), 409, "sold_out")

    # The wallet shows the voucher; the quote offers it.
    wallet = api.wallet("u1")
    assert wallet.status_code == 200, wallet.text
    assert [v["voucher_id"] for v in wallet.json()["items"]] == [voucher["voucher_id"]]
    quote = api.quote("u3", amount_fen=56800)
    assert quote.status_code == 200, quote.text
    [offer] = quote.json()["quotes"]
    assert (offer["discount_fen"], offer["pay_fen"]) == (15000, 41800)

    # u1 pays in one step; u3 locks then confirms; u2 refunds after paying.
    paid = api.redeem(voucher["voucher_id"], "u1", amount_fen=35000)
    assert paid.status_code == 201, paid.text
    assert paid.json()["status"] == "redeemed"
    assert paid.json()["voucher_state"] == "redeemed"
    assert (paid.json()["discount_fen"], paid.json()["pay_fen"]) == (9000, 26000)

    u3_voucher = offer["voucher"]["voucher_id"]
    locked = api.redeem(u3_voucher, "u3", amount_fen=56800, capture="lock")
    assert locked.status_code == 201, locked.text
    assert locked.json()["status"] == "locked"
    assert locked.json()["lock_expires_at"] is not None
    confirmed = api.follow_up(locked.json()["redemption_id"], "confirm")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "redeemed"
    assert api.voucher_state(u3_voucher) == "redeemed"

    u2_voucher = batch.json()["results"][0]["voucher"]["voucher_id"]
    u2_paid = api.redeem(u2_voucher, "u2", amount_fen=30000, merchant="m-burger-003")
    assert u2_paid.status_code == 201, u2_paid.text
    refunded = api.follow_up(
        u2_paid.json()["redemption_id"], "refunds", {"refund_amount_fen": 30000}
    )
    assert refunded.status_code == 201, refunded.text
    assert refunded.json()["status"] == "refunded"
    assert refunded.json()["voucher_state"] == "issued"

    lookup = api.get(ACQUIRER, f"/v1/redemptions/{paid.json()['redemption_id']}")
    assert lookup.status_code == 200, lookup.text
    assert lookup.json()["voucher_state"] == "redeemed"

    check = api.check()
    assert check["ok"], check["problems"]
    assert check["vouchers_by_state"] == {"issued": 2, "redeemed": 2}
    assert check["issued"] == 4


def _item(key: str, user: str, template: str, round_id: str = "r1") -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "channel_user_id": user,
        "campaign_id": CAMPAIGN,
        "round_id": round_id,
        "template_id": template,
        "location_region": "310104",
    }


def test_lock_then_confirm(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    locked = api.redeem(voucher["voucher_id"], user, capture="lock")
    assert locked.status_code == 201, locked.text
    assert locked.json()["voucher_state"] == "locked"
    assert api.voucher_state(voucher["voucher_id"]) == "locked"
    # A locked voucher is offered to nobody and cannot be spent twice.
    assert api.quote(user).json()["quotes"] == []
    assert_error(api.redeem(voucher["voucher_id"], user), 409, "voucher_locked")

    api.clock.advance(timedelta(seconds=899))
    confirmed = api.follow_up(locked.json()["redemption_id"], "confirm", {})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "redeemed"
    assert confirmed.json()["voucher_state"] == "redeemed"
    assert api.voucher_state(voucher["voucher_id"]) == "redeemed"
    assert api.check()["ok"]


def test_lock_then_void_makes_the_voucher_usable_again(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    locked = api.redeem(voucher["voucher_id"], user, capture="lock")
    assert locked.status_code == 201, locked.text
    voided = api.follow_up(locked.json()["redemption_id"], "void")
    assert voided.status_code == 200, voided.text
    assert voided.json()["status"] == "voided"
    assert voided.json()["voucher_state"] == "issued"
    assert api.voucher_state(voucher["voucher_id"]) == "issued"
    # A voided lock cannot be confirmed afterwards.
    assert_error(api.follow_up(locked.json()["redemption_id"], "confirm"), 409, "redemption_state")
    again = api.redeem(voucher["voucher_id"], user)
    assert again.status_code == 201, again.text
    assert again.json()["voucher_state"] == "redeemed"
    assert api.check()["ok"]


def test_one_step_then_reverse_makes_the_voucher_usable_again(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    committed_before = api.check()["committed_fen"]
    paid = api.redeem(voucher["voucher_id"], user, amount_fen=40000)
    assert paid.status_code == 201, paid.text
    reversed_ = api.follow_up(paid.json()["redemption_id"], "reverse")
    assert reversed_.status_code == 200, reversed_.text
    assert reversed_.json()["status"] == "reversed"
    assert reversed_.json()["voucher_state"] == "issued"
    assert api.check()["committed_fen"] == committed_before
    [offer] = api.quote(user, amount_fen=40000).json()["quotes"]
    assert offer["voucher"]["voucher_id"] == voucher["voucher_id"]
    assert api.redeem(voucher["voucher_id"], user, amount_fen=40000).status_code == 201
    assert api.check()["ok"]


def test_refund_while_valid_restores_the_voucher(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user, amount_fen=31000)
    assert paid.status_code == 201, paid.text
    api.clock.advance(timedelta(days=2))
    refunded = api.follow_up(paid.json()["redemption_id"], "refunds", {"refund_amount_fen": 31000})
    assert refunded.status_code == 201, refunded.text
    assert refunded.json()["status"] == "refunded"
    assert refunded.json()["voucher_state"] == "issued"
    assert api.voucher_state(voucher["voucher_id"]) == "issued"
    assert [q["voucher"]["voucher_id"] for q in api.quote(user).json()["quotes"]] == [
        voucher["voucher_id"]
    ]
    assert api.check()["ok"]


def test_refund_past_validity_voids_the_voucher(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user)
    assert paid.status_code == 201, paid.text
    api.clock.advance(timedelta(days=10, seconds=1))
    refunded = api.follow_up(
        paid.json()["redemption_id"], "refunds", {"refund_amount_fen": 30000, "reason": "late"}
    )
    assert refunded.status_code == 201, refunded.text
    assert refunded.json()["voucher_state"] == "void"
    assert api.voucher_state(voucher["voucher_id"]) == "void"
    assert api.quote(user).json()["quotes"] == []
    assert api.check()["ok"]


def test_wallet_pages_with_a_cursor(open_api: OpenApi) -> None:
    api = open_api(
        dining_config(limits={"per_person_per_round_per_channel": 5, "per_person_per_campaign": 0})
    )
    user = api.register(1)
    claimed = [
        api.claim_voucher(user, template=t)["voucher_id"]
        for t in ("d300-90", "d500-150", "d800-240", "d1000-300", "d300-90")
    ]
    # Another channel's vouchers of the same person are not in this wallet.
    api.register(1, channel="alipay", user="alipay-u1")
    api.claim_voucher("alipay-u1", channel="alipay")

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = api.get("wechat", f"/v1/persons/{user}/vouchers", params)
        assert page.status_code == 200, page.text
        pages += 1
        items = page.json()["items"]
        assert len(items) <= 2
        seen.extend(v["voucher_id"] for v in items)
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(claimed)
    assert len(set(seen)) == 5
    whole = api.wallet(user)
    assert [v["voucher_id"] for v in whole.json()["items"]] == seen
    assert whole.json()["next_cursor"] is None


def test_quote_sorts_usable_vouchers_by_discount(open_api: OpenApi) -> None:
    api = open_api(
        dining_config(limits={"per_person_per_round_per_channel": 5, "per_person_per_campaign": 0})
    )
    user = api.register(1)
    for template in ("d300-90", "d800-240", "d500-150", "d1000-300"):
        api.claim_voucher(user, template=template)

    quote = api.quote(user, amount_fen=85000)
    assert quote.status_code == 200, quote.text
    offers = quote.json()["quotes"]
    # d1000-300 needs 1000 yuan: not offered for 850.
    assert [o["voucher"]["template_id"] for o in offers] == ["d800-240", "d500-150", "d300-90"]
    assert [o["discount_fen"] for o in offers] == [24000, 15000, 9000]
    assert all(o["pay_fen"] == 85000 - o["discount_fen"] for o in offers)

    # The best one spent, the next becomes the first offer.
    best = offers[0]["voucher"]["voucher_id"]
    assert api.redeem(best, user, amount_fen=85000).status_code == 201
    after = api.quote(user, amount_fen=85000).json()["quotes"]
    assert [o["voucher"]["template_id"] for o in after] == ["d500-150", "d300-90"]
    # Below every threshold, or at a merchant outside the scope: nothing to offer.
    assert api.quote(user, amount_fen=29999).json()["quotes"] == []
    assert api.quote(user, merchant="m-bar-004", amount_fen=85000).json()["quotes"] == []


def test_an_unconfirmed_lock_times_out_and_the_voucher_returns(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    locked = api.redeem(voucher["voucher_id"], user, capture="lock")
    redemption_id = locked.json()["redemption_id"]
    api.clock.advance(timedelta(seconds=901))
    # The sweeper's pass, as the running platform makes it every sweep_interval_s.
    assert sweep(api.world.rt).locks_timed_out == 1
    assert api.voucher_state(voucher["voucher_id"]) == "issued"
    assert_error(api.follow_up(redemption_id, "confirm"), 409, "lock_expired")
    assert_error(api.follow_up(redemption_id, "void"), 409, "lock_expired")
    looked_up = api.get(ACQUIRER, f"/v1/redemptions/{redemption_id}")
    assert looked_up.json()["status"] == "lock_expired"
    again = api.redeem(voucher["voucher_id"], user)
    assert again.status_code == 201, again.text
    assert api.check()["ok"]


def test_an_expired_voucher_is_swept_and_refused(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    committed = api.check()["committed_fen"]
    api.clock.advance(timedelta(days=10))
    assert sweep(api.world.rt).expired == 1
    assert api.wallet(user).json()["items"][0]["state"] == "expired"
    assert_error(api.redeem(voucher["voucher_id"], user), 409, "voucher_expired")
    check = api.check()
    # The face value went back to the budget.
    assert check["committed_fen"] == committed - 9000
    assert check["ok"], check["problems"]
