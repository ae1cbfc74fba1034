"""Redemption for acquirers: quote, redeem in one step, lock then confirm or
void, reverse, refund. Every change is one transaction that moves the
voucher and the redemption conditionally (the store refuses a second
writer), posts the ledger and writes the outbox event the central platform
will receive.

A trade-in voucher is spent on one product (``domain/trade_in.py``): its
subsidy is the template's, and the product is registered in the same
transaction (``uow.products``: one subsidy per serial number, IMEI and
invoice number in the province) and released by a void, a lock timing out,
a reversal or a refund. ``ProductCheck`` is the one place a product is
checked against those subsidised before it. A product sent with any other
voucher is kept with the redemption and checked against nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import structlog

from lequan.domain.errors import AuthError, Conflict, InvalidInput, NotFound
from lequan.domain.ledger import (
    EntryKind,
    redeem_entry,
    refund_void_entry,
    reverse_entry,
)
from lequan.domain.redemption import (
    MerchantView,
    OrderView,
    VoucherView,
    check_merchant_not_suspended,
    discount_for_order,
)
from lequan.domain.redemption_states import (
    RedemptionAction,
    RedemptionStatus,
    next_status,
    opening_status,
)
from lequan.domain.templates import AMOUNT_FEN_MAX, TradeIn
from lequan.domain.trade_in import Product
from lequan.domain.vouchers import Action, VoucherState, next_state
from lequan.ports import DuplicateKey, UnitOfWork
from lequan.ports.central import (
    CentralPlatform,
    CentralUnavailable,
    ConsumeOutcome,
    ConsumeRequest,
    EventOutcome,
)
from lequan.rows import CampaignRow, MerchantRow, RedemptionRow, VoucherRow
from lequan.services.idempotency import RecordAnswer
from lequan.services.live import Redeemed, record_redemptions
from lequan.services.qualification import release_lock_of
from lequan.services.redemption_risk import (
    NO_SIGNALS,
    Completed,
    Judgement,
    RedemptionScreen,
    RedemptionSignals,
    release_for_refund,
    threshold_of,
)
from lequan.services.relay import sync_event
from lequan.services.runtime import Runtime
from lequan.services.views import new_id, redemption_body

log = structlog.get_logger(__name__)

__all__ = [
    "NationalItem",
    "ProductCheck",
    "Quote",
    "RedeemOrder",
    "check_amount",
    "checked_merchant",
    "confirm",
    "consume_nationally",
    "discount_of",
    "event_payload",
    "product_values",
    "quote",
    "redeem",
    "redemption_values",
    "refund",
    "reverse",
    "void",
]


@dataclass(frozen=True, slots=True)
class RedeemOrder:
    acquirer_id: str
    merchant_id: str
    channel_id: str
    channel_user_id: str
    order_id: str
    order_amount_fen: int
    mode: Literal["online", "in_store"]
    order_type: str = "goods"


@dataclass(frozen=True, slots=True)
class Quote:
    voucher: VoucherRow
    discount_fen: int
    pay_fen: int


def check_amount(amount_fen: int) -> None:
    if not 0 < amount_fen <= AMOUNT_FEN_MAX:
        raise InvalidInput("invalid_amount", f"order_amount_fen must be 1 to {AMOUNT_FEN_MAX}")


def _merchant(uow: UnitOfWork, order: RedeemOrder, action: Action = Action.REDEEM) -> MerchantRow:
    return checked_merchant(uow.people.get_merchant(order.merchant_id), order, action)


def checked_merchant(
    merchant: MerchantRow | None, order: RedeemOrder, action: Action = Action.REDEEM
) -> MerchantRow:
    """The order's merchant, if it exists, this acquirer serves it and operators have
    not suspended it (asked before any voucher)."""
    if merchant is None:
        raise NotFound("merchant_not_found", f"no merchant {order.merchant_id}")
    if merchant.acquirer_id != order.acquirer_id:
        raise AuthError("forbidden", "the merchant is not served by this acquirer")
    check_merchant_not_suspended(suspended=merchant.suspended, action=action)
    return merchant


@dataclass(slots=True)
class ProductCheck:
    """Whether trade-in products may be subsidised: the one place a product is checked
    against the products subsidised before it.

    ``read`` asks the province's registry about every identifier of a request, or
    of a batch, in one query; ``take`` refuses a product one of whose identifiers
    is held (``serial_already_subsidised``, ``invoice_already_subsidised``) and
    holds the others' for the products after it, as the store's unique keys
    will when they are written. The central platform's national serial
    registry (its consume call, issue 14) belongs here too.
    """

    held: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def read(cls, uow: UnitOfWork, products: Iterable[Product | None]) -> ProductCheck:
        wanted = [p for p in products if p is not None]
        if not wanted:
            return cls()
        return cls(
            uow.products.held(
                serial_numbers=[p.serial_number for p in wanted if p.serial_number],
                imeis=[p.imei for p in wanted if p.imei],
                invoice_numbers=[p.invoice_number for p in wanted if p.invoice_number],
            )
        )

    def refusal(self, product: Product) -> Conflict | None:
        """Why the product may not be subsidised now, if it may not."""
        for name in ("serial_number", "imei"):
            value = getattr(product, name)
            if value is not None and (name, value) in self.held:
                return Conflict(
                    "serial_already_subsidised",
                    f"this {'IMEI' if name == 'imei' else 'serial number'} is subsidised already",
                    details={"field": f"product.{name}"},
                )
        if (("invoice_number", product.invoice_number)) in self.held:
            return Conflict(
                "invoice_already_subsidised",
                "this invoice is subsidised already",
                details={"field": "product.invoice_number"},
            )
        return None

    def take(self, product: Product) -> None:
        """Hold the product's identifiers for the products after it, or raise why not."""
        refusal = self.refusal(product)
        if refusal is not None:
            raise refusal
        for name in ("serial_number", "imei", "invoice_number"):
            value = getattr(product, name)
            if value is not None:
                self.held.add((name, value))


