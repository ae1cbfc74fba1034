"""Redemption-time risk over HTTP: each rule flagging with its code while the
redemption completes, a held payable keeping the books balanced, an analyst's approval
releasing it and a rejection clawing it back, a suspension refusing the merchant's next
redemption, rings found in recent redemptions, SKU baseline prices, and the review
queue's redemption items read as the crowd simulator reads them."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from benchmarks import redeeming
from lequan.services import admin
from tests.e2e.conftest import ACQUIRER, CAMPAIGN, Api, OpenApi, assert_error

CAFE = "m-cafe-001"
NOODLE = "m-noodle-002"
PAYER = "pay-0000000000000001"
PAYABLE = f"payable:{ACQUIRER}"
HELD = f"held:{ACQUIRER}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def risky(open_api: OpenApi, request: pytest.FixtureRequest) -> Api:
    """The dining campaign live at round one's release (10:00 in Shanghai), an analyst
    (ana), the rules polled every 50 ms; on SQLite, and on PostgreSQL (whose writes of a
    batch go in a pipeline)."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("migrated_postgres_url")
    api = open_api(database_url=url, risk_rules_poll_s=0.05)
    api.world.tokens["ana"] = admin.add_operator(api.world.rt, "ana", role="analyst")
    return api


def put_rules(api: Api, version: int, **redemption: dict[str, Any]) -> None:
    """Draft (alice) and approve (bob) a version with these redemption rules."""
    text = yaml.safe_dump({"version": version, "claim": {}, "redemption": redemption})
    drafted = api.admin(
        "alice", "POST", "/v1/admin/risk/rules", content=text, content_type="application/yaml"
    )
    assert drafted.status_code == 201, drafted.text
    assert sorted(drafted.json()["redemption_rules"]) == sorted(redemption)
    approved = api.admin("bob", "POST", f"/v1/admin/risk/rules/{version}/approve")
    assert approved.status_code == 200, approved.text


def vouchers_of(api: Api, n: int, channels: tuple[str, ...] = ("wechat",)) -> list[str]:
    """Person ``n`` signs up in each channel and claims a d300-90 voucher there."""
    found = []
    for channel in channels:
        user = api.register(n, channel=channel)
        voucher = api.claim_voucher(user, channel=channel)
        found.append(voucher["voucher_id"])
    return found


def redeem(
    api: Api,
    voucher_id: str,
    n: int,
    *,
    channel: str = "wechat",
    merchant: str = CAFE,
    amount_fen: int = 30_000,
    payer: str | None = None,
    capture: str = "one_step",
) -> httpx.Response:
    body: dict[str, Any] = {
        **api.order(f"u{n}", channel=channel, merchant=merchant, amount_fen=amount_fen),
        "voucher_id": voucher_id,
        "order_id": f"POS-{voucher_id[-10:]}-{capture}",
        "capture": capture,
    }
    if payer is not None:
        body["signals"] = {"payer_id": payer, "terminal_id": f"{merchant}-t1"}
    return api.post(ACQUIRER, "/v1/redemptions", body)


def redeemed(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    redemption_id: str = response.json()["redemption_id"]
    return redemption_id


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def queue(api: Api, **params: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in {"kind": "redemption", **params}.items())
    items: list[dict[str, Any]] = ok(api.admin("ana", "GET", f"/v1/admin/reviews?{query}"))["items"]
    return items


def item_of(api: Api, redemption_id: str) -> dict[str, Any]:
    (found,) = [i for i in queue(api) if i["subject"]["redemption_id"] == redemption_id]
    return found


def codes(item: dict[str, Any]) -> list[str]:
    return [r["code"] for r in item["reasons"]]


def balances(api: Api) -> dict[str, int]:
    check = api.check()
    assert check["ok"], check["problems"]
    found: dict[str, int] = check["balances"]
    return found


def decide(api: Api, review_id: str, verb: str, reason: str = "looked at it") -> dict[str, Any]:
    return ok(
        api.admin("ana", "POST", f"/v1/admin/reviews/{review_id}/{verb}", json={"reason": reason})
    )


def audit(api: Api) -> list[tuple[str, str, str, dict[str, Any]]]:
    with api.engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT actor, action, target, details_json FROM audit_log ORDER BY seq")
        ).all()
    return [(r.actor, r.action, r.target, json.loads(r.details_json)) for r in rows]


