"""Whether a voucher pays for an order, and the one reason a cashier is told when it does not.

The checks run in a fixed order (voucher state, validity, the campaign's
redemption switch, channel, merchant, mode, order type, threshold); when
several rules are broken the first one in that order is the answer, so the
same order always gets the same explanation. A merchant's suspension is asked
before any of them, and of every spending action (``check_merchant_not_suspended``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lequan.domain.campaigns import CampaignConfig, Scope
from lequan.domain.errors import Conflict
from lequan.domain.redemption import (
    MerchantView,
    OrderView,
    VoucherView,
    check_merchant_not_suspended,
    check_redemptions_open,
    discount_for_order,
)
from lequan.domain.templates import FixedAmount, Percentage, ThresholdDiscount
from lequan.domain.vouchers import Action, VoucherState
from lequan.services.campaigns import parse_campaign

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DINING: CampaignConfig = parse_campaign((EXAMPLES / "shanghai-dining-2024.yaml").read_bytes())
LODGING: CampaignConfig = parse_campaign((EXAMPLES / "shanghai-lodging-2024.yaml").read_bytes())

ISSUED_AT = datetime(2024, 11, 30, 2, 0, 15, tzinfo=UTC)
VALID_UNTIL = ISSUED_AT + timedelta(days=10)
NOW = ISSUED_AT + timedelta(hours=2)

D300 = DINING.template("d300-90")
assert isinstance(D300, ThresholdDiscount)

VOUCHER = VoucherView(
    state=VoucherState.ISSUED,
    channel_id="alipay",
    campaign_id=DINING.id,
    valid_from=ISSUED_AT,
    valid_until=VALID_UNTIL,
)
RESTAURANT = MerchantView(
    merchant_id="m-coffee-01",
    mcc="5812",
    modes=frozenset({"in_store", "online"}),
    enrolled_campaigns=frozenset({DINING.id, LODGING.id}),
)
DINNER = OrderView(amount_fen=35_000, mode="in_store", channel_id="alipay")


def _discount(
    *,
    voucher: VoucherView = VOUCHER,
    template: ThresholdDiscount | Percentage | FixedAmount = D300,
    scope: Scope = DINING.scope,
    merchant: MerchantView = RESTAURANT,
    order: OrderView = DINNER,
    action: Action = Action.REDEEM,
    now: datetime = NOW,
    redemptions_paused: bool = False,
) -> int:
    return discount_for_order(
        voucher=voucher,
        redemptions_paused=redemptions_paused,
        template_modes=template.modes,
        template_discount=lambda: template.discount_for(order.amount_fen),
        template_minimum_order_fen=template.minimum_order_fen,
        scope=scope,
        merchant=merchant,
        order=order,
        action=action,
        now=now,
    )


def _refusal(**kwargs: Any) -> Conflict:
    with pytest.raises(Conflict) as refused:
        _discount(**kwargs)
    assert refused.value.message
    return refused.value


# The valid case


def test_dinner_of_350_yuan_gets_90_off_with_the_300_voucher() -> None:
    assert _discount() == 9_000


@pytest.mark.parametrize(
    ("state", "action"),
    [(VoucherState.ISSUED, Action.REDEEM), (VoucherState.ISSUED, Action.LOCK)],
)
def test_issued_voucher_may_be_redeemed_or_locked(state: VoucherState, action: Action) -> None:
    assert _discount(voucher=replace(VOUCHER, state=state), action=action) == 9_000


def test_locked_voucher_is_confirmed_for_its_discount() -> None:
    locked = replace(VOUCHER, state=VoucherState.LOCKED)
    assert _discount(voucher=locked, action=Action.CONFIRM) == 9_000


def test_order_at_exactly_the_threshold_qualifies() -> None:
    assert _discount(order=replace(DINNER, amount_fen=30_000)) == 9_000


def test_discount_is_the_voucher_face_whatever_the_bill() -> None:
    assert _discount(order=replace(DINNER, amount_fen=2_000_000)) == 9_000


def test_trade_in_subsidy_is_the_percentage_of_the_price() -> None:
    fridge = Percentage(id="fridge-g2", basis_points=1500, cap_fen=200_000)
    appliances = Scope(mcc=("5722",), modes=("online", "in_store"))
    store = replace(RESTAURANT, mcc="5722")
    order = replace(DINNER, amount_fen=1_000_000)
    assert _discount(template=fridge, scope=appliances, merchant=store, order=order) == 150_000


# The voucher itself


def test_redeemed_voucher_is_refused_as_already_redeemed() -> None:
    redeemed = replace(VOUCHER, state=VoucherState.REDEEMED)
    assert _refusal(voucher=redeemed).code == "already_redeemed"


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (VoucherState.EXPIRED, "voucher_expired"),
        (VoucherState.REVOKED, "voucher_revoked"),
        (VoucherState.VOID, "voucher_void"),
        (VoucherState.LOCKED, "voucher_locked"),
        (VoucherState.REFUNDED, "invalid_transition"),
    ],
)
def test_voucher_not_in_a_spendable_state_is_refused_by_its_state(
    state: VoucherState, code: str
) -> None:
    assert _refusal(voucher=replace(VOUCHER, state=state)).code == code


@pytest.mark.parametrize(
    "now", [VALID_UNTIL, VALID_UNTIL + timedelta(days=1)], ids=["at-end", "day-after"]
)
def test_voucher_past_its_window_is_refused_as_expired_even_if_not_swept(now: datetime) -> None:
    assert _refusal(now=now).code == "voucher_expired"


def test_voucher_at_its_last_microsecond_still_pays() -> None:
    assert _discount(now=VALID_UNTIL - timedelta(microseconds=1)) == 9_000


def test_voucher_before_its_window_is_refused_as_not_yet_valid() -> None:
    early = ISSUED_AT - timedelta(seconds=1)
    assert _refusal(now=early).code == "voucher_not_yet_valid"


# Where it is spent


def test_voucher_claimed_in_alipay_is_refused_when_paying_with_wechat() -> None:
    assert _refusal(order=replace(DINNER, channel_id="wechat")).code == "channel_mismatch"


def test_voucher_not_bound_to_a_channel_pays_in_any_channel() -> None:
    unbound = DINING.scope.model_copy(update={"channel_bound": False})
    assert _discount(scope=unbound, order=replace(DINNER, channel_id="wechat")) == 9_000


@pytest.mark.parametrize(
    ("merchant", "message_part"),
    [
        (replace(RESTAURANT, enrolled_campaigns=frozenset()), "not enrolled"),
        (replace(RESTAURANT, enrolled_campaigns=frozenset({"other-campaign"})), "not enrolled"),
        (replace(RESTAURANT, mcc="7011"), "category"),  # a hotel is not a restaurant
        (replace(RESTAURANT, mcc="5411"), "category"),  # nor a supermarket
    ],
    ids=["not-enrolled", "enrolled-elsewhere", "hotel-mcc", "grocery-mcc"],
)
def test_merchant_outside_the_scope_is_refused(merchant: MerchantView, message_part: str) -> None:
    refused = _refusal(merchant=merchant)
    assert refused.code == "merchant_not_in_scope"
    assert message_part in refused.message


def test_fast_food_is_within_the_dining_scope() -> None:
    assert _discount(merchant=replace(RESTAURANT, mcc="5814")) == 9_000


def test_open_scope_accepts_any_merchant_category_and_unenrolled_merchants() -> None:
    open_scope = Scope(mcc=(), enrolled_only=False)
    stranger = replace(RESTAURANT, mcc="5999", enrolled_campaigns=frozenset())
    assert _discount(scope=open_scope, merchant=stranger) == 9_000


# The operators' switches


@pytest.mark.parametrize("action", [Action.REDEEM, Action.LOCK])
def test_a_campaign_whose_redemptions_are_paused_spends_no_voucher(action: Action) -> None:
    refused = _refusal(redemptions_paused=True, action=action)
    assert refused.code == "redemptions_paused"


def test_a_capture_of_an_earlier_authorization_goes_through_while_redemptions_are_paused() -> None:
    locked = replace(VOUCHER, state=VoucherState.LOCKED)
    assert _discount(voucher=locked, action=Action.CONFIRM, redemptions_paused=True) == 9_000


@pytest.mark.parametrize("action", list(Action))
def test_the_redemption_switch_refuses_exactly_the_new_spending(action: Action) -> None:
    """Every action of the state machine: only a redemption and an authorization are
    new decisions to spend; what gives back (release, reversal, refund...) goes on."""
    if action in (Action.REDEEM, Action.LOCK):
        with pytest.raises(Conflict) as refused:
            check_redemptions_open(redemptions_paused=True, action=action)
        assert refused.value.code == "redemptions_paused"
    else:
        check_redemptions_open(redemptions_paused=True, action=action)
    check_redemptions_open(redemptions_paused=False, action=action)


@pytest.mark.parametrize("action", list(Action))
def test_a_suspended_merchant_neither_spends_nor_captures_but_gives_back(action: Action) -> None:
    if action in (Action.REDEEM, Action.LOCK, Action.CONFIRM):
        with pytest.raises(Conflict) as refused:
            check_merchant_not_suspended(suspended=True, action=action)
        assert refused.value.code == "merchant_suspended"
    else:
        check_merchant_not_suspended(suspended=True, action=action)
    check_merchant_not_suspended(suspended=False, action=action)


def test_a_paused_campaign_tells_a_spent_or_expired_voucher_what_it_is() -> None:
    """The voucher's own state and validity are permanent facts; the switch is not."""
    redeemed = replace(VOUCHER, state=VoucherState.REDEEMED)
    assert _refusal(voucher=redeemed, redemptions_paused=True).code == "already_redeemed"
    assert _refusal(now=VALID_UNTIL, redemptions_paused=True).code == "voucher_expired"