@dataclass(frozen=True, slots=True)
class NationalItem:
    """A trade-in redemption about to be written, as central's consume call needs it."""

    voucher: VoucherRow
    redemption_id: str
    product: Product
    subsidy_fen: int


def consume_nationally(
    rt: Runtime, uow: UnitOfWork, items: Sequence[NationalItem]
) -> list[Conflict | None]:
    """Ask central to consume each item's qualification and check its serial number or
    IMEI against the national registry: for each, None, or why it is refused
    (``serial_already_subsidised`` anywhere in the country, or
    ``qualification_not_held`` when its lock at central is gone).

    Redemptions of issued vouchers go on when central does not answer: each is
    consumed when its ``redemption.completed`` event is delivered (docs/central.md).
    """
    if not items or rt.central is None:
        return [None] * len(items)
    requests: list[ConsumeRequest | None] = []
    for item in items:
        lock = uow.qualifications.lock_of_voucher(item.voucher.id)
        if lock is None:
            requests.append(None)  # a voucher issued before the province joined central
            continue
        requests.append(
            ConsumeRequest(
                lock_id=lock.id,
                voucher_id=item.voucher.id,
                redemption_id=item.redemption_id,
                category=item.product.category.value,
                serial=item.product.serial_number,
                imei=item.product.imei,
                invoice_no=item.product.invoice_number or "",
                price_fen=item.product.price_fen or 0,
                subsidy_fen=item.subsidy_fen,
            )
        )
    asked = [r for r in requests if r is not None]
    try:
        # What central has not heard of a voucher yet (a refund that gave it back)
        # goes first, so central sees the voucher as this province does.
        _deliver_pending(rt.central, uow, [r.voucher_id for r in asked], now=rt.clock.now())
        answers = iter(rt.central.consume(asked) if asked else [])
    except CentralUnavailable:
        log.warning("central_consume_deferred", redemptions=len(asked))
        return [None] * len(items)
    refusals: list[Conflict | None] = []
    for request in requests:
        if request is None:
            refusals.append(None)
            continue
        outcome = next(answers).outcome
        if outcome is ConsumeOutcome.SERIAL_USED:
            refusals.append(
                Conflict(
                    "serial_already_subsidised",
                    "this serial number or IMEI is subsidised already (national registry)",
                    details={"field": "product", "registry": "national"},
                )
            )
        elif outcome is ConsumeOutcome.NOT_LOCKED:
            refusals.append(
                Conflict(
                    "qualification_not_held",
                    "the qualification this voucher stands for is no longer held at central "
                    "(revoked or moved)",
                )
            )
        else:
            refusals.append(None)
    return refusals