# -- each rule: it fires with its code, the redemption completes -------------------------


def test_payer_many_vouchers_flags_and_the_redemption_completes(risky: Api) -> None:
    api = risky
    put_rules(api, 1, payer_many_vouchers={"limit": 1, "window_s": 86400, "action": "flag"})
    (first,) = vouchers_of(api, 1)
    (second,) = vouchers_of(api, 2)
    (third,) = vouchers_of(api, 3)
    one = redeemed(redeem(api, first, 1, payer=PAYER))
    two = redeemed(redeem(api, second, 2, payer=PAYER))
    # No payer token sent: unknown, never judged on it.
    redeemed(redeem(api, third, 3))
    assert api.voucher_state(second) == "redeemed"
    item = item_of(api, two)
    (earlier,) = [i for i in queue(api) if i is not item and i["review_id"] != item["review_id"]]
    assert item["kind"] == "redemption"
    assert item["status"] == "pending"
    assert item["campaign_id"] == CAMPAIGN
    assert item["rules_version"] == 1
    assert item["reasons"] == [
        {
            "code": "payer_many_vouchers",
            "action": "flag",
            "figures": {"vouchers": 2, "limit": 1, "window_s": 86400, "payer_id": PAYER},
        }
    ]
    # The first voucher it paid for, looked back on when the second went over.
    assert earlier["subject"]["redemption_id"] == one
    assert earlier["subject"]["moment"] == "lookback"
    assert earlier["reasons"] == item["reasons"]
    subject = item["subject"]
    assert subject["moment"] == "redemption"
    assert (subject["held_fen"], subject["merchant_suspended"]) == (0, False)
    assert subject["signals"] == {"payer_id": PAYER, "terminal_id": f"{CAFE}-t1"}
    assert (subject["merchant_id"], subject["discount_fen"]) == (CAFE, 9000)
    # Flagged only: the merchant is owed every discount.
    assert balances(api)[PAYABLE] == 27_000
    assert one != two


def test_amount_just_over_threshold(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        amount_just_over_threshold={
            "margin_fen": 100,
            "window_s": 3600,
            "redemptions_min": 2,
            "share_min_pct": 50,
        },
    )
    ids = [vouchers_of(api, n)[0] for n in range(1, 5)]
    first = redeemed(redeem(api, ids[0], 1, amount_fen=30_001))  # too few orders to judge
    second = redeemed(redeem(api, ids[1], 2, amount_fen=30_100))
    third = redeemed(redeem(api, ids[2], 3, amount_fen=30_101))  # over the margin
    fourth = redeemed(redeem(api, ids[3], 4, amount_fen=30_050))
    flagged = {i["subject"]["redemption_id"]: i for i in queue(api)}
    assert set(flagged) == {second, fourth}
    assert first not in flagged
    assert third not in flagged
    assert flagged[fourth]["reasons"][0]["figures"] == {
        "merchant_id": CAFE,
        "over_threshold_fen": 50,
        "margin_fen": 100,
        "merchant_just_over": 3,
        "merchant_redemptions": 4,
        "share_pct": 75,
        "window_s": 3600,
    }


def test_merchant_rate_spike_against_its_own_baseline(risky: Api) -> None:
    api = risky
    put_rules(api, 1, merchant_rate_spike={"baseline_minutes": 5, "factor": 2, "floor": 2})
    ids = [vouchers_of(api, n)[0] for n in range(1, 7)]
    # A first one at each: no baseline yet, never flagged.
    redeemed(redeem(api, ids[0], 1))
    for n in (2, 3, 4):
        redeemed(redeem(api, ids[n - 1], n, merchant=NOODLE))
    api.clock.advance(timedelta(minutes=2))
    quiet = redeemed(redeem(api, ids[4], 5))  # 1 this minute: below the floor
    spike = redeemed(redeem(api, ids[5], 6))  # 2 this minute, 1 in the 5 before
    (item,) = queue(api)
    assert item["subject"]["redemption_id"] == spike
    # Its share of the platform: all of this minute's, a quarter of the minutes before.
    assert item["reasons"][0]["figures"] == {
        "merchant_id": CAFE,
        "minute_redemptions": 2,
        "baseline_redemptions": 1,
        "baseline_minutes": 5,
        "floor": 2,
        "platform_minute_redemptions": 2,
        "platform_baseline_redemptions": 4,
    }
    assert quiet != spike


