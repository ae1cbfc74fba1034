"""The risk admin API: the rules file (maker-checker), the review queue (analysts) and
the device and phone blacklists. Who may do what is in ``services/reviews.py`` and
``services/risk_rules.py``; docs/risk.md tells the workflow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lequan.domain.errors import LequanError
from lequan.http.deps import Operator, PlatformDep, json_body
from lequan.http.envelope import parse_body
from lequan.http.risk_schemas import (
    ReviewDecisionIn,
    ReviewListOut,
    ReviewOut,
    RiskBlacklistIn,
    RiskBlacklistListOut,
    RiskRulesListOut,
    RiskRulesOut,
    SkuImportOut,
    SkuPriceListOut,
)
from lequan.http.routes.admin import text_body
from lequan.http.schemas import OPERATOR_ERRORS, BlacklistAddOut, BlacklistRemoveOut
from lequan.rows import ReviewRow, RiskRulesRow
from lequan.services import reviews, risk_rules, sku_prices
from lequan.services.campaigns import CampaignFileLimits
from lequan.services.risk_rules import RiskRulebook

__all__ = ["RulesCollector", "review_view", "router", "rules_view"]

router = APIRouter(prefix="/v1/admin", tags=["admin"])

ReviewIdPath = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
VersionPath = Annotated[int, Path(ge=1, le=2_000_000_000)]
Cursor = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
SKU_BODY = {
    "requestBody": {
        "required": True,
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "sku,baseline_price_fen: at most `merchant_file_bytes_max` bytes and "
        "`merchant_file_rows_max` rows; refused whole (`invalid_sku_prices`, `details.line`).",
    }
}
RULES_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/yaml": {"schema": {"type": "string"}}},
        "description": "The rules file (examples/risk-rules.yaml, docs/risk.md), bounded as "
        "a campaign file is (`campaign_file_bytes_max`, `_depth_max`, `_nodes_max`).",
    }
}


class RulesCollector(Collector):
    """The version of the risk rules in force in this process (0: none): after an
    approval, every process's figure shows when it swapped the new rules in."""

    def __init__(self, rulebook: RiskRulebook) -> None:
        self._rulebook = rulebook

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "lequan_risk_rules_version", "The version of the risk rules in force here"
        )
        gauge.add_metric([], self._rulebook.current.version or 0)
        yield gauge


def rules_view(
    row: RiskRulesRow, limits: CampaignFileLimits, *, text: bool = False
) -> dict[str, Any]:
    try:
        parsed = risk_rules.parse_rules(row.text, limits=limits)
        claim_rules = risk_rules.rules_on(parsed)
        redemption_rules = risk_rules.redemption_rules_on(parsed)
    except LequanError:  # checked when drafted; a later version of lequan may disagree
        claim_rules, redemption_rules = [], []
    return {
        "version": row.version,
        "status": row.status,
        "drafted_by": row.drafted_by,
        "drafted_at": row.drafted_at.isoformat(),
        "approved_by": row.approved_by,
        "approved_at": None if row.approved_at is None else row.approved_at.isoformat(),
        "claim_rules": claim_rules,
        "redemption_rules": redemption_rules,
        "text": row.text if text else None,
    }


def review_view(row: ReviewRow) -> dict[str, Any]:
    return {
        "review_id": row.id,
        "kind": row.kind,
        "status": row.status,
        "created_at": row.created_at.isoformat(),
        "campaign_id": row.campaign_id,
        "rules_version": row.rules_version,
        "subject": dict(row.subject),
        "reasons": [dict(r) for r in row.reasons],
        "decided_by": row.decided_by,
        "decided_at": None if row.decided_at is None else row.decided_at.isoformat(),
        "decision_reason": row.decision_reason,
        "outcome": row.outcome,
        "outcome_detail": None if row.outcome_detail is None else dict(row.outcome_detail),
    }


# -- the rules file ------------------------------------------------------------------------


@router.get(
    "/risk/rules",
    response_model=RiskRulesListOut,
    responses=OPERATOR_ERRORS,
    summary="The active version of the risk rules and the versions drafted (any role)",
)
async def list_rules(operator: Operator, platform: PlatformDep) -> JSONResponse:
    rows = await run_in_threadpool(risk_rules.list_rules, platform.rt)
    active = next((r.version for r in rows if r.status == "active"), None)
    limits = CampaignFileLimits.of(platform.rt.settings)
    return JSONResponse(
        {"active_version": active, "versions": [rules_view(r, limits) for r in rows]}
    )