# A voucher's events a redemption sends ahead of itself, at most.
_PENDING_AHEAD_MAX = 50


def _deliver_pending(
    central: CentralPlatform, uow: UnitOfWork, voucher_ids: Sequence[str], *, now: datetime
) -> None:
    """Deliver the vouchers' pending events now, in order, and mark them delivered in
    the caller's transaction (rolled back with it: the relay sends them again, and
    central answers duplicates)."""
    pending = [
        row
        for voucher_id in voucher_ids
        for row in uow.outbox.pending_of_voucher(voucher_id, _PENDING_AHEAD_MAX)
    ]
    if not pending:
        return
    results = central.deliver([sync_event(row) for row in pending])
    uow.outbox.mark_delivered(
        [r.event_id for r in results if r.outcome is not EventOutcome.REJECTED], now=now
    )


def trade_in_product(
    campaign: CampaignRow, voucher: VoucherRow, product: Product | None
) -> Product | None:
    """The product a redemption of ``voucher`` registers: its own for a trade-in
    voucher (checked by its template already), none for any other."""
    template = campaign.config.template(voucher.template_id)
    return product if isinstance(template, TradeIn) else None


def product_values(
    redemption_id: str, voucher: VoucherRow, product: Product, subsidy_fen: int, now: datetime
) -> dict[str, Any]:
    """The registry's row of a trade-in product subsidised by ``redemption_id``."""
    return {
        "redemption_id": redemption_id,
        "voucher_id": voucher.id,
        "campaign_id": voucher.campaign_id,
        "category": product.category.value,
        "brand": product.brand,
        "model": product.model,
        "sku": product.sku,
        "energy_grade": product.energy_grade,
        "price_fen": product.price_fen,
        "serial_number": product.serial_number,
        "imei": product.imei,
        "invoice_number": product.invoice_number,
        "old_appliance_handed_in": product.old_appliance_handed_in,
        "subsidy_fen": subsidy_fen,
        "created_at": now,
    }


def discount_of(
    *,
    voucher: VoucherRow,
    campaign: CampaignRow,
    merchant: MerchantRow,
    order: RedeemOrder,
    action: Action,
    now: datetime,
    product: Product | None = None,
) -> int:
    """The voucher's discount on this order, or the refusal saying why not. A trade-in
    voucher's is its subsidy on ``product``; any other voucher ignores a product."""
    template = campaign.config.template(voucher.template_id)
    assert template is not None, "a voucher's template is part of its campaign"

    def template_discount() -> int:
        if isinstance(template, TradeIn):
            return template.subsidy_for(product, order_amount_fen=order.order_amount_fen)
        return template.discount_for(order.order_amount_fen)

    return discount_for_order(
        voucher=VoucherView(
            state=voucher.state,
            channel_id=voucher.channel_id,
            campaign_id=voucher.campaign_id,
            valid_from=voucher.valid_from,
            valid_until=voucher.valid_until,
        ),
        redemptions_paused=campaign.redemptions_paused,
        template_modes=template.modes,
        template_discount=template_discount,
        template_minimum_order_fen=template.minimum_order_fen,
        scope=campaign.config.scope,
        merchant=MerchantView(
            merchant_id=merchant.id,
            mcc=merchant.mcc,
            modes=merchant.modes,
            enrolled_campaigns=merchant.enrolled_campaigns,
        ),
        order=OrderView(
            amount_fen=order.order_amount_fen,
            mode=order.mode,
            channel_id=order.channel_id,
            order_type=order.order_type,
        ),
        action=action,
        now=now,
    )


