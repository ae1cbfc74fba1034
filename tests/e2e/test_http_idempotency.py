"""Idempotency-Key on every mutating channel and acquirer call: a retry
replays the first answer and does nothing again; a changed request or a
key still in flight is refused.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import CAMPAIGN, Api, assert_error, person_body


def _assert_replay(first: httpx.Response, retry: httpx.Response) -> None:
    assert "Idempotent-Replayed" not in first.headers
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.status_code == first.status_code
    assert retry.json() == first.json()


def _item(key: str, user: str, template: str = "d300-90") -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "channel_user_id": user,
        "campaign_id": CAMPAIGN,
        "round_id": "r1",
        "template_id": template,
        "location_region": "310104",
    }


def test_registration_retry_replays(api: Api) -> None:
    first = api.post("wechat", "/v1/persons", person_body(1), key="reg-1")
    assert first.status_code == 201, first.text
    before = api.snapshot()
    retry = api.post("wechat", "/v1/persons", person_body(1), key="reg-1")
    _assert_replay(first, retry)
    assert api.snapshot() == before
    # A new key is a new request: the person is known now.
    again = api.post("wechat", "/v1/persons", person_body(1), key="reg-2")
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False


def test_claim_retry_replays_and_issues_nothing_new(api: Api) -> None:
    user = api.register(1)
    first = api.claim(user, key="claim-1")
    assert first.status_code == 201, first.text
    before = api.snapshot()
    for _ in range(2):
        _assert_replay(first, api.claim(user, key="claim-1"))
    assert api.snapshot() == before
    wallet = api.wallet(user).json()["items"]
    assert [v["voucher_id"] for v in wallet] == [first.json()["voucher"]["voucher_id"]]


def test_claim_retry_with_a_changed_body_is_refused(api: Api) -> None:
    user = api.register(1)
    assert api.claim(user, key="claim-1").status_code == 201
    before = api.snapshot()
    assert_error(api.claim(user, key="claim-1", template="d500-150"), 422, "idempotency_mismatch")
    assert api.snapshot() == before


def test_redemption_retry_replays_and_redeems_once(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    first = api.redeem(voucher["voucher_id"], user, order_id="o-1", key="pay-1")
    assert first.status_code == 201, first.text
    before = api.snapshot()
    _assert_replay(first, api.redeem(voucher["voucher_id"], user, order_id="o-1", key="pay-1"))
    assert api.snapshot() == before
    # The same key on another order is a different request.
    changed = api.redeem(voucher["voucher_id"], user, order_id="o-1", key="pay-1", amount_fen=40000)
    assert_error(changed, 422, "idempotency_mismatch")
    assert api.snapshot() == before


def test_follow_up_retries_replay(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    locked = api.redeem(voucher["voucher_id"], user, capture="lock", key="lock-1")
    redemption_id = locked.json()["redemption_id"]
    confirmed = api.follow_up(redemption_id, "confirm", key="confirm-1")
    assert confirmed.status_code == 200, confirmed.text
    before = api.snapshot()
    _assert_replay(confirmed, api.follow_up(redemption_id, "confirm", key="confirm-1"))
    assert api.snapshot() == before

    refunded = api.follow_up(redemption_id, "refunds", {"refund_amount_fen": 30000}, key="rf-1")
    assert refunded.status_code == 201, refunded.text
    before = api.snapshot()
    retry = api.follow_up(redemption_id, "refunds", {"refund_amount_fen": 30000}, key="rf-1")
    _assert_replay(refunded, retry)
    assert api.snapshot() == before
    # The key of the confirm, reused on the refund, is another request.
    assert_error(
        api.follow_up(redemption_id, "refunds", {"refund_amount_fen": 30000}, key="confirm-1"),
        422,
        "idempotency_mismatch",
    )


def test_reverse_and_void_retries_replay(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user)
    reversed_ = api.follow_up(paid.json()["redemption_id"], "reverse", key="rev-1")
    assert reversed_.status_code == 200, reversed_.text
    _assert_replay(reversed_, api.follow_up(paid.json()["redemption_id"], "reverse", key="rev-1"))

    locked = api.redeem(voucher["voucher_id"], user, capture="lock")
    voided = api.follow_up(locked.json()["redemption_id"], "void", key="void-1")
    assert voided.status_code == 200, voided.text
    before = api.snapshot()
    _assert_replay(voided, api.follow_up(locked.json()["redemption_id"], "void", key="void-1"))
    assert api.snapshot() == before


def test_a_missing_key_is_refused_on_every_mutating_call(api: Api) -> None:
    user = api.register(1)
    voucher = api.claim_voucher(user)
    paid = api.redeem(voucher["voucher_id"], user)
    redemption_id = paid.json()["redemption_id"]
    before = api.snapshot()
    calls: list[tuple[str, str, Any]] = [
        ("wechat", "/v1/persons", person_body(2)),
        ("wechat", "/v1/claims", _item("x", user) | {"idempotency_key": None}),
        (
            "acq-unionpay",
            "/v1/redemptions",
            {**api.order(user), "voucher_id": voucher["voucher_id"], "order_id": "o2"},
        ),
        ("acq-unionpay", f"/v1/redemptions/{redemption_id}/confirm", None),
        ("acq-unionpay", f"/v1/redemptions/{redemption_id}/void", None),
        ("acq-unionpay", f"/v1/redemptions/{redemption_id}/reverse", None),
        ("acq-unionpay", f"/v1/redemptions/{redemption_id}/refunds", {"refund_amount_fen": 1}),
    ]
    for app_id, path, body in calls:
        sent = body
        if isinstance(body, dict):
            sent = {k: v for k, v in body.items() if k != "idempotency_key"}
        assert_error(api.post(app_id, path, sent, key=None), 422, "idempotency_key_required")
    assert api.snapshot() == before


def test_a_malformed_key_is_refused(api: Api) -> None:
    user = api.register(1)
    for key in ("has space", "x" * 129, "a/b", "semi;colon"):
        assert_error(api.claim(user, key=key), 422, "invalid_idempotency_key")


def test_a_refused_claim_stores_nothing_and_may_be_asked_again(open_api: Any) -> None:
    api: Api = open_api()
    api.register(1)
    # Not registered yet: refused, and the key stays free.
    assert_error(api.claim("u2", key="late-1"), 404, "not_registered")
    api.register(2)
    retry = api.claim("u2", key="late-1")
    assert retry.status_code == 201, retry.text
    assert "Idempotent-Replayed" not in retry.headers


def test_batch_items_carry_their_own_keys(api: Api) -> None:
    for n in (1, 2, 3):
        api.register(n)
    batch = api.post(
        "wechat",
        "/v1/claims/batch",
        {"items": [_item("b-1", "u1"), _item("b-2", "u2"), _item("b-3", "u3")]},
        key=None,
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["idempotency_key"] for r in results] == ["b-1", "b-2", "b-3"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert all(r["outcome"] == "issued" and not r["replayed"] for r in results)
    before = api.snapshot()

    # The whole batch again: every item replays.
    again = api.post(
        "wechat",
        "/v1/claims/batch",
        {"items": [_item("b-1", "u1"), _item("b-2", "u2"), _item("b-3", "u3")]},
        key=None,
    )
    assert again.status_code == 200, again.text
    assert all(r["replayed"] for r in again.json()["results"])
    assert [r["voucher"] for r in again.json()["results"]] == [r["voucher"] for r in results]
    assert [r["status_code"] for r in again.json()["results"]] == [201, 201, 201]
    assert api.snapshot() == before

    # One item retried through the single endpoint replays too.
    single = api.claim("u2", key="b-2")
    assert single.status_code == 201, single.text
    assert single.headers.get("Idempotent-Replayed") == "true"
    assert single.json()["voucher"] == results[1]["voucher"]
    assert api.snapshot() == before


def test_a_single_claim_retried_in_a_batch_replays(api: Api) -> None:
    user = api.register(1)
    first = api.claim(user, key="s-1")
    assert first.status_code == 201, first.text
    before = api.snapshot()
    batch = api.post("wechat", "/v1/claims/batch", {"items": [_item("s-1", user)]}, key=None)
    [result] = batch.json()["results"]
    assert result["replayed"] is True
    assert result["status_code"] == 201
    assert result["voucher"] == first.json()["voucher"]
    assert api.snapshot() == before


def test_the_same_key_twice_in_one_batch_is_in_flight(api: Api) -> None:
    api.register(1)
    api.register(2)
    batch = api.post(
        "wechat",
        "/v1/claims/batch",
        {"items": [_item("dup-1", "u1"), _item("dup-1", "u1"), _item("dup-2", "u2")]},
        key=None,
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status_code"] for r in results] == [201, 409, 201]
    assert results[1]["outcome"] == "idempotency_in_flight"
    assert results[1]["error"]["code"] == "idempotency_in_flight"
    assert results[1]["voucher"] is None
    assert batch.json()["outcomes"] == {"issued": 2, "idempotency_in_flight": 1}
    assert len(api.wallet("u1").json()["items"]) == 1


def test_a_batch_item_with_a_changed_body_is_refused(api: Api) -> None:
    api.register(1)
    assert api.claim("u1", key="m-1").status_code == 201
    before = api.snapshot()
    batch = api.post(
        "wechat", "/v1/claims/batch", {"items": [_item("m-1", "u1", "d500-150")]}, key=None
    )
    [result] = batch.json()["results"]
    assert result["status_code"] == 422
    assert result["outcome"] == "idempotency_mismatch"
    assert api.snapshot() == before


def test_keys_are_per_app(api: Api) -> None:
    api.register(1)
    api.register(1, channel="alipay", user="a1")
    first = api.claim("u1", key="shared-key")
    assert first.status_code == 201, first.text
    # alipay's "shared-key" is alipay's own: a new claim, not a replay of wechat's.
    other = api.claim("a1", channel="alipay", key="shared-key")
    assert other.status_code == 201, other.text
    assert "Idempotent-Replayed" not in other.headers
    assert other.json()["voucher"]["channel_id"] == "alipay"


def test_a_key_a_claim_used_is_not_used_again_for_another_call(api: Api) -> None:
    """A claim's key lives on its voucher, not among the stored answers: it is still
    the channel's key, and another call with it is refused as a changed request."""
    user = api.register(1)
    assert api.claim(user, key="k-shared").status_code == 201
    before = api.snapshot()
    again = api.post("wechat", "/v1/persons", person_body(2), key="k-shared")
    assert_error(again, 422, "idempotency_mismatch")
    assert api.snapshot() == before