def test_a_release_day_is_no_merchants_spike(risky: Api) -> None:
    api = risky
    put_rules(api, 1, merchant_rate_spike={"baseline_minutes": 5, "factor": 2, "floor": 2})
    ids = [vouchers_of(api, n)[0] for n in range(1, 7)]
    redeemed(redeem(api, ids[0], 1))
    redeemed(redeem(api, ids[1], 2, merchant=NOODLE))
    api.clock.advance(timedelta(minutes=2))
    # Both merchants twice as busy at once: their shares of the platform stay.
    for n, merchant in ((3, CAFE), (4, NOODLE), (5, CAFE), (6, NOODLE)):
        redeemed(redeem(api, ids[n - 1], n, merchant=merchant))
    assert queue(api) == []


def test_outside_business_hours_of_the_campaign(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        outside_business_hours={
            "opens_at": "11:00",
            "closes_at": "22:00",
            "campaigns": {"other-campaign": {"opens_at": "00:00", "closes_at": "00:00"}},
        },
    )
    (early,) = vouchers_of(api, 1)
    (later,) = vouchers_of(api, 2)
    at_ten = redeemed(redeem(api, early, 1))  # 10:00 in Shanghai
    api.clock.advance(timedelta(hours=1))
    redeemed(redeem(api, later, 2))  # 11:00: open
    (item,) = queue(api)
    assert item["subject"]["redemption_id"] == at_ten
    assert item["reasons"][0]["figures"] == {
        "merchant_id": CAFE,
        "local_time": "10:00",
        "hours": "11:00-22:00",
    }


def test_refund_soon_after_its_redemption(risky: Api) -> None:
    api = risky
    put_rules(api, 1, refund_soon_after={"within_s": 600, "action": "flag"})
    (quick,) = vouchers_of(api, 1)
    (slow,) = vouchers_of(api, 2)
    quick_id = redeemed(redeem(api, quick, 1))
    slow_id = redeemed(redeem(api, slow, 2))
    assert queue(api) == []  # a redemption alone is judged by no refund rule
    api.clock.advance(timedelta(seconds=120))
    ok(api.follow_up(quick_id, "refunds", {"refund_amount_fen": 30_000}), 201)
    api.clock.advance(timedelta(seconds=600))
    ok(api.follow_up(slow_id, "refunds", {"refund_amount_fen": 30_000}), 201)
    (item,) = queue(api)
    assert item["subject"]["redemption_id"] == quick_id
    assert item["subject"]["moment"] == "refund"
    assert item["reasons"][0]["figures"] == {
        "since_redemption_s": 120,
        "within_s": 600,
        "merchant_id": CAFE,
    }
    assert balances(api).get(PAYABLE, 0) == 0


def test_refund_soon_after_at_a_merchant_that_refunds_often(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        refund_soon_after={
            "within_s": 600,
            "window_s": 3600,
            "merchant_refunds_min": 2,
            "merchant_share_min_pct": 50,
        },
    )
    ids = [vouchers_of(api, n)[0] for n in range(1, 4)]
    done = [redeemed(redeem(api, v, n)) for n, v in enumerate(ids, start=1)]
    ok(api.follow_up(done[0], "refunds", {"refund_amount_fen": 30_000}), 201)  # 1 of 3
    assert queue(api) == []
    ok(api.follow_up(done[1], "refunds", {"refund_amount_fen": 30_000}), 201)  # 2 of 3
    (item,) = queue(api)
    assert item["subject"]["redemption_id"] == done[1]
    figures = item["reasons"][0]["figures"]
    assert (figures["merchant_quick_refunds"], figures["merchant_redemptions"]) == (2, 3)