# A trade-in voucher quoted without its product (or an appliance's grade) is not usable
# for the order as described: left out of the quote, as any voucher that does not fit.
_NOT_QUOTED = frozenset({"product_required", "energy_grade_required"})


def quote(rt: Runtime, order: RedeemOrder, *, product: Product | None = None) -> list[Quote]:
    """The person's vouchers usable for this order, the biggest discount first; a
    trade-in voucher only with a ``product`` it may subsidise."""
    check_amount(order.order_amount_fen)
    now = rt.clock.now()
    with rt.store.unit_of_work(readonly=True) as uow:
        merchant = _merchant(uow, order)
        person_id = uow.people.account_person(order.channel_id, order.channel_user_id)
        if person_id is None:
            raise NotFound("not_registered", "this channel account is not registered")
        vouchers = uow.vouchers.person_vouchers(
            person_id,
            channel_id=None,
            after_id=None,
            limit=rt.settings.quote_vouchers_max,
            states=[VoucherState.ISSUED.value],
        )
        campaigns: dict[str, CampaignRow | None] = {}
        check = ProductCheck.read(uow, [product])
        quotes = []
        for v in vouchers:
            if v.campaign_id not in campaigns:
                campaigns[v.campaign_id] = uow.campaigns.get_campaign(v.campaign_id)
            campaign = campaigns[v.campaign_id]
            assert campaign is not None
            try:
                discount = discount_of(
                    voucher=v,
                    campaign=campaign,
                    merchant=merchant,
                    order=order,
                    action=Action.REDEEM,
                    now=now,
                    product=product,
                )
                registered = trade_in_product(campaign, v, product)
                if registered is not None and check.refusal(registered) is not None:
                    continue
            except Conflict:
                continue
            except InvalidInput as error:
                if error.code not in _NOT_QUOTED:
                    raise
                continue
            quotes.append(Quote(v, discount, order.order_amount_fen - discount))
    quotes.sort(key=lambda q: (-q.discount_fen, q.voucher.valid_until, q.voucher.id))
    return quotes


def _event(
    uow: UnitOfWork, topic: str, redemption: RedemptionRow, now: datetime, **extra: Any
) -> None:
    payload = event_payload(topic, redemption, now, **extra)
    uow.ledger.add_outbox(event_id=new_id("e"), topic=topic, payload=payload, now=now)


def event_payload(
    topic: str, redemption: RedemptionRow, now: datetime, **extra: Any
) -> dict[str, Any]:
    return {
        "event": topic,
        "redemption_id": redemption.id,
        "voucher_id": redemption.voucher_id,
        "campaign_id": redemption.campaign_id,
        "acquirer_id": redemption.acquirer_id,
        "merchant_id": redemption.merchant_id,
        "order_id": redemption.order_id,
        "order_amount_fen": redemption.order_amount_fen,
        "discount_fen": redemption.discount_fen,
        "at": now.isoformat(),
        **extra,
    }


