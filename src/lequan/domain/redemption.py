"""Whether a voucher may pay for an order, and how much it takes off.

Checked in the order a cashier would explain it: the voucher's own state
and validity, then whether operators stopped its campaign's redemptions,
then where it is being spent (channel, merchant, mode), then the order
itself (excluded types, threshold; a trade-in voucher's product). One
voucher per order, used whole: no change is given.

The operators' two switches (docs/operations.md, "Switches") stop spending,
never giving back: a void, a reversal and a refund go through whatever
they say.

- A campaign's redemption switch (``redemptions_paused``) refuses every new
  decision to spend its vouchers: a one-step redemption and an authorization
  (the voucher's lock). A capture of an authorization taken before the switch
  goes through: the cashier accepted the voucher then and the goods are gone,
  as a card network honours the capture of a valid authorization.
- A merchant's suspension is about the merchant: it is checked before any
  voucher (a suspended merchant's quote is refused too, and learns nothing of
  the person's vouchers), and it refuses the capture of the merchant's open
  authorizations as well, since those are what is in doubt. They are voided
  by the acquirer or time out, and the voucher is the person's again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from lequan.domain.campaigns import Scope
from lequan.domain.errors import Conflict
from lequan.domain.vouchers import Action, VoucherState, check_usable, next_state

__all__ = [
    "PAUSED_REDEMPTIONS_REFUSE",
    "SUSPENDED_MERCHANT_REFUSES",
    "MerchantView",
    "OrderView",
    "VoucherView",
    "check_merchant_not_suspended",
    "check_redemptions_open",
    "discount_for_order",
]


@dataclass(frozen=True, slots=True)
class VoucherView:
    state: VoucherState
    channel_id: str
    campaign_id: str
    valid_from: datetime
    valid_until: datetime


@dataclass(frozen=True, slots=True)
class MerchantView:
    merchant_id: str
    mcc: str
    modes: frozenset[str]
    enrolled_campaigns: frozenset[str]


@dataclass(frozen=True, slots=True)
class OrderView:
    amount_fen: int
    mode: str
    channel_id: str
    order_type: str = "goods"


# What each switch refuses, by the voucher's action; any other action (a release, a
# reversal, a refund, a lock timing out) gives back and goes through.
PAUSED_REDEMPTIONS_REFUSE = frozenset({Action.REDEEM, Action.LOCK})
SUSPENDED_MERCHANT_REFUSES = frozenset({Action.REDEEM, Action.LOCK, Action.CONFIRM})


def check_merchant_not_suspended(*, suspended: bool, action: Action) -> None:
    """Refuse a suspended merchant's spending (``merchant_suspended``): a quote (asked as
    a redemption), a redemption, an authorization and the capture of one."""
    if suspended and action in SUSPENDED_MERCHANT_REFUSES:
        raise Conflict(
            "merchant_suspended", "operators suspended this merchant: it takes no voucher now"
        )


def check_redemptions_open(*, redemptions_paused: bool, action: Action) -> None:
    """Refuse a new decision to spend a voucher of a campaign whose redemptions operators
    paused (``redemptions_paused``); the capture of an earlier authorization goes through."""
    if redemptions_paused and action in PAUSED_REDEMPTIONS_REFUSE:
        raise Conflict(
            "redemptions_paused",
            "operators paused the redemptions of this voucher's campaign; nothing was spent",
        )


def discount_for_order(
    *,
    voucher: VoucherView,
    redemptions_paused: bool,
    template_modes: tuple[str, ...] | None,
    template_discount: Callable[[], int],
    template_minimum_order_fen: int,
    scope: Scope,
    merchant: MerchantView,
    order: OrderView,
    action: Action,
    now: datetime,
) -> int:
    """The discount this voucher gives on this order, or a Conflict saying why not.

    ``redemptions_paused`` is the voucher's campaign's switch. A merchant's
    suspension is not asked here: ``check_merchant_not_suspended`` answers it
    first, before any voucher is looked at.

    ``template_discount`` gives the template's discount for this order (0 when
    the order does not qualify), or raises the template's own refusal (a
    trade-in voucher's product); it is asked last, once the voucher may be
    spent here, and passing it in keeps this function free of the template kinds.
    """
    next_state(voucher.state, action)
    check_usable(valid_from=voucher.valid_from, valid_until=voucher.valid_until, now=now)
    check_redemptions_open(redemptions_paused=redemptions_paused, action=action)
    if scope.channel_bound and order.channel_id != voucher.channel_id:
        raise Conflict(
            "channel_mismatch", "the voucher must be used with the channel it was claimed in"
        )
    if scope.enrolled_only and voucher.campaign_id not in merchant.enrolled_campaigns:
        raise Conflict("merchant_not_in_scope", "the merchant is not enrolled in this campaign")
    if scope.mcc and merchant.mcc not in scope.mcc:
        raise Conflict("merchant_not_in_scope", "the merchant's category is outside the scope")
    allowed_modes = template_modes if template_modes is not None else scope.modes
    if order.mode not in allowed_modes or order.mode not in merchant.modes:
        raise Conflict(
            "mode_not_in_scope", f"the voucher cannot be used for {order.mode} orders here"
        )
    if order.order_type in scope.excluded_order_types:
        raise Conflict("order_type_excluded", f"{order.order_type} orders are excluded")
    template_discount_fen = template_discount()
    if template_discount_fen <= 0:
        raise Conflict(
            "below_threshold",
            f"the order does not qualify: at least {template_minimum_order_fen} fen is needed",
        )
    assert template_discount_fen <= order.amount_fen
    return template_discount_fen