def test_ring_of_few_people_and_few_merchants(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        ring={
            "window_s": 3600,
            "persons_min": 3,
            "merchants_max": 2,
            "redemptions_min": 2,
            "refresh_s": 3600,
            "action": "hold",
        },
    )
    channels = ("wechat", "alipay", "unionpay")
    people = {n: vouchers_of(api, n, channels) for n in (1, 2, 3)}
    # Each spends two vouchers at the ring's two merchants.
    first = [
        redeemed(redeem(api, people[n][c], n, channel=channels[c], merchant=(CAFE, NOODLE)[c]))
        for n in people
        for c in (0, 1)
    ]
    # An honest customer of the cafe, once.
    (honest,) = vouchers_of(api, 9)
    honest_id = redeemed(redeem(api, honest, 9))
    assert queue(api) == []
    screen = api.world.platform.redemption_screen
    assert screen is not None
    # The sweep (every refresh_s in each process) finds the ring and flags what it did.
    assert screen.sweep_rings() == 6
    assert screen.sweep_rings() == 0  # once
    flagged = {i["subject"]["redemption_id"]: i for i in queue(api)}
    assert set(flagged) == set(first)
    item = flagged[first[0]]
    assert item["subject"]["moment"] == "ring"
    assert item["reasons"][0]["code"] == "ring"
    assert item["reasons"][0]["figures"] == {
        "persons": 3,
        "merchants": 2,
        "merchant_ids": f"{CAFE},{NOODLE}",
        "ring_redemptions": 6,
        "merchant_share_pct": 85,
        "window_s": 3600,
    }
    assert item["subject"]["held_fen"] == 9000
    assert balances(api)[HELD] == 6 * 9000
    # The ring's next redemption is flagged as it is made; the honest customer never.
    third = redeemed(redeem(api, people[1][2], 1, channel="unionpay"))
    assert codes(item_of(api, third)) == ["ring"]
    assert honest_id not in {i["subject"]["redemption_id"] for i in queue(api)}


# -- hold, release, claw back, suspend ------------------------------------------------------


# At 10:00 in Shanghai, outside these hours: every redemption is judged by this rule.
def at_ten(action: str) -> dict[str, Any]:
    return {"opens_at": "11:00", "closes_at": "22:00", "action": action}


def test_a_hold_keeps_the_books_and_approval_releases_it(risky: Api) -> None:
    api = risky
    put_rules(api, 1, outside_business_hours=at_ten("hold"))
    (voucher,) = vouchers_of(api, 1)
    held_id = redeemed(redeem(api, voucher, 1))
    assert api.voucher_state(voucher) == "redeemed"
    item = item_of(api, held_id)
    assert item["reasons"][0]["action"] == "hold"
    assert item["subject"]["held_fen"] == 9000
    books = balances(api)  # the check passes: the held account is what the holds hold
    assert (books.get(PAYABLE, 0), books[HELD]) == (0, 9000)
    approved = decide(api, item["review_id"], "approve")
    assert (approved["status"], approved["outcome"]) == ("approved", "released")
    assert approved["outcome_detail"] == {"amount_fen": 9000, "payable": PAYABLE}
    books = balances(api)
    assert (books[PAYABLE], books.get(HELD, 0)) == (9000, 0)
    assert_error(
        api.admin(
            "ana", "POST", f"/v1/admin/reviews/{item['review_id']}/reject", json={"reason": "x"}
        ),
        409,
        "review_state",
    )
    entry = [a for a in audit(api) if a[1] == "review.approve"]
    assert entry == [
        (
            "ana",
            "review.approve",
            item["review_id"],
            {
                "kind": "redemption",
                "reason": "looked at it",
                "outcome": "released",
                "amount_fen": 9000,
                "payable": PAYABLE,
            },
        )
    ]


