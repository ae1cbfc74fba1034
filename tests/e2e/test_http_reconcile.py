"""Reconciliation with central, as an operator asks for it (GET
/v1/admin/reconciliation/{day}): clean once the outbox is delivered, and every
disagreement listed with its voucher while it is not.
"""

from __future__ import annotations

from typing import Any

from lequan.central.in_process import MemoryCentral
from lequan.services.relay import relay_round
from tests.e2e.conftest import Api, OpenApi, assert_error
from tests.e2e.test_http_trade_in import _ApiClock, _open, claim, fridge, redeem, sync

DAY = "2026-11-28"  # T0 is 10:00 that day in Shanghai


def reconciliation(api: Api) -> dict[str, Any]:
    response = api.admin("vera", "GET", f"/v1/admin/reconciliation/{DAY}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def fact(body: dict[str, Any], category: str, name: str) -> tuple[list[int], list[int]]:
    (row,) = [c for c in body["categories"] if c["category"] == category]
    return row[name]["province"], row[name]["central"]


def test_a_day_reconciles_once_its_events_are_delivered(open_api: OpenApi) -> None:
    api = _open(open_api)
    bought = claim(api, 1)
    kept = claim(api, 2)
    done = redeem(api, bought, "u1", fridge())
    assert done.status_code == 201, done.text
    refund = api.follow_up(done.json()["redemption_id"], "refunds", {"refund_amount_fen": 599_900})
    assert refund.status_code == 201, refund.text
    again = redeem(
        api, bought, "u1", fridge(serial_number="SECOND-FRIDGE-1", invoice_number="INVOICE-2")
    )
    assert again.status_code == 201, again.text

    # The second redemption sent the refund ahead of itself (central must see the
    # voucher given back before it is consumed again); the other voucher's issue
    # is not delivered yet.
    before = reconciliation(api)
    assert not before["ok"]
    listed = {m["voucher_id"] for m in before["mismatches"] if m["fact"] == "voucher"}
    assert listed == {kept}

    sync(api)
    body = reconciliation(api)
    assert body["ok"], body["mismatches"]
    assert body["vouchers_compared"] == 2
    # Two vouchers locked; two consumptions, one refunded: one left, with its subsidy.
    assert fact(body, "refrigerator", "locked") == ([2, 0], [2, 0])
    assert fact(body, "refrigerator", "consumed") == ([1, 599_900], [1, 599_900])
    assert fact(body, "refrigerator", "subsidy") == ([1, 119_980], [1, 119_980])
    assert fact(body, "refrigerator", "released") == ([0, 0], [0, 0])
    # The ledger owes the acquirer the same subsidy, in the category's own account, and
    # every invariant of the campaign holds.
    checked = api.check("sh-trade-in-2024")
    assert checked["ok"], checked["problems"]
    assert checked["balances"]["payable:acq-unionpay:refrigerator"] == 119_980
    assert "payable:acq-unionpay" not in checked["balances"]


def test_an_event_central_never_got_is_a_mismatch_with_its_voucher(open_api: OpenApi) -> None:
    clock = _ApiClock()
    central = MemoryCentral.start(clock=clock, province="310000", seed=b"r" * 32)
    api = _open(open_api, central=central)
    clock.api = api
    voucher = claim(api, 1)
    central.down()
    assert relay_round(api.world.rt, central).central_down
    # Central is down: the operator is told so, not shown a false mismatch.
    assert_error(
        api.admin("vera", "GET", f"/v1/admin/reconciliation/{DAY}"), 503, "central_unavailable"
    )
    central.up()
    body = reconciliation(api)
    assert not body["ok"]
    assert fact(body, "refrigerator", "locked") == ([1, 0], [0, 0])
    (mismatch,) = [m for m in body["mismatches"] if m["fact"] == "voucher"]
    assert mismatch["voucher_id"] == voucher
    assert mismatch["central"] == "absent"


def test_a_province_without_central_has_nothing_to_reconcile(open_api: OpenApi) -> None:
    api = open_api()
    assert_error(
        api.admin("vera", "GET", f"/v1/admin/reconciliation/{DAY}"), 409, "central_not_configured"
    )
    assert_error(
        api.admin("vera", "GET", "/v1/admin/reconciliation/2026-13-01"), 422, "invalid_request"
    )
