"""The channel API: payment apps register their users, claim vouchers for
them (one at a time or in batches of up to ``claim_batch_items_max``) and
show their wallets. Every call is signed; every mutating call is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from lequan.http.claims import ASYNC_APPLIED, claim_headers, respond_async
from lequan.http.deps import ChannelApp, ClaimsDep, IdempotencyKey, PlatformDep, json_body
from lequan.http.envelope import NO_HEADERS, parse_body
from lequan.http.errors import json_response
from lequan.http.idempotent import answer_response, run_idempotent
from lequan.http.schemas import (
    SIGNED_ERRORS,
    BatchClaimIn,
    BatchClaimOut,
    ClaimAcceptedOut,
    ClaimHeldOut,
    ClaimIn,
    ClaimOut,
    PersonIn,
    PersonOut,
    WalletOut,
    error_responses,
)
from lequan.ports import UnitOfWork
from lequan.services import persons, qualification
from lequan.services.claim_answers import answered, issued_answer
from lequan.services.idempotency import Answer, run_once
from lequan.services.views import voucher_body

router = APIRouter(prefix="/v1", tags=["channel"])

# A batch answers each item's refusal in its results: the call itself is refused only
# whole (unsigned, too large, not a batch, throttled, down).
BATCH_ERRORS = error_responses(401, 403, 413, 422, 429, 503)


def _registration_answer(registration: persons.Registration) -> Answer:
    return Answer(
        201 if registration.created else 200,
        {
            "person_id": registration.person_id,
            "created": registration.created,
            "id_number_masked": registration.id_number_masked,
            "name_masked": registration.name_masked,
            "phone_masked": registration.phone_masked,
            "region_code": registration.region_code,
            "eligibility": [
                {
                    "campaign_id": v.campaign_id,
                    "eligible": v.eligible,
                    "reasons": [{"code": r.code, "message": r.message} for r in v.reasons],
                }
                for v in registration.verdicts
            ],
        },
    )


@router.post(
    "/persons",
    response_model=PersonOut,
    status_code=201,
    responses={200: {"model": PersonOut, "description": "Known already"}, **SIGNED_ERRORS},
    openapi_extra=json_body(PersonIn),
    summary="Register a person (real name, consent) and get their eligibility",
)
async def register_person(
    request: Request, caller: ChannelApp, key: IdempotencyKey, platform: PlatformDep
) -> Response:
    rt = platform.rt
    body = parse_body(PersonIn, caller.body)

    def act(record: Callable[[UnitOfWork, Any], None]) -> None:
        persons.register(
            rt,
            channel_id=caller.app_id,
            channel_user_id=body.channel_user_id,
            id_number=body.id_number,
            name=body.name,
            phone=body.phone,
            region_code=body.region_code,
            location_region=body.location_region,
            consent=body.consent,
            consent_version=body.consent_version,
            record=record,
        )

    answer, replayed = await run_in_threadpool(
        run_idempotent, platform, caller.idempotency(key), act, _registration_answer
    )
    return answer_response(request, answer, replayed=replayed)


@router.post(
    "/claims",
    response_model=ClaimOut,
    status_code=201,
    responses={
        202: {
            "model": ClaimHeldOut | ClaimAcceptedOut,
            "description": "Held for review; or, with `Prefer: respond-async`, waiting for "
            "the round's draw",
        },
        **SIGNED_ERRORS,
    },
    openapi_extra=json_body(ClaimIn),
    summary="Claim one voucher for a registered person",
)
async def claim(
    request: Request, caller: ChannelApp, key: IdempotencyKey, claims: ClaimsDep
) -> Response:
    """A retry with the same Idempotency-Key replays the first answer. A claim the risk
    rules refuse is answered 403 ``risk_refused``; one they hold, 202 ``held_for_review``
    with its ``review_id`` (docs/risk.md)."""
    # The lean route in front of the app (http/fastpath.py) answers this path first,
    # through the same ClaimDesk and envelope: this one answers without it.
    result = await claims.claim(
        caller.app_id,
        key,
        parse_body(ClaimIn, caller.body),
        respond_async=respond_async(request.headers.get("prefer")),
    )
    request.state.outcome = result.outcome
    request.state.claim_outcomes = {result.outcome: 1}
    answer = result.answer
    return json_response(request, answer.status_code, answer.body, claim_headers(result))


@router.post(
    "/claims/batch",
    response_model=BatchClaimOut,
    responses=BATCH_ERRORS,
    openapi_extra=json_body(BatchClaimIn),
    summary="Claim for many people at once; one result per item, in order",
)
async def claim_batch(request: Request, caller: ChannelApp, claims: ClaimsDep) -> Response:
    """Each item carries its own Idempotency-Key; a retried item replays its first answer."""
    # Answered first by the lean route in front of the app, as the single claim is.
    batch = parse_body(BatchClaimIn, caller.body)
    prefer_async = respond_async(request.headers.get("prefer"))
    body, counts = await claims.claim_batch(caller.app_id, batch, respond_async=prefer_async)
    request.state.outcome = f"batch:{len(batch.items)}"
    request.state.claim_outcomes = counts
    return json_response(request, 200, body, ASYNC_APPLIED if prefer_async else NO_HEADERS)


@router.post(
    "/trade-in/applications",
    response_model=ClaimOut,
    status_code=201,
    responses=SIGNED_ERRORS,
    openapi_extra=json_body(ClaimIn),
    summary="Apply for a trade-in voucher: issued once central locks the qualification",
)
async def apply_trade_in(
    request: Request, caller: ChannelApp, key: IdempotencyKey, platform: PlatformDep
) -> Response:
    """A trade-in template is applied for, not claimed: the platform first asks the
    central platform to verify and lock the person's qualification for the category
    nationwide. Refusals: ``qualification_used_elsewhere``,
    ``qualification_limit_reached``, ``qualification_revoked``; when central does not
    answer, 503 ``central_unavailable`` with nothing issued (retry with the same
    Idempotency-Key). A retry replays the first answer."""
    rt = platform.rt
    body = parse_body(ClaimIn, caller.body)
    idem = caller.idempotency(key)
    acted: list[bool] = []

    def lookup() -> tuple[str, int, str] | None:
        with rt.store.unit_of_work(readonly=True) as uow:
            return answered(uow, idem.app_id, [idem.key]).get(idem.key)

    def act() -> Answer:
        acted.append(True)
        voucher = qualification.apply(
            rt,
            idem,
            qualification.Application(
                channel_user_id=body.channel_user_id,
                campaign_id=body.campaign_id,
                round_id=body.round_id,
                template_id=body.template_id,
                location_region=body.location_region,
            ),
        )
        return issued_answer(voucher)

    answer = await run_in_threadpool(
        lambda: run_once(inflight=rt.inflight, key=idem, lookup=lookup, act=act)
    )
    return answer_response(request, answer, replayed=not acted)


@router.get(
    "/persons/{channel_user_id}/vouchers",
    response_model=WalletOut,
    responses=SIGNED_ERRORS,
    summary="A person's wallet in this channel (cursor pagination)",
)
async def wallet(
    channel_user_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")],
    caller: ChannelApp,
    platform: PlatformDep,
    cursor: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JSONResponse:
    rows, next_cursor = await run_in_threadpool(
        lambda: persons.wallet(
            platform.rt,
            channel_id=caller.app_id,
            channel_user_id=channel_user_id,
            after_id=cursor,
            limit=limit,
        )
    )
    return JSONResponse({"items": [voucher_body(v) for v in rows], "next_cursor": next_cursor})