def test_rejection_claws_back_and_the_refund_is_refused(risky: Api) -> None:
    api = risky
    put_rules(api, 1, outside_business_hours=at_ten("hold"))
    (voucher,) = vouchers_of(api, 1)
    committed_before = api.check()["committed_fen"]
    held_id = redeemed(redeem(api, voucher, 1))
    review_id = item_of(api, held_id)["review_id"]
    rejected = decide(api, review_id, "reject", "fake order")
    assert (rejected["status"], rejected["outcome"], rejected["decision_reason"]) == (
        "rejected",
        "clawed_back",
        "fake order",
    )
    assert rejected["outcome_detail"] == {"amount_fen": 9000, "from": HELD}
    books = balances(api)
    assert (books.get(PAYABLE, 0), books.get(HELD, 0)) == (0, 0)
    # The discount is back in the budget: the voucher's face is committed for nobody.
    assert api.check()["committed_fen"] == committed_before - 9000
    assert_error(
        api.follow_up(held_id, "refunds", {"refund_amount_fen": 30_000}),
        409,
        "redemption_clawed_back",
    )
    assert_error(api.follow_up(held_id, "reverse"), 409, "redemption_clawed_back")
    assert ("ana", "review.reject", review_id) in [(a, b, c) for a, b, c, _ in audit(api)]


def test_rejecting_a_flag_claws_back_what_is_still_owed(risky: Api) -> None:
    api = risky
    put_rules(api, 1, outside_business_hours=at_ten("flag"))
    ids = [vouchers_of(api, n)[0] for n in (1, 2, 3)]
    owed = redeemed(redeem(api, ids[0], 1))
    refunded = redeemed(redeem(api, ids[1], 2))
    ok(api.follow_up(refunded, "refunds", {"refund_amount_fen": 30_000}), 201)
    rejected = decide(api, item_of(api, owed)["review_id"], "reject")
    assert (rejected["outcome"], rejected["outcome_detail"]) == (
        "clawed_back",
        {"amount_fen": 9000, "from": PAYABLE},
    )
    # The refund took the payable back already: nothing to claw back.
    nothing = decide(api, item_of(api, refunded)["review_id"], "reject")
    assert (nothing["outcome"], nothing["outcome_detail"]) == (
        "nothing_to_claw_back",
        {"redemption_status": "refunded"},
    )
    assert balances(api).get(PAYABLE, 0) == 0
    # Approving a flag releases nothing.
    flag = redeemed(redeem(api, ids[2], 3))
    assert decide(api, item_of(api, flag)["review_id"], "approve")["outcome"] == "not_held"
    assert balances(api)[PAYABLE] == 9000


def test_a_refund_releases_a_held_payable_first(risky: Api) -> None:
    api = risky
    put_rules(api, 1, outside_business_hours=at_ten("hold"))
    (voucher,) = vouchers_of(api, 1)
    held_id = redeemed(redeem(api, voucher, 1))
    assert balances(api)[HELD] == 9000
    refunded = ok(api.follow_up(held_id, "refunds", {"refund_amount_fen": 30_000}), 201)
    assert refunded["status"] == "refunded"
    books = balances(api)
    assert (books.get(PAYABLE, 0), books.get(HELD, 0)) == (0, 0)
    # The analyst finds nothing left to decide about money.
    approved = decide(api, item_of(api, held_id)["review_id"], "approve")
    assert approved["outcome"] == "released_already"


def test_suspend_refuses_the_merchants_next_redemption(risky: Api) -> None:
    api = risky
    put_rules(
        api,
        1,
        outside_business_hours={**at_ten("suspend"), "merchants": {NOODLE: {"opens_at": "00:00"}}},
    )
    ids = [vouchers_of(api, n)[0] for n in (1, 2)]
    suspending = redeemed(redeem(api, ids[0], 1))
    item = item_of(api, suspending)
    assert (item["subject"]["merchant_suspended"], item["subject"]["held_fen"]) == (True, 9000)
    assert_error(redeem(api, ids[1], 2), 409, "merchant_suspended")
    merchant = ok(api.admin("vera", "GET", f"/v1/admin/merchants/{CAFE}"))
    assert merchant["suspension"]["suspended_by"] == "risk-rules"
    suspensions = [a for a in audit(api) if a[1] == "merchant.suspend"]
    assert [(a[0], a[2], a[3]["changed"]) for a in suspensions] == [("risk-rules", CAFE, True)]
    assert item["review_id"] in suspensions[0][3]["reason"]
    # Another merchant (open round the clock) still takes vouchers; an operator
    # reinstates the cafe.
    redeemed(redeem(api, ids[1], 2, merchant=NOODLE))
    ok(
        api.admin(
            "alice", "POST", f"/v1/admin/merchants/{CAFE}/reinstate", json={"reason": "cleared"}
        )
    )
    balances(api)


