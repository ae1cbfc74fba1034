"""The description at ``/openapi.json`` says what the server does.

A client written from the description alone must meet no surprise: every
status the server can answer is declared where it can occur, every header
it requires is required there, every body it answers fits its schema. The
last test holds the server to that with schemathesis, against the app in
this process (SQLite, the in-process gate), every request signed as a real
client signs it, within a fixed budget of cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.e2e.conftest import ACQUIRER, Api, OpenApi, assert_error

# What a contract violation is: a 5xx, an answer outside its schema (status, media type,
# headers, body), an invalid request accepted, a method refused without ``Allow``.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
]
# Random cases per operation and mode, after the deterministic coverage cases
# (boundaries, wrong types, missing fields, unexpected methods): together well under a
# minute on a quiet machine.
FUZZ_EXAMPLES = 5
# Routes that require an Idempotency-Key header (a batch's items carry theirs inside).
KEYED = {
    ("post", "/v1/persons"),
    ("post", "/v1/claims"),
    ("post", "/v1/trade-in/applications"),
    ("post", "/v1/redemptions"),
    ("post", "/v1/redemptions/{redemption_id}/confirm"),
    ("post", "/v1/redemptions/{redemption_id}/void"),
    ("post", "/v1/redemptions/{redemption_id}/reverse"),
    ("post", "/v1/redemptions/{redemption_id}/refunds"),
}
SIGNING = ["X-Lequan-App", "X-Lequan-Timestamp", "X-Lequan-Nonce", "X-Lequan-Signature"]


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_a_method_a_path_does_not_take_is_405_naming_those_it_does(api: Api) -> None:
    for method, path, allowed in (
        ("DELETE", "/v1/claims", "POST"),
        ("PUT", "/v1/redemptions/r1", "GET"),
        # Two routes share this path: both methods are named, not the first route's.
        ("DELETE", "/v1/admin/campaigns", "GET, POST"),
        ("OPTIONS", "/v1/admin/campaigns/c1/approve", "POST"),
    ):
        refused = api.client.request(method, path)
        assert_error(refused, 405, "method_not_allowed")
        assert refused.headers["Allow"] == allowed, (method, path)


def test_the_description_requires_what_the_server_requires(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["operator"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An operator's token (`lequan operator add`).",
    }
    for header in SIGNING:
        assert (schemes[header]["type"], schemes[header]["in"]) == ("apiKey", "header")
    keyed = set()
    for method, path, operation in _operations(spec):
        headers = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
        if "Idempotency-Key" in headers:
            assert headers["Idempotency-Key"]["required"] is True, path
            keyed.add((method, path))
        statuses = set(operation["responses"])
        if path.startswith("/v1/admin/"):
            assert operation["security"] == [{"operator": []}, {"screen_session": []}], path
            assert {"401", "403", "413", "422", "503"} <= statuses, path
        elif path in ("/v1/screen/whoami", "/v1/screen/snapshot", "/v1/screen/stream"):
            assert operation["security"] == [{"screen_session": []}], path
            assert "401" in statuses, path
        elif path.startswith(("/v1/screen/session", "/v1/public/")):
            assert "security" not in operation, path
        elif path.startswith("/v1/"):
            assert operation["security"] == [{header: [] for header in SIGNING}], path
            assert {"401", "403", "413", "422", "429", "503"} <= statuses, path
            for status in ("429", "503"):
                assert operation["responses"][status]["headers"]["Retry-After"]["required"]
        else:
            assert "security" not in operation, path
    assert keyed == KEYED
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_the_description_states_this_deployments_batch_limit(open_api: OpenApi) -> None:
    api = open_api(claim_batch_items_max=50)
    spec = api.client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["BatchClaimIn"]["properties"]["items"]["maxItems"] == 50
    key = schemas["BatchClaimItemIn"]["properties"]["idempotency_key"]
    assert key["pattern"] == "^[A-Za-z0-9_.:-]+$"
    api.register(1)
    item = {**Api.claim_body("u1"), "idempotency_key": "k"}
    items = [{**item, "idempotency_key": f"k-{n}"} for n in range(51)]
    for sent in (items, [*items, *items]):  # one limit, one code, however far past it
        refused = api.post("wechat", "/v1/claims/batch", {"items": sent}, key=None)
        assert_error(refused, 422, "batch_too_large")


# -- the server against its description -----------------------------------------------


def _client_of(api: Api, case: Case[Any]) -> Callable[..., httpx.Response]:
    """How a client of this operation sends: signed as a channel or an acquirer, or
    with an operator's token (a maker's: the other roles are refused 403 alike)."""
    tags = case.operation.definition.raw.get("tags", [])
    auth = {"channel": api.auth("wechat"), "acquirer": api.auth(ACQUIRER)}
    signer = next((auth[tag] for tag in tags if tag in auth), None)
    token = {"Authorization": f"Bearer {api.world.tokens['alice']}"} if "admin" in tags else {}

    def send(**request: Any) -> httpx.Response:
        # Header values as a client puts them on the wire: UTF-8 bytes.
        headers = {**(request.pop("headers", None) or {}), **token}
        raw = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}
        response: httpx.Response = api.client.request(**request, headers=raw, auth=signer)
        return response

    return send


def _check(api: Api, case: Case[Any]) -> None:
    """Send one case as its client would, and hold the answer to the description."""
    sent = case.as_transport_kwargs(base_url="http://testserver")
    request: dict[str, Any] = {
        k: sent[k] for k in ("method", "url", "headers", "params") if k in sent
    }
    if "json" in sent:
        request["json"] = sent["json"]
    elif "data" in sent:
        request["content"] = sent["data"]
    response = _client_of(api, case)(**request)
    case.validate_response(response, checks=CHECKS)


def test_the_api_keeps_to_its_description(api: Api) -> None:
    schema = schemathesis.openapi.from_dict(api.client.get("/openapi.json").json())
    assert isinstance(schema, OpenApiSchema)
    # The signing headers are the client's to compute, never generated or left out.
    schema.config.generation.update(with_security_parameters=False)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the description is valid OpenAPI
        operations.append(result.ok())
    assert len(operations) == 60
    for operation in operations:
        for case in schema.iter_coverage_cases(
            operation, generation_modes=modes, generation_config=schema.config.generation
        ):
            _check(api, case)
        for mode in modes:

            @settings(
                max_examples=FUZZ_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Case[Any]) -> None:
                _check(api, case)

            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to break