# Online booking versus in-store counters (lodging)

HOTEL = replace(RESTAURANT, merchant_id="m-hotel-01", mcc="7011")
LODGING_VOUCHER = replace(VOUCHER, campaign_id=LODGING.id)
NIGHT = OrderView(amount_fen=60_000, mode="online", channel_id="alipay")


@pytest.mark.parametrize(
    ("template_id", "mode", "discount_fen"),
    [
        ("online-600-180", "online", 18_000),
        ("store-600-180", "in_store", 18_000),
        ("online-600-180", "in_store", None),
        ("store-600-180", "online", None),
    ],
)
def test_lodging_online_and_in_store_vouchers_are_not_interchangeable(
    template_id: str, mode: str, discount_fen: int | None
) -> None:
    template = LODGING.template(template_id)
    assert template is not None
    kwargs: dict[str, Any] = {
        "voucher": LODGING_VOUCHER,
        "template": template,
        "scope": LODGING.scope,
        "merchant": HOTEL,
        "order": replace(NIGHT, mode=mode),
    }
    if discount_fen is None:
        assert _refusal(**kwargs).code == "mode_not_in_scope"
    else:
        assert _discount(**kwargs) == discount_fen


def test_merchant_without_the_order_mode_is_refused() -> None:
    counter_only = replace(HOTEL, modes=frozenset({"in_store"}))
    open_template = ThresholdDiscount(id="any-600", threshold_fen=60_000, discount_fen=18_000)
    refused = _refusal(
        voucher=LODGING_VOUCHER,
        template=open_template,
        scope=LODGING.scope,
        merchant=counter_only,
        order=NIGHT,
    )
    assert refused.code == "mode_not_in_scope"


