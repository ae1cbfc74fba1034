"""What operators and integrators read from a running app: the OpenAPI
description, the docs page with its self-hosted assets, health, readiness
and Prometheus metrics.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import CAMPAIGN, Api, OpenApi, assert_error
from tests.factories import dining_config

FIXED_PATHS = {
    "/v1/persons": "post",
    "/v1/claims": "post",
    "/v1/claims/batch": "post",
    "/v1/persons/{channel_user_id}/vouchers": "get",
    "/v1/redemptions/quote": "post",
    "/v1/redemptions": "post",
    "/v1/redemptions/{redemption_id}/confirm": "post",
    "/v1/redemptions/{redemption_id}/void": "post",
    "/v1/redemptions/{redemption_id}/reverse": "post",
    "/v1/redemptions/{redemption_id}/refunds": "post",
    "/v1/admin/campaigns": "post",
    "/v1/admin/campaigns/{campaign_id}/approve": "post",
    "/v1/admin/campaigns/{campaign_id}/activate": "post",
    "/v1/admin/campaigns/{campaign_id}/pause": "post",
    "/v1/admin/campaigns/{campaign_id}/resume": "post",
    "/v1/admin/campaigns/{campaign_id}/end": "post",
    "/v1/admin/campaigns/{campaign_id}/rounds/{round_id}/start": "post",
    "/v1/admin/merchants": "post",
    "/v1/admin/apps": "post",
    "/v1/admin/blacklist": "post",
}


def test_openapi_lists_every_fixed_path(api: Api) -> None:
    response = api.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    for path, method in FIXED_PATHS.items():
        assert path in spec["paths"], path
        assert method in spec["paths"][path], (path, method)
    # Mutating channel and acquirer calls document their Idempotency-Key.
    for path in ("/v1/persons", "/v1/claims", "/v1/redemptions"):
        names = {p["name"] for p in spec["paths"][path]["post"].get("parameters", [])}
        assert "Idempotency-Key" in names, path
    # Errors are documented as {code, message, request_id}.
    error = spec["components"]["schemas"]["ErrorOut"]
    assert {"code", "message", "request_id"} <= set(error["required"])
    imports = spec["paths"]["/v1/admin/campaigns"]["post"]["requestBody"]["content"]
    assert "application/yaml" in imports
    assert "text/csv" in spec["paths"]["/v1/admin/merchants"]["post"]["requestBody"]["content"]


def test_docs_use_only_self_hosted_assets(api: Api) -> None:
    response = api.client.get("/docs")
    assert response.status_code == 200, response.text
    page = response.text
    assert not re.search(r"https?://", page), "the docs page must not load from a CDN"
    assets = set(re.findall(r"""["'](/static/[^"']+)["']""", page))
    assert any(a.endswith(".js") for a in assets), assets
    assert any(a.endswith(".css") for a in assets), assets
    for asset in assets:
        served = api.client.get(asset)
        assert served.status_code == 200, asset
        assert served.content, asset
    assert "/openapi.json" in page
    assert_error(api.client.get("/static/vendor/swagger-ui/missing.js"), 404, "not_found")


def test_health_and_readiness(api: Api) -> None:
    health = api.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = api.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def _samples(metrics: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == name
    ]


def _count(metrics: str, route: str, method: str, status: int) -> float:
    wanted = {"route": route, "method": method, "status": str(status)}
    return sum(
        v for labels, v in _samples(metrics, "lequan_http_requests_total") if labels == wanted
    )


def _claims(metrics: str, outcome: str) -> float:
    return sum(
        v
        for labels, v in _samples(metrics, "lequan_claims_total")
        if labels == {"outcome": outcome}
    )


def test_metrics_count_requests(api: Api) -> None:
    before = api.client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    user = api.register(1)
    api.claim_voucher(user)
    assert_error(api.claim(user), 409, "already_claimed")
    assert_error(api.claim(user), 409, "already_claimed")
    api.wallet(user)
    metrics = api.client.get("/metrics").text
    assert _count(metrics, "/v1/persons", "POST", 201) == 1
    assert _count(metrics, "/v1/claims", "POST", 201) == 1
    assert _count(metrics, "/v1/claims", "POST", 409) == 2
    wallet_route = "/v1/persons/{channel_user_id}/vouchers"
    assert _count(metrics, wallet_route, "GET", 200) == 1
    assert _claims(metrics, "issued") == 1
    assert _claims(metrics, "already_claimed") == 2
    # A batch counts as one request, and each of its items under its outcome.
    other = api.register(2)
    items = [
        {
            "channel_user_id": u,
            "campaign_id": "sh-dining-2024",
            "round_id": "r1",
            "template_id": "d300-90",
            "location_region": "310104",
            "idempotency_key": f"batch-{n}",
        }
        for n, u in enumerate([user, other, "nobody"])
    ]
    batch = api.post("wechat", "/v1/claims/batch", {"items": items}, key=None)
    assert batch.status_code == 200, batch.text
    assert batch.json()["outcomes"] == {"already_claimed": 1, "issued": 1, "not_registered": 1}
    metrics = api.client.get("/metrics").text
    assert _count(metrics, "/v1/claims/batch", "POST", 200) == 1
    assert _claims(metrics, "issued") == 2
    assert _claims(metrics, "already_claimed") == 3
    assert _claims(metrics, "not_registered") == 1
    assert "lequan_http_request_seconds_bucket" in metrics
    # Unmatched paths are counted under one label, not one per path.
    api.client.get("/v1/nothing/1")
    api.client.get("/v1/nothing/2")
    after = api.client.get("/metrics").text
    assert _count(after, "unmatched", "GET", 404) == 2


def test_every_response_carries_a_request_id(api: Api) -> None:
    response = api.client.get("/healthz", headers={"X-Request-Id": "trace-123"})
    assert response.headers["X-Request-Id"] == "trace-123"
    error = api.client.get("/v1/persons/u1/vouchers", headers={"X-Request-Id": "trace-456"})
    assert assert_error(error, 401, "missing_signature")["request_id"] == "trace-456"
    generated = api.client.get("/healthz").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def _one(metrics: str, name: str, **labels: str) -> float:
    found = [v for got, v in _samples(metrics, name) if labels.items() <= got.items()]
    assert found, (name, labels)
    return sum(found)


def test_metrics_show_the_stock_the_commits_and_the_gate(open_api: OpenApi) -> None:
    api = open_api(dining_config(stock={"wechat": {"d300-90": 7}}), claim_queue_max=300)
    user = api.register(1)
    api.claim_voucher(user)
    assert_error(api.claim(user), 409, "already_claimed")
    metrics = api.client.get("/metrics").text
    pool = {"campaign": CAMPAIGN, "round": "r1", "channel": "wechat", "template": "d300-90"}
    assert _one(metrics, "lequan_stock_initial", **pool) == 7
    assert _one(metrics, "lequan_stock_remaining", **pool) == 6
    # The one voucher was committed in one batch; nothing waits now.
    assert _one(metrics, "lequan_commit_batch_claims_sum") == 1
    assert _one(metrics, "lequan_commit_seconds_count") == 1
    assert _one(metrics, "lequan_commit_queue_claims") == 0
    assert _one(metrics, "lequan_commit_queue_claims_max") == 300
    assert _one(metrics, "lequan_gate_seconds_count", call="reserve") >= 1
    assert _one(metrics, "lequan_gate_seconds_count", call="settle") >= 1
    # Errors by their stable code; the calling channel by status class.
    assert _one(metrics, "lequan_http_errors_total", route="/v1/claims") == 1
    assert _one(metrics, "lequan_http_errors_total", code="already_claimed") == 1
    by_class = {"app": "wechat", "kind": "channel"}
    assert _one(metrics, "lequan_app_requests_total", **by_class, **{"class": "2xx"}) == 2
    assert _one(metrics, "lequan_app_requests_total", **by_class, **{"class": "4xx"}) == 1
    api.client.get("/v1/nothing")
    after = api.client.get("/metrics").text
    assert _one(after, "lequan_http_errors_total", route="unmatched", code="not_found") == 1
    assert _one(after, "lequan_http_request_seconds_count", route="/v1/claims", status="409") == 1


def test_paused_campaigns_show_their_stock_ended_ones_do_not(api: Api) -> None:
    assert api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/pause").status_code == 200
    metrics = api.client.get("/metrics").text
    assert _one(metrics, "lequan_stock_remaining", campaign=CAMPAIGN) > 0
    assert api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/end").status_code == 200
    metrics = api.client.get("/metrics").text
    assert not _samples(metrics, "lequan_stock_remaining")
