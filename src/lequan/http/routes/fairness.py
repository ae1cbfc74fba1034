"""A round's fair start, as anyone may check it, and as operators see it.

The public routes need no login and carry no personal data: the commitment
(public from the campaign's approval), and once the round's draw is served,
the seed and every entry's ticket, rank and outcome, from which anyone can
recompute the order (docs/risk.md, ``lequan fairness verify``). Every answer
comes from the store.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from lequan.http.deps import Operator, PlatformDep
from lequan.http.routes.admin import CampaignIdPath, RoundIdPath
from lequan.http.schemas import (
    OPERATOR_ERRORS,
    DrawEntriesOut,
    FairnessListOut,
    FairnessOut,
    error_responses,
)
from lequan.services import fair_start

__all__ = ["router"]

router = APIRouter()

# A published draw does not change: a cache may keep it; the commitment only gains
# its seed once, so it is kept briefly.
_FAIRNESS_CACHE = "public, max-age=5"
_ENTRIES_CACHE = "public, max-age=60"
ENTRIES_PAGE_MAX = 10_000


@router.get(
    "/v1/public/campaigns/{campaign_id}/rounds/{round_id}/fairness",
    tags=["public"],
    response_model=FairnessOut,
    responses=error_responses(404, 422, 503),
    summary="A round's fair start: its commitment, and its seed once drawn (anyone)",
)
async def public_fairness(
    campaign_id: CampaignIdPath, round_id: RoundIdPath, platform: PlatformDep
) -> JSONResponse:
    body = await run_in_threadpool(fair_start.fairness, platform.rt, campaign_id, round_id)
    return JSONResponse(body, headers={"Cache-Control": _FAIRNESS_CACHE})


@router.get(
    "/v1/public/campaigns/{campaign_id}/rounds/{round_id}/fairness/entries",
    tags=["public"],
    response_model=DrawEntriesOut,
    responses=error_responses(404, 422, 503),
    summary="A published draw's entries in rank order, a page at a time (anyone)",
)
async def public_draw_entries(
    campaign_id: CampaignIdPath,
    round_id: RoundIdPath,
    platform: PlatformDep,
    after_rank: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=ENTRIES_PAGE_MAX)] = 1000,
) -> JSONResponse:
    entries, after = await run_in_threadpool(
        lambda: fair_start.fairness_entries(
            platform.rt, campaign_id, round_id, after_rank=after_rank, limit=limit
        )
    )
    body = {
        "items": [
            {
                "rank": e.rank,
                "ticket": e.ticket,
                "channel_id": e.channel_id,
                "template_id": e.template_id,
                "outcome": e.outcome,
            }
            for e in entries
        ],
        "next_after_rank": after,
    }
    return JSONResponse(body, headers={"Cache-Control": _ENTRIES_CACHE})


@router.get(
    "/v1/admin/campaigns/{campaign_id}/fairness",
    tags=["admin"],
    response_model=FairnessListOut,
    responses=OPERATOR_ERRORS,
    summary="Every round's fair start of a campaign (any role)",
)
async def admin_fairness(
    campaign_id: CampaignIdPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    items = await run_in_threadpool(fair_start.campaign_fairness, platform.rt, campaign_id)
    return JSONResponse({"items": items})
