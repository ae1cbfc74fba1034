"""Whether a voucher may pay for an order, and how much it takes off.

Checked in the order a cashier would explain it: the voucher's own state
and validity, then where it is being spent (channel, merchant, mode), then
the order itself (excluded types, threshold; a trade-in voucher's product).
One voucher per order, used whole: no change is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from lequan.domain.campaigns import Scope
from lequan.domain.errors import Conflict
from lequan.domain.vouchers import Action, VoucherState, check_usable, next_state

__all__ = ["MerchantView", "OrderView", "VoucherView", "discount_for_order"]


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
    active: bool = True


@dataclass(frozen=True, slots=True)
class OrderView:
    amount_fen: int
    mode: str
    channel_id: str
    order_type: str = "goods"


def discount_for_order(
    *,
    voucher: VoucherView,
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

    ``template_discount`` gives the template's discount for this order (0 when
    the order does not qualify), or raises the template's own refusal (a
    trade-in voucher's product); it is asked last, once the voucher may be
    spent here, and passing it in keeps this function free of the template kinds.
    """
    next_state(voucher.state, action)
    check_usable(valid_from=voucher.valid_from, valid_until=voucher.valid_until, now=now)
    if scope.channel_bound and order.channel_id != voucher.channel_id:
        raise Conflict(
            "channel_mismatch", "the voucher must be used with the channel it was claimed in"
        )
    if not merchant.active:
        raise Conflict("merchant_not_in_scope", "the merchant is suspended")
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