def test_a_payer_over_its_limit_is_looked_back_on(risky: Api) -> None:
    api = risky
    put_rules(api, 1, payer_many_vouchers={"limit": 2, "action": "hold"})
    ids = [vouchers_of(api, n)[0] for n in range(1, 6)]
    first = [redeemed(redeem(api, ids[n - 1], n, payer=PAYER)) for n in (1, 2)]
    other = redeemed(redeem(api, ids[2], 3, payer="pay-0000000000000002"))
    assert queue(api) == []
    over = redeemed(redeem(api, ids[3], 4, payer=PAYER))
    # The third voucher it paid for: it, and the two before it, are held.
    flagged = {i["subject"]["redemption_id"]: i for i in queue(api)}
    assert set(flagged) == {*first, over}
    assert other not in flagged
    assert flagged[over]["subject"]["moment"] == "redemption"
    for redemption_id in first:
        item = flagged[redemption_id]
        assert item["subject"]["moment"] == "lookback"
        assert item["subject"]["held_fen"] == 9000
        assert item["reasons"] == flagged[over]["reasons"]
    assert balances(api)[HELD] == 3 * 9000
    # Past the limit, each is flagged as it comes, the look back done once.
    fifth = redeemed(redeem(api, ids[4], 5, payer=PAYER))
    assert len(queue(api)) == 4
    assert item_of(api, fifth)["subject"]["moment"] == "redemption"


def test_an_authorization_is_judged_when_confirmed_with_its_signals(risky: Api) -> None:
    api = risky
    put_rules(api, 1, payer_many_vouchers={"limit": 1, "action": "hold"})
    (first,) = vouchers_of(api, 1)
    (second,) = vouchers_of(api, 2)
    redeemed(redeem(api, first, 1, payer=PAYER))
    locked = ok(redeem(api, second, 2, payer=PAYER, capture="lock"), 201)
    assert queue(api) == []  # nothing is owed before the capture
    confirmed = ok(api.follow_up(locked["redemption_id"], "confirm"))
    assert confirmed["status"] == "redeemed"
    item = item_of(api, locked["redemption_id"])
    assert item["reasons"][0]["figures"]["vouchers"] == 2
    assert item["subject"]["signals"]["payer_id"] == PAYER
    # The first redemption is looked back on: both held.
    assert balances(api)[HELD] == 2 * 9000


def test_no_rule_on_changes_nothing(risky: Api) -> None:
    api = risky
    (voucher,) = vouchers_of(api, 1)
    redeemed(redeem(api, voucher, 1, payer=PAYER))
    with api.engine.connect() as connection:
        remembered = connection.execute(sa.text("SELECT count(*) FROM risk_redemptions"))
        assert remembered.scalar_one() == 0
    assert queue(api) == []


# -- the review queue as the simulator reads it ------------------------------------------


def test_the_simulator_reads_the_queue_right(risky: Api) -> None:
    api = risky
    put_rules(api, 1, payer_many_vouchers={"limit": 1, "action": "hold"})
    (first,) = vouchers_of(api, 1)
    (second,) = vouchers_of(api, 2)
    ids = {
        redeemed(redeem(api, first, 1, payer=PAYER)),
        redeemed(redeem(api, second, 2, payer=PAYER)),
    }
    page = ok(api.admin("ana", "GET", "/v1/admin/reviews?kind=redemption&limit=1"))
    seen = {redeeming._redemption_id(item): redeeming._reasons(item) for item in page["items"]}
    assert page["next_cursor"]
    rest = ok(
        api.admin("ana", "GET", f"/v1/admin/reviews?kind=redemption&cursor={page['next_cursor']}")
    )
    seen |= {redeeming._redemption_id(item): redeeming._reasons(item) for item in rest["items"]}
    assert seen == {i: ("payer_many_vouchers",) for i in ids}


# -- SKU baseline prices --------------------------------------------------------------------