def redeem(
    rt: Runtime,
    *,
    voucher_id: str,
    order: RedeemOrder,
    lock: bool,
    product: Product | None = None,
    record: RecordAnswer | None = None,
    signals: RedemptionSignals | None = None,
    screen: RedemptionScreen | None = None,
) -> tuple[RedemptionRow, VoucherState]:
    """Redeem in one step, or lock at authorization (confirm or void later); a
    trade-in voucher's product is registered at once, whether locked or redeemed.
    A completed redemption is judged by the redemption-time rules (``screen``); an
    authorization is remembered with its ``signals`` for its confirmation's."""
    check_amount(order.order_amount_fen)
    now = rt.clock.now()
    action = Action.LOCK if lock else Action.REDEEM
    judgement = Judgement()
    with rt.store.unit_of_work() as uow:
        merchant = _merchant(uow, order, action)
        voucher = uow.vouchers.lock_voucher(voucher_id)
        if voucher is None:
            raise NotFound("voucher_not_found", f"no voucher {voucher_id}")
        person_id = uow.people.account_person(order.channel_id, order.channel_user_id)
        if person_id != voucher.person_id:
            # Bound to the person: someone else's voucher is as good as none.
            raise NotFound("voucher_not_found", f"no voucher {voucher_id} for this person")
        campaign = uow.campaigns.get_campaign(voucher.campaign_id)
        assert campaign is not None
        discount = discount_of(
            voucher=voucher,
            campaign=campaign,
            merchant=merchant,
            order=order,
            action=action,
            now=now,
            product=product,
        )
        registered = trade_in_product(campaign, voucher, product)
        if registered is not None:
            ProductCheck.read(uow, [registered]).take(registered)
        state = next_state(voucher.state, action)
        redemption_id = new_id("r")
        values = redemption_values(
            redemption_id,
            voucher,
            order,
            discount,
            product,
            now=now,
            lock_expires_at=now + timedelta(seconds=rt.settings.lock_timeout_s) if lock else None,
        )
        if not uow.vouchers.move_voucher(
            voucher, state=state, now=now, redemption_id=redemption_id
        ):
            raise _lost_race(uow, voucher_id)
        uow.vouchers.insert_redemption(values)
        redemption = redemption_row(values)
        if registered is not None:
            try:
                uow.products.add_products(
                    [product_values(redemption_id, voucher, registered, discount, now)]
                )
            except DuplicateKey:
                raise _product_race(uow, registered) from None
        if not lock:
            _post_redeem(uow, redemption, voucher, now, registered)
        if record is not None:
            record(uow, (redemption, state))
        if registered is not None and not lock:
            # Last, with every local rule passed: the national registry and the lock. A
            # two-phase redemption is consumed at central when confirmed, as it is
            # completed (the product is held here from its lock).
            (refusal,) = consume_nationally(
                rt, uow, [NationalItem(voucher, redemption_id, registered, discount)]
            )
            if refusal is not None:
                raise refusal
        if screen is not None and lock:
            screen.remember_lock(uow, redemption, voucher, signals)
        elif screen is not None:
            completed = Completed(
                redemption,
                voucher,
                signals or NO_SIGNALS,
                threshold_of(campaign, voucher),
                registered,
            )
            judgement = screen.judge(uow, [completed], now)
        uow.commit()
    judgement.after_commit(rt)
    if not lock:
        record_redemptions(rt.pulse, now, [Redeemed(redemption, voucher.channel_id, merchant)])
    return redemption, state


def redemption_row(values: Mapping[str, Any]) -> RedemptionRow:
    """The row ``redemption_values`` describes, as the store will hand it back."""
    return RedemptionRow(
        **{f: values[f] for f in RedemptionRow.__dataclass_fields__ if f != "status"},
        status=RedemptionStatus(values["status"]),
    )