def test_scope_modes_apply_when_the_template_names_none() -> None:
    in_store_only = DINING.scope.model_copy(update={"modes": ("in_store",)})
    refused = _refusal(scope=in_store_only, order=replace(DINNER, mode="online"))
    assert refused.code == "mode_not_in_scope"
    assert _discount(scope=in_store_only) == 9_000


# The order


@pytest.mark.parametrize("order_type", ["gift_card", "prepaid_card", "group_buy"])
def test_excluded_order_type_is_refused_for_dining(order_type: str) -> None:
    refused = _refusal(order=replace(DINNER, order_type=order_type))
    assert refused.code == "order_type_excluded"
    assert order_type in refused.message


@pytest.mark.parametrize("order_type", ["insurance_addon", "pay_at_hotel"])
def test_lodging_excludes_insurance_addons_and_pay_at_hotel(order_type: str) -> None:
    template = LODGING.template("online-600-180")
    assert template is not None
    refused = _refusal(
        voucher=LODGING_VOUCHER,
        template=template,
        scope=LODGING.scope,
        merchant=HOTEL,
        order=replace(NIGHT, order_type=order_type),
    )
    assert refused.code == "order_type_excluded"


def test_order_below_the_threshold_is_refused_naming_the_minimum() -> None:
    refused = _refusal(order=replace(DINNER, amount_fen=29_999))
    assert refused.code == "below_threshold"
    assert "30000" in refused.message


