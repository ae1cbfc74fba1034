"""The admin API for operators (Bearer tokens issued by ``lequan operator add``).

Roles: a *maker* drafts (imports campaigns, merchants, credentials), a
*checker* approves what a maker drafted (never their own), both operate
(pause, resume, end, start a round, pause a campaign's redemptions, suspend
a merchant); a *viewer* only reads.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from lequan.domain.errors import AuthError, InvalidInput
from lequan.http.deps import Operator, PlatformDep, json_body
from lequan.http.envelope import parse_body
from lequan.http.schemas import (
    OPERATOR_ERRORS,
    AppIn,
    AppOut,
    BlacklistAddOut,
    BlacklistIn,
    BlacklistRemoveIn,
    BlacklistRemoveOut,
    CampaignCheckOut,
    CampaignListOut,
    CampaignOut,
    MerchantImportOut,
    MerchantOut,
    MerchantSwitchIn,
    OutboxDeadOut,
    OutboxOut,
    OutboxReplayIn,
    OutboxReplayOut,
    RedemptionSwitchIn,
)
from lequan.rows import CampaignRow, MerchantRow
from lequan.services import admin, campaigns, reconcile, relay, switches
from lequan.services.invariants import check_campaign
from lequan.services.views import outbox_event_body

router = APIRouter(prefix="/v1/admin", tags=["admin"])

CampaignIdPath = Annotated[str, Path(max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*$")]
RoundIdPath = Annotated[str, Path(max_length=20, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
MerchantIdPath = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

YAML_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/yaml": {"schema": {"type": "string"}}},
        "description": "The campaign file (see examples/): at most `campaign_file_bytes_max` "
        "bytes, nested at most `campaign_file_depth_max` levels, at most "
        "`campaign_file_nodes_max` values with its aliases expanded.",
    }
}
CSV_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns: at most "
        "`merchant_file_bytes_max` bytes and `merchant_file_rows_max` rows; every acquirer "
        "and campaign a row names must exist.",
    }
}


def campaign_view(row: CampaignRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.config.name,
        "status": row.status.value,
        "budget_fen": row.budget_fen,
        "committed_fen": row.committed_fen,
        "drafted_by": row.drafted_by,
        "approved_by": row.approved_by,
        "channels": list(row.config.channels),
        "templates": [t.model_dump(mode="json") for t in row.config.templates],
        "rounds": [
            {
                "round_id": round_id,
                "release_at": release_at.isoformat(),
                "ends_at": ends_at.isoformat(),
            }
            for round_id, (release_at, ends_at) in sorted(row.rounds.items())
        ],
        "redemptions_paused": row.redemptions_paused,
        "start_window_s": row.config.start_window_s,
        "start_window_intake_s": row.config.start_window_intake_s,
    }


def merchant_view(row: MerchantRow) -> dict[str, Any]:
    suspension = row.suspension
    return {
        "id": row.id,
        "name": row.name,
        "mcc": row.mcc,
        "region_code": row.region_code,
        "modes": sorted(row.modes),
        "acquirer_id": row.acquirer_id,
        "campaigns": sorted(row.enrolled_campaigns),
        "suspended": suspension is not None,
        "suspension": None
        if suspension is None
        else {
            "reason": suspension.reason,
            "suspended_by": suspension.suspended_by,
            "suspended_at": suspension.suspended_at.isoformat(),
        },
    }


async def text_body(request: Request, limit: int) -> str:
    """An uploaded file as text: at most ``limit`` bytes (413 beyond), UTF-8."""
    raw = await request.body()
    if len(raw) > limit:
        raise InvalidInput("body_too_large", f"an upload here is at most {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("invalid_encoding", "the body must be UTF-8") from None


@router.post(
    "/campaigns",
    response_model=CampaignOut,
    status_code=201,
    responses=OPERATOR_ERRORS,
    openapi_extra=YAML_BODY,
    summary="Import a campaign file as a draft (maker or checker)",
)
async def import_campaign(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    settings = platform.rt.settings
    text = await text_body(request, settings.campaign_file_bytes_max)
    # A pure-Python parse of up to a megabyte: off the event loop.
    config = await run_in_threadpool(
        lambda: campaigns.parse_campaign(text, limits=campaigns.CampaignFileLimits.of(settings))
    )
    row = await run_in_threadpool(
        campaigns.import_campaign, platform.rt, config, actor=operator.operator_id
    )
    return JSONResponse(campaign_view(row), status_code=201)


@router.get(
    "/campaigns",
    response_model=CampaignListOut,
    responses=OPERATOR_ERRORS,
    summary="All campaigns (any role)",
)
async def list_campaigns(operator: Operator, platform: PlatformDep) -> JSONResponse:
    rows = await run_in_threadpool(campaigns.list_campaigns, platform.rt)
    return JSONResponse({"items": [campaign_view(r) for r in rows]})


@router.get(
    "/campaigns/{campaign_id}",
    response_model=CampaignOut,
    responses=OPERATOR_ERRORS,
    summary="One campaign (any role)",
)
async def get_campaign(
    campaign_id: CampaignIdPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    row = await run_in_threadpool(campaigns.get_campaign, platform.rt, campaign_id[:40])
    return JSONResponse(campaign_view(row))


@router.get(
    "/campaigns/{campaign_id}/check",
    response_model=CampaignCheckOut,
    responses=OPERATOR_ERRORS,
    summary="Check the campaign's invariants against the store (any role)",
)
async def check(
    campaign_id: CampaignIdPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    await run_in_threadpool(campaigns.get_campaign, platform.rt, campaign_id[:40])
    result = await run_in_threadpool(check_campaign, platform.rt, campaign_id[:40])
    return JSONResponse(
        {
            "campaign_id": result.campaign_id,
            "ok": result.ok,
            "problems": result.problems,
            "vouchers_by_state": result.vouchers_by_state,
            "issued": result.issued,
            "stock_initial": result.stock_initial,
            "budget_fen": result.budget_fen,
            "committed_fen": result.committed_fen,
            "balances": result.balances,
        }
    )


def _lifecycle(action: str) -> Any:
    async def handler(
        campaign_id: CampaignIdPath, operator: Operator, platform: PlatformDep
    ) -> JSONResponse:
        row = await run_in_threadpool(
            campaigns.change_status,
            platform.rt,
            campaign_id[:40],
            action,
            actor=operator.operator_id,
        )
        return JSONResponse(campaign_view(row))

    return handler


for _action, _summary in (
    ("approve", "Approve a draft (checker; never the operator who drafted it)"),
    ("activate", "Make an approved campaign live (maker or checker)"),
    ("pause", "Pause a live campaign: emergency stop of claims (maker or checker)"),
    ("resume", "Resume a paused campaign (maker or checker)"),
    ("end", "End a campaign (maker or checker)"),
):
    router.add_api_route(
        f"/campaigns/{{campaign_id}}/{_action}",
        _lifecycle(_action),
        methods=["POST"],
        response_model=CampaignOut,
        responses=OPERATOR_ERRORS,
        summary=_summary,
        name=f"campaign_{_action}",
    )


@router.post(
    "/campaigns/{campaign_id}/rounds/{round_id}/start",
    response_model=CampaignOut,
    responses=OPERATOR_ERRORS,
    summary="Open a round now (maker or checker)",
)
async def start_round(
    campaign_id: CampaignIdPath, round_id: RoundIdPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    row = await run_in_threadpool(
        campaigns.start_round,
        platform.rt,
        campaign_id[:40],
        round_id[:20],
        actor=operator.operator_id,
    )
    return JSONResponse(campaign_view(row))


def _require(operator: Any, *roles: str) -> None:
    if operator.role not in roles:
        raise AuthError("forbidden", f"a {operator.role} cannot do this")


# -- the operators' switches (services/switches.py) -----------------------------------------

# Optional: an empty body is the same as ``{}``.
SWITCH_BODY = {
    "requestBody": {
        "required": False,
        "description": '`{}`, `{"reason": "..."}` or no body at all; the reason (1-200 '
        "characters) goes to the audit log.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/RedemptionSwitchIn"}}
        },
    }
}


def _redemption_switch(paused: bool) -> Any:
    async def handler(
        campaign_id: CampaignIdPath, request: Request, operator: Operator, platform: PlatformDep
    ) -> JSONResponse:
        _require(operator, "maker", "checker")
        raw = await request.body()
        body = parse_body(RedemptionSwitchIn, raw if raw.strip() else b"{}")
        act = switches.pause_redemptions if paused else switches.resume_redemptions
        row = await run_in_threadpool(
            lambda: act(
                platform.rt, campaign_id[:40], actor=operator.operator_id, reason=body.reason
            )
        )
        return JSONResponse(campaign_view(row))

    return handler


for _paused, _verb, _summary in (
    (
        True,
        "pause",
        "Stop the spending of a campaign's vouchers; claims are the other switch "
        "(maker or checker; audited)",
    ),
    (False, "resume", "Let a campaign's vouchers be spent again (maker or checker; audited)"),
):
    router.add_api_route(
        f"/campaigns/{{campaign_id}}/redemptions/{_verb}",
        _redemption_switch(_paused),
        methods=["POST"],
        response_model=CampaignOut,
        responses=OPERATOR_ERRORS,
        openapi_extra=SWITCH_BODY,
        summary=_summary,
        name=f"campaign_redemptions_{_verb}",
    )


@router.get(
    "/merchants/{merchant_id}",
    response_model=MerchantOut,
    responses=OPERATOR_ERRORS,
    summary="One merchant, with its suspension if any (any role)",
)
async def get_merchant(
    merchant_id: MerchantIdPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    row = await run_in_threadpool(switches.get_merchant, platform.rt, merchant_id[:64])
    return JSONResponse(merchant_view(row))


def _merchant_switch(suspend: bool) -> Any:
    async def handler(
        merchant_id: MerchantIdPath, request: Request, operator: Operator, platform: PlatformDep
    ) -> JSONResponse:
        _require(operator, "maker", "checker")
        body = parse_body(MerchantSwitchIn, await request.body())
        act = switches.suspend_merchant if suspend else switches.reinstate_merchant
        row = await run_in_threadpool(
            lambda: act(
                platform.rt, merchant_id[:64], reason=body.reason, actor=operator.operator_id
            )
        )
        return JSONResponse(merchant_view(row))

    return handler


for _suspend, _verb, _summary in (
    (
        True,
        "suspend",
        "Suspend a merchant: its quotes, redemptions and captures are refused "
        "(maker or checker; audited)",
    ),
    (False, "reinstate", "Lift a merchant's suspension (maker or checker; audited)"),
):
    router.add_api_route(
        f"/merchants/{{merchant_id}}/{_verb}",
        _merchant_switch(_suspend),
        methods=["POST"],
        response_model=MerchantOut,
        responses=OPERATOR_ERRORS,
        openapi_extra=json_body(MerchantSwitchIn),
        summary=_summary,
        name=f"merchant_{_verb}",
    )


@router.post(
    "/merchants",
    response_model=MerchantImportOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=CSV_BODY,
    summary="Import or update merchants from CSV (maker)",
)
async def import_merchants(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    _require(operator, "maker")
    text = await text_body(request, platform.rt.settings.merchant_file_bytes_max)
    result = await run_in_threadpool(
        admin.import_merchants, platform.rt, text, actor=operator.operator_id
    )
    return JSONResponse({"imported": result.imported})


@router.post(
    "/apps",
    response_model=AppOut,
    status_code=201,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(AppIn),
    summary="Register a channel or acquirer; returns its signing secret once (maker)",
)
async def add_app(request: Request, operator: Operator, platform: PlatformDep) -> JSONResponse:
    _require(operator, "maker")
    body = parse_body(AppIn, await request.body())
    created = await run_in_threadpool(
        lambda: admin.add_app(
            platform.rt,
            app_id=body.app_id,
            kind=body.kind,
            name=body.name,
            actor=operator.operator_id,
        )
    )
    return JSONResponse(
        {
            "app_id": created.app_id,
            "kind": created.kind,
            "name": created.name,
            "secret": created.secret,
        },
        status_code=201,
    )


@router.post(
    "/blacklist",
    response_model=BlacklistAddOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(BlacklistIn),
    summary="Blacklist a person by ID number (maker, checker or analyst)",
)
async def blacklist_add(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    _require(operator, "maker", "checker", "analyst")
    body = parse_body(BlacklistIn, await request.body())
    added = await run_in_threadpool(
        lambda: admin.blacklist_add(
            platform.rt, id_number=body.id_number, reason=body.reason, actor=operator.operator_id
        )
    )
    return JSONResponse({"added": added})


@router.post(
    "/blacklist/remove",
    response_model=BlacklistRemoveOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(BlacklistRemoveIn),
    summary="Take a person off the blacklist (maker, checker or analyst)",
)
async def blacklist_remove(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    _require(operator, "maker", "checker", "analyst")
    body = parse_body(BlacklistRemoveIn, await request.body())
    removed = await run_in_threadpool(
        lambda: admin.blacklist_remove(
            platform.rt, id_number=body.id_number, actor=operator.operator_id
        )
    )
    return JSONResponse({"removed": removed})


# -- the outbox delivered to central ---------------------------------------------------------


@router.get(
    "/outbox",
    response_model=OutboxOut,
    responses=OPERATOR_ERRORS,
    summary="The events waiting for central, dead-lettered and delivered (any role)",
)
async def outbox_backlog(operator: Operator, platform: PlatformDep) -> JSONResponse:
    counts = await run_in_threadpool(relay.backlog, platform.rt)
    return JSONResponse(
        {"pending": counts.pending, "dead": counts.dead, "delivered": counts.delivered}
    )


@router.get(
    "/outbox/dead",
    response_model=OutboxDeadOut,
    responses=OPERATOR_ERRORS,
    summary="Dead-lettered events with why, oldest first (any role; cursor pagination)",
)
async def outbox_dead(
    operator: Operator,
    platform: PlatformDep,
    cursor: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    rows = await run_in_threadpool(
        lambda: relay.dead_letters(platform.rt, after_id=cursor, limit=limit)
    )
    items = [outbox_event_body(r) for r in rows]
    next_cursor = rows[-1].id if len(rows) == limit else None
    return JSONResponse({"items": items, "next_cursor": next_cursor})


@router.post(
    "/outbox/replay",
    response_model=OutboxReplayOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(OutboxReplayIn),
    summary="Give dead events back to the relay (maker or checker; audited)",
)
async def outbox_replay(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    _require(operator, "maker", "checker")
    body = parse_body(OutboxReplayIn, await request.body())
    moved = await run_in_threadpool(
        lambda: relay.replay(
            platform.rt, body.event_ids, actor=operator.operator_id, limit=body.limit
        )
    )
    return JSONResponse({"replayed": moved})


@router.get(
    "/reconciliation/{day}",
    responses=OPERATOR_ERRORS,
    summary="A day's trade-in facts against central's, per category and voucher (any role)",
)
async def reconciliation(
    day: Annotated[date, Path(description="The day, YYYY-MM-DD (UTC+8)")],
    operator: Operator,
    platform: PlatformDep,
) -> JSONResponse:
    result = await run_in_threadpool(reconcile.reconcile, platform.rt, day)
    return JSONResponse(result.as_json())