def test_sku_prices_are_imported_listed_and_checked(risky: Api) -> None:
    api = risky
    imported = ok(
        api.admin(
            "ana",
            "POST",
            "/v1/admin/risk/sku-prices",
            content="sku,baseline_price_fen\n100012345678,499900\nKFR-35GW,329900\n",
            content_type="text/csv",
        )
    )
    assert imported == {"imported": 2}
    again = ok(
        api.admin(
            "alice",
            "POST",
            "/v1/admin/risk/sku-prices",
            content="sku,baseline_price_fen\nKFR-35GW,319900\n",
            content_type="text/csv",
        )
    )
    assert again == {"imported": 1}
    listed = ok(api.admin("bob", "GET", "/v1/admin/risk/sku-prices?limit=1"))
    assert [(i["sku"], i["baseline_price_fen"]) for i in listed["items"]] == [
        ("100012345678", 499_900)
    ]
    rest = ok(api.admin("bob", "GET", f"/v1/admin/risk/sku-prices?cursor={listed['next_cursor']}"))
    assert [(i["sku"], i["baseline_price_fen"], i["updated_by"]) for i in rest["items"]] == [
        ("KFR-35GW", 319_900, "alice")
    ]
    for bad, line in (
        ("sku,price\nA,1\n", 1),
        ("sku,baseline_price_fen\nA,0\n", 2),
        ("sku,baseline_price_fen\nA,1\nA,2\n", 3),
        ("sku,baseline_price_fen\nA,1.5\n", 2),
        ("sku,baseline_price_fen\nA,1,extra\n", 2),
    ):
        body = assert_error(
            api.admin(
                "ana", "POST", "/v1/admin/risk/sku-prices", content=bad, content_type="text/csv"
            ),
            422,
            "invalid_sku_prices",
        )
        assert body["details"]["line"] == line, bad
    assert_error(api.admin("vera", "GET", "/v1/admin/risk/sku-prices"), 403, "forbidden")
    assert ("ana", "risk_sku_prices.import", "sku_prices") in [
        (a, b, c) for a, b, c, _ in audit(api)
    ]


def test_price_above_sku_baseline_holds_a_trade_in_subsidy(open_api: OpenApi) -> None:
    from tests.e2e.test_http_trade_in import _open, claim, fridge, redeem_body

    api = _open(open_api, risk_rules_poll_s=0.05)
    api.world.tokens["ana"] = admin.add_operator(api.world.rt, "ana", role="analyst")
    put_rules(api, 1, price_above_sku_baseline={"margin_pct": 20, "action": "hold"})
    ok(
        api.admin(
            "ana",
            "POST",
            "/v1/admin/risk/sku-prices",
            content="sku,baseline_price_fen\n100012345678,480000\n",
            content_type="text/csv",
        )
    )
    inflated, unpriced, fair = claim(api, 1), claim(api, 2), claim(api, 3)

    def spend(voucher_id: str, n: int, **product: Any) -> str:
        body = redeem_body(voucher_id, f"u{n}", fridge(**product))
        return redeemed(api.post(ACQUIRER, "/v1/redemptions", body))

    # 5,999 yuan against a baseline of 4,800: 25 % above it.
    held_id = spend(inflated, 1)
    spend(unpriced, 2, sku="NO-BASELINE", serial_number="SN2000002", invoice_number="INV2000002")
    spend(fair, 3, price_fen=576_000, serial_number="SN3000003", invoice_number="INV3000003")
    (item,) = queue(api)
    assert item["subject"]["redemption_id"] == held_id
    assert item["reasons"][0]["figures"] == {
        "price_fen": 599_900,
        "baseline_price_fen": 480_000,
        "margin_pct": 20,
        "sku": "100012345678",
    }
    subsidy = item["subject"]["discount_fen"]
    assert item["subject"]["held_fen"] == subsidy
    category = f"{ACQUIRER}:refrigerator"
    check = api.check("sh-trade-in-2024")
    assert check["ok"], check["problems"]
    assert check["balances"][f"held:{category}"] == subsidy
    rejected = decide(api, item["review_id"], "reject", "inflated invoice")
    assert rejected["outcome_detail"] == {"amount_fen": subsidy, "from": f"held:{category}"}
    check = api.check("sh-trade-in-2024")
    assert check["ok"], check["problems"]
    assert check["balances"].get(f"held:{category}", 0) == 0