def test_empty_order_is_refused_even_for_a_fixed_voucher() -> None:
    fixed = FixedAmount(id="f20", amount_fen=2_000)
    assert _refusal(template=fixed, order=replace(DINNER, amount_fen=0)).code == "below_threshold"


def test_digital_product_above_6000_yuan_gets_no_subsidy() -> None:
    phone = Percentage(id="phone", basis_points=1500, cap_fen=50_000, price_max_fen=600_000)
    refused = _refusal(template=phone, scope=Scope(), order=replace(DINNER, amount_fen=600_001))
    assert refused.code == "below_threshold"


@pytest.mark.parametrize(
    ("discount_fen", "amount_fen"),
    [
        (35_000, 35_000),  # the whole order: the person pays nothing
        (1, 35_000),  # the smallest discount there is
        (1, 1),
    ],
)
def test_discounts_at_the_edges_of_the_order_are_given(discount_fen: int, amount_fen: int) -> None:
    given = discount_for_order(
        voucher=VOUCHER,
        redemptions_paused=False,
        template_modes=None,
        template_discount=lambda: discount_fen,
        template_minimum_order_fen=0,
        scope=DINING.scope,
        merchant=RESTAURANT,
        order=replace(DINNER, amount_fen=amount_fen),
        action=Action.REDEEM,
        now=NOW,
    )
    assert given == discount_fen


def test_inconsistent_template_discount_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError):
        discount_for_order(
            voucher=VOUCHER,
            redemptions_paused=False,
            template_modes=None,
            template_discount=lambda: 9_000,
            template_minimum_order_fen=30_000,
            scope=DINING.scope,
            merchant=RESTAURANT,
            order=replace(DINNER, amount_fen=100),
            action=Action.REDEEM,
            now=NOW,
        )


# The order of the checks


def test_the_first_broken_rule_in_check_order_is_the_answer() -> None:
    """Start with every rule broken; fix them one at a time, in the module's order."""
    case: dict[str, Any] = {
        "voucher": replace(VOUCHER, state=VoucherState.REDEEMED),
        "now": VALID_UNTIL + timedelta(days=1),
        "order": OrderView(
            amount_fen=100, mode="online", channel_id="wechat", order_type="gift_card"
        ),
        "merchant": MerchantView(
            merchant_id="m-bad",
            mcc="5411",
            modes=frozenset({"in_store"}),
            enrolled_campaigns=frozenset(),
        ),
        "redemptions_paused": True,
    }
    order: OrderView = case["order"]
    merchant: MerchantView = case["merchant"]
    steps: list[tuple[str, dict[str, Any]]] = [
        ("already_redeemed", {"voucher": VOUCHER}),
        ("voucher_expired", {"now": NOW}),
        ("redemptions_paused", {"redemptions_paused": False}),
        ("channel_mismatch", {"order": (order := replace(order, channel_id="alipay"))}),
        (
            "merchant_not_in_scope",
            {
                "merchant": (
                    merchant := replace(merchant, enrolled_campaigns=frozenset({DINING.id}))
                )
            },
        ),
        ("merchant_not_in_scope", {"merchant": (merchant := replace(merchant, mcc="5812"))}),
        ("mode_not_in_scope", {"order": (order := replace(order, mode="in_store"))}),
        ("order_type_excluded", {"order": (order := replace(order, order_type="goods"))}),
        ("below_threshold", {"order": replace(order, amount_fen=30_000)}),
    ]
    answers = []
    for _, fix in steps:
        with pytest.raises(Conflict) as refused:
            _discount(**case)
        answers.append(refused.value.code)
        case.update(fix)
    assert answers == [code for code, _ in steps]
    assert _discount(**case) == 9_000


def test_state_is_checked_before_validity() -> None:
    """A redeemed voucher past its window is still told it was redeemed, not that it expired."""
    redeemed = replace(VOUCHER, state=VoucherState.REDEEMED)
    assert _refusal(voucher=redeemed, now=VALID_UNTIL).code == "already_redeemed"


def test_expired_voucher_in_the_wrong_channel_is_told_it_expired() -> None:
    refused = _refusal(now=VALID_UNTIL, order=replace(DINNER, channel_id="wechat"))
    assert refused.code == "voucher_expired"
