"""The acquirer API: quote the vouchers a paying person can use, redeem in
one step or lock-then-confirm/void, reverse, refund. Signed and idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from lequan.bootstrap import Platform
from lequan.domain.vouchers import VoucherState
from lequan.http.deps import AcquirerApp, IdempotencyKey, PlatformDep, json_body
from lequan.http.envelope import parse_body
from lequan.http.idempotent import answer_response, run_idempotent
from lequan.http.schemas import (
    SIGNED_ERRORS,
    EmptyIn,
    QuoteIn,
    QuoteOut,
    RedeemIn,
    RedemptionOut,
    RefundIn,
)
from lequan.ports import UnitOfWork
from lequan.rows import RedemptionRow
from lequan.services import redemption
from lequan.services.idempotency import Answer, Idempotency, request_hash
from lequan.services.redemption_batches import OneStep
from lequan.services.redemption_risk import RedemptionSignals
from lequan.services.views import redemption_body, voucher_body

router = APIRouter(prefix="/v1/redemptions", tags=["acquirer"])

RedemptionId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# The body of a route that takes no fields. No body at all is read as this one, and every
# body such a route accepts is the same request to its Idempotency-Key: a retry that
# leaves out the ``{}`` it first sent replays the first answer.
EMPTY_OBJECT = b"{}"


def _order(caller_app: str, body: QuoteIn | RedeemIn) -> redemption.RedeemOrder:
    return redemption.RedeemOrder(
        acquirer_id=caller_app,
        merchant_id=body.merchant_id,
        channel_id=body.channel_id,
        channel_user_id=body.channel_user_id,
        order_id=body.order_id if isinstance(body, RedeemIn) else "",
        order_amount_fen=body.order_amount_fen,
        mode=body.mode,
        order_type=body.order_type,
    )


def _render(status_code: int) -> Callable[[Any], Answer]:
    def render(result: tuple[RedemptionRow, VoucherState]) -> Answer:
        row, state = result
        return Answer(status_code, redemption_body(row, voucher_state=state.value))

    return render


@router.post(
    "/quote",
    response_model=QuoteOut,
    responses=SIGNED_ERRORS,
    openapi_extra=json_body(QuoteIn),
    summary="Vouchers usable for an order",
)
async def quote(caller: AcquirerApp, platform: PlatformDep) -> JSONResponse:
    body = parse_body(QuoteIn, caller.body)
    product = body.product.product() if body.product else None
    quotes = await run_in_threadpool(
        lambda: redemption.quote(platform.rt, _order(caller.app_id, body), product=product)
    )
    return JSONResponse(
        {
            "quotes": [
                {
                    "voucher": voucher_body(q.voucher),
                    "discount_fen": q.discount_fen,
                    "pay_fen": q.pay_fen,
                }
                for q in quotes
            ]
        }
    )


@router.post(
    "",
    response_model=RedemptionOut,
    status_code=201,
    responses=SIGNED_ERRORS,
    openapi_extra=json_body(RedeemIn),
    summary="Redeem a voucher in one step, or lock it at authorization",
)
async def redeem(
    request: Request, caller: AcquirerApp, key: IdempotencyKey, platform: PlatformDep
) -> Response:
    # The lean route in front of the app (http/fastpath.py::FastRedemptions) answers
    # this path first, the same way: this one answers without it.
    body = parse_body(RedeemIn, caller.body)
    answer, replayed = await redeem_answer(platform, caller.app_id, body, caller.idempotency(key))
    return answer_response(request, answer, replayed=replayed)


async def redeem_answer(
    platform: Platform, app_id: str, body: RedeemIn, idem: Idempotency
) -> tuple[Answer, bool]:
    """(answer, replayed) of one redemption request, however it arrived."""
    order = _order(app_id, body)
    product = body.product.product() if body.product else None
    sent = body.signals
    signals = (
        None
        if sent is None
        else RedemptionSignals(payer_id=sent.payer_id, terminal_id=sent.terminal_id)
    )
    if body.capture == "one_step":
        # Batched with other acquirers' one-step redemptions (services/redemption_batches.py).
        item = OneStep(body.voucher_id, order, product, idem, signals)
        return await asyncio.wrap_future(platform.redemptions.submit(item))

    def act(record: Callable[[UnitOfWork, Any], None]) -> None:
        redemption.redeem(
            platform.rt,
            voucher_id=body.voucher_id,
            order=order,
            lock=True,
            product=product,
            record=record,
            signals=signals,
            screen=platform.redemption_screen,
        )

    return await run_in_threadpool(run_idempotent, platform, idem, act, _render(201))


# Described, not declared: the route reads its body itself, as the others do.
_NO_FIELDS_BODY = {
    "requestBody": {
        "required": False,
        "description": "`{}`, or no body at all: the same request either way.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmptyIn"}}},
    }
}


def _follow_up(
    action: Callable[..., tuple[RedemptionRow, VoucherState]],
    status_code: int = 200,
    *,
    screened: bool = False,
) -> Callable[..., Any]:
    """A route that acts on one redemption; ``screened``: the redemption-time rules see
    what it does."""

    async def handler(
        *,
        request: Request,
        redemption_id: RedemptionId,
        caller: AcquirerApp,
        key: IdempotencyKey,
        platform: PlatformDep,
    ) -> Response:
        parse_body(EmptyIn, caller.body if caller.body.strip() else EMPTY_OBJECT)
        idem = Idempotency(
            caller.app_id, key, request_hash(caller.method, caller.path_with_query, EMPTY_OBJECT)
        )

        def act(record: Callable[[UnitOfWork, Any], None]) -> None:
            extra = {"screen": platform.redemption_screen} if screened else {}
            action(
                platform.rt, redemption_id[:64], acquirer_id=caller.app_id, record=record, **extra
            )

        answer, replayed = await run_in_threadpool(
            run_idempotent, platform, idem, act, _render(status_code)
        )
        return answer_response(request, answer, replayed=replayed)

    return handler


router.add_api_route(
    "/{redemption_id}/confirm",
    _follow_up(redemption.confirm, screened=True),
    methods=["POST"],
    response_model=RedemptionOut,
    responses=SIGNED_ERRORS,
    summary="Confirm a locked redemption (before the lock times out)",
    openapi_extra=_NO_FIELDS_BODY,
    name="confirm",
)
router.add_api_route(
    "/{redemption_id}/void",
    _follow_up(redemption.void),
    methods=["POST"],
    response_model=RedemptionOut,
    responses=SIGNED_ERRORS,
    summary="Void a lock: the voucher is usable again",
    openapi_extra=_NO_FIELDS_BODY,
    name="void",
)
router.add_api_route(
    "/{redemption_id}/reverse",
    _follow_up(redemption.reverse),
    methods=["POST"],
    response_model=RedemptionOut,
    responses=SIGNED_ERRORS,
    summary="Reverse a completed redemption within the reversal window",
    openapi_extra=_NO_FIELDS_BODY,
    name="reverse",
)


@router.post(
    "/{redemption_id}/refunds",
    response_model=RedemptionOut,
    status_code=201,
    responses=SIGNED_ERRORS,
    openapi_extra=json_body(RefundIn),
    summary="Refund the order: the voucher returns while valid (campaign policy), else void",
)
async def refund(
    *,
    request: Request,
    redemption_id: RedemptionId,
    caller: AcquirerApp,
    key: IdempotencyKey,
    platform: PlatformDep,
) -> Response:
    body = parse_body(RefundIn, caller.body)

    def act(record: Callable[[UnitOfWork, Any], None]) -> None:
        redemption.refund(
            platform.rt,
            redemption_id[:64],
            acquirer_id=caller.app_id,
            refund_amount_fen=body.refund_amount_fen,
            record=record,
            screen=platform.redemption_screen,
        )

    answer, replayed = await run_in_threadpool(
        run_idempotent, platform, caller.idempotency(key), act, _render(201)
    )
    return answer_response(request, answer, replayed=replayed)


@router.get(
    "/{redemption_id}",
    response_model=RedemptionOut,
    responses=SIGNED_ERRORS,
    summary="One redemption",
)
async def get_redemption(
    redemption_id: RedemptionId, caller: AcquirerApp, platform: PlatformDep
) -> JSONResponse:
    body = await run_in_threadpool(
        lambda: redemption.get(platform.rt, redemption_id[:64], acquirer_id=caller.app_id)
    )
    return JSONResponse(body)