@router.get(
    "/risk/rules/{version}",
    response_model=RiskRulesOut,
    responses=OPERATOR_ERRORS,
    summary="One version of the risk rules, with its file (any role)",
)
async def get_rules(
    version: VersionPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    row = await run_in_threadpool(risk_rules.get_rules, platform.rt, version)
    return JSONResponse(rules_view(row, CampaignFileLimits.of(platform.rt.settings), text=True))


@router.post(
    "/risk/rules",
    response_model=RiskRulesOut,
    status_code=201,
    responses=OPERATOR_ERRORS,
    openapi_extra=RULES_BODY,
    summary="Draft a version of the risk rules (maker, checker or analyst); 422 with each "
    "field's path when invalid, the rules in force unchanged",
)
async def draft_rules(request: Request, operator: Operator, platform: PlatformDep) -> JSONResponse:
    settings = platform.rt.settings
    text = await text_body(request, settings.campaign_file_bytes_max)
    row = await run_in_threadpool(
        lambda: risk_rules.draft_rules(platform.rt, text, actor=operator.operator_id)
    )
    limits = CampaignFileLimits.of(settings)
    return JSONResponse(rules_view(row, limits, text=True), status_code=201)


@router.post(
    "/risk/rules/{version}/approve",
    response_model=RiskRulesOut,
    responses=OPERATOR_ERRORS,
    summary="Put a drafted version in force (a checker who did not draft it); every process "
    "swaps it in within `risk_rules_poll_s`, this one at once",
)
async def approve_rules(
    version: VersionPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    row = await run_in_threadpool(
        lambda: risk_rules.approve_rules(platform.rt, version, actor=operator.operator_id)
    )
    if platform.risk is not None:
        await run_in_threadpool(platform.risk.refresh)
    return JSONResponse(rules_view(row, CampaignFileLimits.of(platform.rt.settings)))


# -- the review queue ----------------------------------------------------------------------


@router.get(
    "/reviews",
    response_model=ReviewListOut,
    responses=OPERATOR_ERRORS,
    summary="The review queue, oldest first (analyst or checker; cursor pagination)",
)
async def list_reviews(
    operator: Operator,
    platform: PlatformDep,
    *,
    status: Literal["pending", "approved", "rejected"] | None = None,
    kind: Literal["claim", "redemption"] | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    limit = min(limit, platform.rt.settings.page_size_max)
    rows = await run_in_threadpool(
        lambda: reviews.list_reviews(
            platform.rt,
            actor=operator.operator_id,
            status=status,
            kind=kind,
            after_id=cursor,
            limit=limit,
        )
    )
    next_cursor = rows[-1].id if len(rows) == limit else None
    return JSONResponse({"items": [review_view(r) for r in rows], "next_cursor": next_cursor})


@router.get(
    "/reviews/{review_id}",
    response_model=ReviewOut,
    responses=OPERATOR_ERRORS,
    summary="One review item: each rule that fired, with its figures (analyst or checker)",
)
async def get_review(
    review_id: ReviewIdPath, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    row = await run_in_threadpool(
        lambda: reviews.get_review(platform.rt, review_id, actor=operator.operator_id)
    )
    return JSONResponse(review_view(row))


@router.post(
    "/reviews/{review_id}/approve",
    response_model=ReviewOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(ReviewDecisionIn),
    summary="Approve: a held claim is issued through the claim path, or refused as it would "
    "be now (sold out, claimed meanwhile); a redemption's held payable is released; the "
    "outcome is on the item (analyst; audited)",
)
async def approve_review(
    review_id: ReviewIdPath, request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    body = parse_body(ReviewDecisionIn, await request.body())
    row = await run_in_threadpool(
        lambda: reviews.approve_review(
            platform.rt,
            platform.claims,
            review_id,
            actor=operator.operator_id,
            reason=body.reason,
        )
    )
    return JSONResponse(review_view(row))


@router.post(
    "/reviews/{review_id}/reject",
    response_model=ReviewOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(ReviewDecisionIn),
    summary="Reject: a held claim is refused for good; a redemption's payable, held or still "
    "owed, is clawed back (analyst; audited)",
)
async def reject_review(
    review_id: ReviewIdPath, request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    body = parse_body(ReviewDecisionIn, await request.body())
    row = await run_in_threadpool(
        lambda: reviews.reject_review(
            platform.rt, review_id, actor=operator.operator_id, reason=body.reason
        )
    )
    return JSONResponse(review_view(row))


# -- the device and phone blacklists -------------------------------------------------------


@router.get(
    "/risk/blacklist",
    response_model=RiskBlacklistListOut,
    responses=OPERATOR_ERRORS,
    summary="The device or phone blacklist (maker, checker or analyst; cursor pagination)",
)
async def list_blacklist(
    operator: Operator,
    platform: PlatformDep,
    kind: Literal["device", "phone"],
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    limit = min(limit, platform.rt.settings.page_size_max)
    rows = await run_in_threadpool(
        lambda: reviews.blacklist_list(
            platform.rt, kind=kind, actor=operator.operator_id, after=cursor, limit=limit
        )
    )
    items = [
        {
            "kind": r.kind,
            "value": r.value if r.kind == "device" else r.value[:16],
            "reason": r.reason,
            "created_by": r.created_by,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]
    next_cursor = rows[-1].value if len(rows) == limit else None
    return JSONResponse({"items": items, "next_cursor": next_cursor})


@router.post(
    "/risk/blacklist",
    response_model=BlacklistAddOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(RiskBlacklistIn),
    summary="Blacklist a device id or a phone number (maker, checker or analyst; audited)",
)
async def blacklist_add(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    body = parse_body(RiskBlacklistIn, await request.body())
    added = await run_in_threadpool(
        lambda: reviews.blacklist_add(
            platform.rt,
            kind=body.kind,
            value=body.value,
            reason=body.reason,
            actor=operator.operator_id,
        )
    )
    return JSONResponse({"added": added})


@router.post(
    "/risk/blacklist/remove",
    response_model=BlacklistRemoveOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=json_body(RiskBlacklistIn),
    summary="Take a device id or a phone number off its blacklist (maker, checker or "
    "analyst; audited)",
)
async def blacklist_remove(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    body = parse_body(RiskBlacklistIn, await request.body())
    removed = await run_in_threadpool(
        lambda: reviews.blacklist_remove(
            platform.rt,
            kind=body.kind,
            value=body.value,
            actor=operator.operator_id,
            reason=body.reason,
        )
    )
    return JSONResponse({"removed": removed})


# -- SKU baseline prices (price_above_sku_baseline) ----------------------------------------


@router.post(
    "/risk/sku-prices",
    response_model=SkuImportOut,
    responses=OPERATOR_ERRORS,
    openapi_extra=SKU_BODY,
    summary="Import SKU baseline prices from CSV `sku,baseline_price_fen` (maker, checker or "
    "analyst; audited); a SKU imported again takes its new price",
)
async def import_sku_prices(
    request: Request, operator: Operator, platform: PlatformDep
) -> JSONResponse:
    text = await text_body(request, platform.rt.settings.merchant_file_bytes_max)
    result = await run_in_threadpool(
        lambda: sku_prices.import_sku_prices(platform.rt, text, actor=operator.operator_id)
    )
    return JSONResponse({"imported": result.imported})


@router.get(
    "/risk/sku-prices",
    response_model=SkuPriceListOut,
    responses=OPERATOR_ERRORS,
    summary="The SKU baseline prices by SKU (maker, checker or analyst; cursor pagination)",
)
async def list_sku_prices(
    operator: Operator,
    platform: PlatformDep,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    limit = min(limit, platform.rt.settings.page_size_max)
    rows = await run_in_threadpool(
        lambda: sku_prices.list_sku_prices(
            platform.rt, actor=operator.operator_id, after=cursor, limit=limit
        )
    )
    items = [
        {
            "sku": r.sku,
            "baseline_price_fen": r.baseline_price_fen,
            "updated_by": r.updated_by,
            "updated_at": r.updated_at.isoformat(),
        }
        for r in rows
    ]
    next_cursor = rows[-1].sku if len(rows) == limit else None
    return JSONResponse({"items": items, "next_cursor": next_cursor})