def redemption_values(
    redemption_id: str,
    voucher: VoucherRow,
    order: RedeemOrder,
    discount: int,
    product: Product | None,
    *,
    now: datetime,
    lock_expires_at: datetime | None,
) -> dict[str, Any]:
    return {
        "id": redemption_id,
        "voucher_id": voucher.id,
        "campaign_id": voucher.campaign_id,
        "acquirer_id": order.acquirer_id,
        "merchant_id": order.merchant_id,
        "order_id": order.order_id,
        "mode": order.mode,
        "order_amount_fen": order.order_amount_fen,
        "discount_fen": discount,
        "pay_fen": order.order_amount_fen - discount,
        "status": opening_status(two_phase=lock_expires_at is not None).value,
        "lock_expires_at": lock_expires_at,
        "product_json": json.dumps(product.payload(), ensure_ascii=False) if product else None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def _lost_race(uow: UnitOfWork, voucher_id: str) -> Conflict:
    """Another transaction moved the voucher first; say what it is now."""
    uow.rollback()
    current = uow.vouchers.get_voucher(voucher_id)
    assert current is not None
    try:
        next_state(current.state, Action.REDEEM)
    except Conflict as error:
        return error
    return Conflict("voucher_busy", "the voucher changed meanwhile; retry")


def _product_race(uow: UnitOfWork, product: Product) -> Conflict:
    """Another redemption registered one of the product's identifiers first (it
    committed while this one waited on the store's unique key); say which."""
    uow.rollback()
    refusal = ProductCheck.read(uow, [product]).refusal(product)
    return refusal or Conflict("voucher_busy", "the product changed meanwhile; retry")


def completed_extra(product: Product | None) -> dict[str, Any]:
    """What a redemption.completed event adds for a trade-in product: its details."""
    return {"product": product.payload()} if product is not None else {}


def _post_redeem(
    uow: UnitOfWork,
    redemption: RedemptionRow,
    voucher: VoucherRow,
    now: datetime,
    product: Product | None,
) -> None:
    uow.ledger.record(
        redeem_entry(
            face_fen=voucher.face_fen,
            discount_fen=redemption.discount_fen,
            acquirer_id=redemption.acquirer_id,
            category=product.category.value if product is not None else None,
        ),
        campaign_id=voucher.campaign_id,
        now=now,
        voucher_id=voucher.id,
        redemption_id=redemption.id,
    )
    _event(uow, "redemption.completed", redemption, now, **completed_extra(product))


def _load(
    uow: UnitOfWork, redemption_id: str, acquirer_id: str
) -> tuple[RedemptionRow, VoucherRow]:
    redemption = uow.vouchers.get_redemption(redemption_id)
    if redemption is None or redemption.acquirer_id != acquirer_id:
        raise NotFound("redemption_not_found", f"no redemption {redemption_id}")
    voucher = uow.vouchers.lock_voucher(redemption.voucher_id)
    assert voucher is not None
    return redemption, voucher


def _move_both(
    uow: UnitOfWork,
    redemption: RedemptionRow,
    voucher: VoucherRow,
    *,
    status: RedemptionStatus,
    state: VoucherState,
    now: datetime,
    keep_lock: bool = False,
) -> RedemptionRow:
    if not uow.vouchers.move_redemption(redemption, status=status, now=now):
        raise Conflict("redemption_state", "the redemption changed meanwhile; look again")
    if not uow.vouchers.move_voucher(
        voucher, state=state, now=now, redemption_id=redemption.id if keep_lock else None
    ):
        raise Conflict("voucher_busy", "the voucher changed meanwhile; retry")
    # As the conditional updates wrote them: no read back.
    return replace(redemption, status=status, updated_at=now, version=redemption.version + 1)


def confirm(
    rt: Runtime,
    redemption_id: str,
    *,
    acquirer_id: str,
    record: RecordAnswer | None = None,
    screen: RedemptionScreen | None = None,
) -> tuple[RedemptionRow, VoucherState]:
    """Complete a locked redemption (capture); refused once the lock has timed out, or
    while operators have its merchant suspended. A campaign's paused redemptions do not
    refuse it: the voucher was accepted before (``domain/redemption.py``). Judged by
    the redemption-time rules as it completes (``screen``)."""
    now = rt.clock.now()
    judgement = Judgement()
    with rt.store.unit_of_work() as uow:
        redemption, voucher = _load(uow, redemption_id, acquirer_id)
        status = next_status(redemption.status, RedemptionAction.CONFIRM)
        merchant = uow.people.get_merchant(redemption.merchant_id)
        assert merchant is not None, "a merchant is never deleted"
        check_merchant_not_suspended(suspended=merchant.suspended, action=Action.CONFIRM)
        assert redemption.lock_expires_at is not None
        if now >= redemption.lock_expires_at or voucher.redemption_id != redemption.id:
            raise Conflict("lock_expired", "the lock has timed out; redeem again")
        state = next_state(voucher.state, Action.CONFIRM)
        moved = _move_both(
            uow, redemption, voucher, status=status, state=state, now=now, keep_lock=True
        )
        registered = uow.products.get_product(redemption.id)
        _post_redeem(uow, moved, voucher, now, registered.product if registered else None)
        if record is not None:
            record(uow, (moved, state))
        if registered is not None:
            (refusal,) = consume_nationally(
                rt,
                uow,
                [NationalItem(voucher, redemption.id, registered.product, moved.discount_fen)],
            )
            if refusal is not None:
                raise refusal
        if screen is not None:
            judgement = screen.confirmed(
                uow,
                moved,
                voucher,
                product=registered.product if registered else None,
                now=now,
            )
        counted = _counted(uow, moved, voucher, 1)
        uow.commit()
    judgement.after_commit(rt)
    record_redemptions(rt.pulse, now, [counted])
    return moved, state


def void(
    rt: Runtime, redemption_id: str, *, acquirer_id: str, record: RecordAnswer | None = None
) -> tuple[RedemptionRow, VoucherState]:
    """Release a lock: the payment was not completed; the voucher is usable again."""
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        redemption, voucher = _load(uow, redemption_id, acquirer_id)
        status = next_status(redemption.status, RedemptionAction.VOID)
        state = next_state(voucher.state, Action.RELEASE)
        moved = _move_both(uow, redemption, voucher, status=status, state=state, now=now)
        uow.products.release_product(redemption.id, now=now)
        if record is not None:
            record(uow, (moved, state))
        uow.commit()
    return moved, state


def reverse(
    rt: Runtime, redemption_id: str, *, acquirer_id: str, record: RecordAnswer | None = None
) -> tuple[RedemptionRow, VoucherState]:
    """Undo a completed redemption within the reversal window (冲正): as if it never
    happened. A payable a risk rule held is released first; one an analyst clawed back
    refuses it (``redemption_clawed_back``)."""
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        redemption, voucher = _load(uow, redemption_id, acquirer_id)
        status = next_status(redemption.status, RedemptionAction.REVERSE)
        if now - redemption.updated_at > timedelta(seconds=rt.settings.reversal_window_s):
            raise Conflict(
                "reversal_window_passed", "too late to reverse this redemption; refund it instead"
            )
        release_for_refund(uow, redemption, now)
        state = next_state(voucher.state, Action.REVERSE)
        moved = _move_both(uow, redemption, voucher, status=status, state=state, now=now)
        if not _undo_redeem(uow, moved, voucher, now, EntryKind.REVERSE):
            raise Conflict("budget_exhausted", "the budget cannot take the voucher back")
        _event(
            uow,
            "redemption.reversed",
            moved,
            now,
            voucher_state=state.value,  # usable again: central keeps the slot locked
            **_released(uow, moved, now),
        )
        if record is not None:
            record(uow, (moved, state))
        counted = _counted(uow, moved, voucher, -1)
        uow.commit()
    record_redemptions(rt.pulse, now, [counted])
    return moved, state


def _released(uow: UnitOfWork, redemption: RedemptionRow, now: datetime) -> dict[str, Any]:
    """Let go of the redemption's trade-in product, so it may be subsidised again;
    what its event adds: the product's category and price (central and the
    reconciliation take the price back out of the day's consumptions)."""
    registered = uow.products.get_product(redemption.id)
    if registered is None:
        return {}
    released = uow.products.release_product(redemption.id, now=now)
    assert released, "a redemption is reversed or refunded once"
    # The price, as central takes it off the day's consumptions (reconciliation).
    return {
        "category": registered.product.category.value,
        "price_fen": registered.product.price_fen,
    }


def _category_of(uow: UnitOfWork, redemption: RedemptionRow) -> str | None:
    """The product category of a trade-in redemption (its payable account's), or None."""
    registered = uow.products.get_product(redemption.id)
    return registered.product.category.value if registered is not None else None


def _undo_redeem(
    uow: UnitOfWork,
    redemption: RedemptionRow,
    voucher: VoucherRow,
    now: datetime,
    kind: EntryKind,
) -> bool:
    """Post the exact negation of the redemption, the voucher's face committed again;
    False, with nothing written, when the budget no longer holds its unused part."""
    return uow.ledger.record(
        reverse_entry(
            face_fen=voucher.face_fen,
            discount_fen=redemption.discount_fen,
            acquirer_id=redemption.acquirer_id,
            category=_category_of(uow, redemption),
            kind=kind,
        ),
        campaign_id=voucher.campaign_id,
        now=now,
        voucher_id=voucher.id,
        redemption_id=redemption.id,
    )


def refund(
    rt: Runtime,
    redemption_id: str,
    *,
    acquirer_id: str,
    refund_amount_fen: int,
    record: RecordAnswer | None = None,
    screen: RedemptionScreen | None = None,
) -> tuple[RedemptionRow, VoucherState]:
    """The goods came back: the voucher returns while still valid (campaign policy), else void.

    Only a refund of the whole order is taken: a voucher is used whole, so a
    partial refund would leave the subsidy on an order that may no longer
    qualify. A payable a risk rule held is released first (the refund takes it
    back); one an analyst clawed back refuses it (``redemption_clawed_back``). The
    refund is judged by the redemption-time rules (``screen``): how soon it came.
    """
    now = rt.clock.now()
    judgement = Judgement()
    with rt.store.unit_of_work() as uow:
        redemption, voucher = _load(uow, redemption_id, acquirer_id)
        status = next_status(redemption.status, RedemptionAction.REFUND)
        if refund_amount_fen != redemption.order_amount_fen:
            raise InvalidInput(
                "partial_refund_unsupported",
                f"only a refund of the whole order is accepted ({redemption.order_amount_fen} fen)",
            )
        release_for_refund(uow, redemption, now)
        # Completed then: created in one step, or confirmed (and not moved since).
        completed_at = redemption.updated_at
        campaign = uow.campaigns.get_campaign(voucher.campaign_id)
        assert campaign is not None
        refunded = next_state(voucher.state, Action.REFUND)
        restore = campaign.config.refund_policy == "restore_if_valid" and now < voucher.valid_until
        moved = _move_both(uow, redemption, voucher, status=status, state=refunded, now=now)
        after_refund = replace(
            voucher, state=refunded, version=voucher.version + 1, redemption_id=None
        )
        if restore and not _undo_redeem(uow, moved, voucher, now, EntryKind.REFUND_RESTORE):
            # Giving the voucher back would commit budget that is gone: void it instead.
            restore = False
        if restore:
            state = next_state(refunded, Action.RESTORE)
        else:
            state = next_state(refunded, Action.VOID)
            uow.ledger.record(
                refund_void_entry(
                    discount_fen=moved.discount_fen,
                    acquirer_id=moved.acquirer_id,
                    category=_category_of(uow, moved),
                ),
                campaign_id=voucher.campaign_id,
                now=now,
                voucher_id=voucher.id,
                redemption_id=moved.id,
            )
        moved_back = uow.vouchers.move_voucher(after_refund, state=state, now=now)
        assert moved_back, "the voucher is locked by this transaction"
        if state is VoucherState.VOID:
            # Its event gives the qualification back to central: no longer held here.
            release_lock_of(uow, voucher.id, now=now)  # the refund event tells central
        _event(
            uow,
            "redemption.refunded",
            moved,
            now,
            voucher_state=state.value,
            **_released(uow, moved, now),
        )
        if record is not None:
            record(uow, (moved, state))
        if screen is not None:
            judgement = screen.refunded(uow, moved, completed_at=completed_at, now=now)
        counted = _counted(uow, moved, voucher, -1)
        uow.commit()
    judgement.after_commit(rt)
    record_redemptions(rt.pulse, now, [counted])
    return moved, state


def _counted(uow: UnitOfWork, row: RedemptionRow, voucher: VoucherRow, sign: int) -> Redeemed:
    """A redemption as the big screen counts it (by its merchant's region and category)."""
    return Redeemed(row, voucher.channel_id, uow.people.get_merchant(row.merchant_id), sign)


def get(rt: Runtime, redemption_id: str, *, acquirer_id: str) -> dict[str, Any]:
    with rt.store.unit_of_work(readonly=True) as uow:
        redemption = uow.vouchers.get_redemption(redemption_id)
        if redemption is None or redemption.acquirer_id != acquirer_id:
            raise NotFound("redemption_not_found", f"no redemption {redemption_id}")
        voucher = uow.vouchers.get_voucher(redemption.voucher_id)
        assert voucher is not None
    return redemption_body(redemption, voucher_state=voucher.state.value)
