"""The FastAPI application factory: routes, errors, request ids, canonical
log lines, Prometheus metrics, health, and the OpenAPI docs with assets
served by the app itself (no CDN at run time).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException
from starlette.routing import Match

import lequan
from lequan.bootstrap import Platform
from lequan.http import envelope
from lequan.http.admission import InFlightLimit, TokenBuckets
from lequan.http.claims import ClaimDesk
from lequan.http.deps import NonceChecks
from lequan.http.envelope import Metrics, error_answer
from lequan.http.errors import install_error_handlers, json_response
from lequan.http.fastpath import FastBatchClaims, FastClaims, FastRedemptions
from lequan.http.risk_schemas import ReviewDecisionIn, RiskBlacklistIn
from lequan.http.routes import acquirer, admin, channel, fairness, risk, screen
from lequan.http.schemas import (
    AppIn,
    BatchClaimIn,
    BlacklistIn,
    BlacklistRemoveIn,
    ClaimIn,
    EmptyIn,
    ErrorOut,
    MerchantSwitchIn,
    OutboxReplayIn,
    PersonIn,
    QuoteIn,
    RedeemIn,
    RedemptionSwitchIn,
    RefundIn,
)
from lequan.http.scrape import exposition
from lequan.metrics import forget_this_worker
from lequan.services.live import record_answer
from lequan.services.screen import Screen

__all__ = ["create_app"]

log = structlog.get_logger("lequan.http")


class BodyLimit:
    """Refuse a body larger than the limit however it is sent (Content-Length or chunked),
    one that does not arrive in time, and one too many at once.

    The body is read here, up to the limit, and handed on whole; past the
    limit the answer is ``413 body_too_large`` and the rest is never read.
    Bodies are read before anyone checked who sent them, so reading one is
    bounded in time (the whole body within ``body_timeout_s``, else ``408
    request_timeout``) and all of them in memory: at most
    ``buffered_bytes_max`` bytes of bodies are being received at once, and a
    chunk that would go past that is answered ``429 overloaded`` (a body
    alone is always let reach ``body_bytes_max``).
    """

    def __init__(
        self,
        app: Any,
        *,
        body_bytes_max: int,
        body_timeout_s: float = 30.0,
        buffered_bytes_max: int = 64_000_000,
    ) -> None:
        self.app = app
        self.body_bytes_max = body_bytes_max
        self.body_timeout_s = body_timeout_s
        self.buffered_bytes_max = buffered_bytes_max
        self.buffered_bytes = 0  # of every body being received now, in this process

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        break  # the client went away; let the app see it
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.body_bytes_max:
                        await _refuse(
                            send,
                            413,
                            {
                                "code": "body_too_large",
                                "message": f"a request body is at most {self.body_bytes_max} bytes",
                            },
                        )
                        return
                    others = self.buffered_bytes - (size - len(chunk))
                    if others and self.buffered_bytes + len(chunk) > self.buffered_bytes_max:
                        await _refuse(
                            send,
                            429,
                            {
                                "code": "overloaded",
                                "message": "too many request bodies are being received at once",
                            },
                            retry_after_s=1,
                        )
                        return
                    self.buffered_bytes += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        message = {
                            "type": "http.request",
                            "body": b"".join(chunks),
                            "more_body": False,
                        }
                        break
        except TimeoutError:
            await _refuse(
                send,
                408,
                {
                    "code": "request_timeout",
                    "message": f"a request body must arrive within {self.body_timeout_s:g} s",
                },
            )
            return
        finally:
            # Counted while it is received: once whole it is the request's, checked next.
            self.buffered_bytes -= sum(len(chunk) for chunk in chunks)
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if not delivered:
                delivered = True
                return message
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(
    send: Any, status: int, body: dict[str, Any], *, retry_after_s: int | None = None
) -> None:
    """Answer before the app saw the request: the error body, logged, the connection closed."""
    request_id = uuid.uuid4().hex
    log.info("request", status=status, request_id=request_id, code=body["code"])
    extra = () if retry_after_s is None else ((b"retry-after", str(retry_after_s).encode()),)
    await _send_json(send, status, {**body, "request_id": request_id}, request_id, extra)


async def _send_json(
    send: Any,
    status: int,
    body: dict[str, Any],
    request_id: str,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
                (b"x-request-id", request_id.encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# The bodies routes parse themselves (``envelope.parse_body``: every JSON body, so that
# every route reads JSON alike), described in their ``openapi_extra`` by reference to these.
PARSED_BODIES = (
    PersonIn,
    ClaimIn,
    BatchClaimIn,
    QuoteIn,
    RedeemIn,
    EmptyIn,
    RefundIn,
    AppIn,
    BlacklistIn,
    BlacklistRemoveIn,
    OutboxReplayIn,
    RedemptionSwitchIn,
    MerchantSwitchIn,
    screen.SessionIn,
    ReviewDecisionIn,
    RiskBlacklistIn,
)
# The headers that sign a channel's or an acquirer's call (``signing.py``), declared as
# security schemes all four of which a call presents: what the call says, not its fields.
SIGNING_HEADERS = {
    "X-Lequan-App": "The calling app's id.",
    "X-Lequan-Timestamp": (
        "Unix seconds, a plain decimal integer, within 300 s of the server's clock."
    ),
    "X-Lequan-Nonce": "8-64 characters of `[A-Za-z0-9_-]`, new for every request.",
    "X-Lequan-Signature": (
        "HMAC-SHA256 of the canonical string (method, target, timestamp, nonce, body "
        "digest), as 64 lowercase hex digits: see docs/api.md."
    ),
}
_SIGNED_TAGS = frozenset({"channel", "acquirer"})
# Routes whose requests are counted but not logged: probes and scrapes.
_QUIET_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})


class _LequanAPI(FastAPI):
    """FastAPI with ASGI layers in front of its whole middleware stack (``front``,
    outermost first): the body limit, then the lean routes (``http/fastpath.py``).
    The hottest requests skip every framework layer; those layers (error wrapper,
    request context) are paid only by the routes the framework answers."""

    front: tuple[Callable[[Any], Any], ...] = ()

    def build_middleware_stack(self) -> Any:
        app = super().build_middleware_stack()
        for wrap in reversed(self.front):
            app = wrap(app)
        return app

    def openapi(self) -> dict[str, Any]:
        """The framework's description, completed with what the server does besides:
        the bodies routes parse themselves among its schemas, the batch limit of this
        deployment, the signing headers, the operator's token, and the Idempotency-Key
        the server requires."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        spec = super().openapi()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        missing = [model for model in PARSED_BODIES if model.__name__ not in schemas]
        for model in missing:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        spec["components"]["schemas"] = dict(sorted(schemas.items()))
        settings = self.state.platform.rt.settings
        items = schemas["BatchClaimIn"]["properties"]["items"]
        items["maxItems"] = settings.claim_batch_items_max
        items["description"] = (
            f"At most {settings.claim_batch_items_max} (`claim_batch_items_max`); "
            "more are refused `422 batch_too_large`, and none is claimed."
        )
        security = spec["components"].setdefault("securitySchemes", {})
        security["operator"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An operator's token (`lequan operator add`).",
        }
        security["screen_session"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": "lequan_session",
            "description": "The big screen's session (`POST /v1/screen/session` with an "
            "operator's token); a change made with it also needs `X-Lequan-CSRF: 1`.",
        }
        for header, text in SIGNING_HEADERS.items():
            security[header] = {
                "type": "apiKey",
                "in": "header",
                "name": header,
                "description": text,
            }
        for operations in spec["paths"].values():
            for operation in operations.values():
                _describe_operation(operation)
        self.openapi_schema = spec
        return spec


def _describe_operation(operation: dict[str, Any]) -> None:
    """One operation as the server answers it: a signed call declares the signing
    headers, an operator's call the bearer token, and the Idempotency-Key is
    required (the server refuses a call without one, ``idempotency_key_required``)."""
    tags = set(operation.get("tags", ()))
    parameters = operation.setdefault("parameters", [])
    for parameter in parameters:
        if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
            parameter["required"] = True
            parameter["schema"] = {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "pattern": "^[A-Za-z0-9_.:-]+$",
            }
    if tags & _SIGNED_TAGS:
        operation["security"] = [{header: [] for header in SIGNING_HEADERS}]
    elif "admin" in tags:
        # The token, or the big screen's session (a change then needs X-Lequan-CSRF: 1).
        operation["security"] = [{"operator": []}, {"screen_session": []}]
    elif "screen" in tags and operation.get("operationId", "").startswith(
        ("whoami", "snapshot", "stream")
    ):
        operation["security"] = [{"screen_session": []}]
        # The header is the security scheme's, not a parameter of its own.
        parameters[:] = [p for p in parameters if p["name"].lower() != "authorization"]
    if not parameters:
        del operation["parameters"]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """The methods the path's resource takes, as the description has them: Starlette
    names only the first matching route's (``GET`` and ``POST /v1/admin/campaigns`` are
    two routes), and a path two templates match (``/v1/redemptions/quote`` and
    ``/v1/redemptions/{redemption_id}``) is the resource of the one with fewer
    parameters. A path the description leaves out: every method a route answers there.
    """
    path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
    documented = [
        (template, methods)
        for template, methods in request.app.openapi()["paths"].items()
        if re.fullmatch(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)), path)
    ]
    if documented:
        _, methods = min(documented, key=lambda found: found[0].count("{"))
        return ", ".join(sorted(method.upper() for method in methods))
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def create_app(
    platform: Platform, *, close_on_shutdown: bool = True, fast_path: bool = True
) -> FastAPI:
    """The HTTP API of ``platform``.

    ``fast_path=False`` leaves out the lean routes in front of the framework
    (tests: the framework's routes must give the same answers).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        nonces.close()
        claims.close()
        if close_on_shutdown:
            platform.close()
            forget_this_worker()

    app = _LequanAPI(
        title="lequan",
        version=lequan.__version__,
        summary="Government consumption vouchers: channel, acquirer and admin APIs.",
        description=(
            "Channel and acquirer calls are signed (see docs/api.md): headers X-Lequan-App, "
            "X-Lequan-Timestamp, X-Lequan-Nonce, X-Lequan-Signature. Mutating calls take an "
            "Idempotency-Key. Errors are JSON {code, message, request_id}."
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # Observability is Prometheus (/metrics) and structured logs; FastAPI's
        # own OpenTelemetry hooks would look up their providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.platform = platform
    metrics = Metrics(platform.rt.metrics)
    app.state.metrics = metrics
    app.state.screen = Screen(platform.rt)
    scrape = app.state.exposition = exposition(
        platform,
        app.state.screen,
        extra=[risk.RulesCollector(platform.risk)] if platform.risk is not None else [],
    )
    settings = platform.rt.settings
    app.state.throttle = TokenBuckets(rate_per_s=settings.app_rate_per_s, burst=settings.app_burst)
    app.state.claim_admission = InFlightLimit(
        settings.claim_inflight_max, wait_s=settings.claim_inflight_wait_ms / 1000
    )
    claims = app.state.claims = ClaimDesk(
        platform, admission=app.state.claim_admission, throttle=app.state.throttle
    )
    nonces = app.state.nonce_checks = NonceChecks(
        platform.rt.nonces, inline=platform.rt.nonces.in_process
    )
    body_max = platform.rt.settings.request_body_bytes_max

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = request.state.request_id = envelope.request_id(
            request.headers.get("x-request-id")
        )
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as error:  # answered here, within the request's metrics and log line
            response = json_response(request, *error_answer(error))
        elapsed_s = time.perf_counter() - started
        route_path = getattr(request.scope.get("route"), "path", "unmatched")
        response.headers["X-Request-Id"] = request_id
        state = request.state
        metrics.route(route_path, request.method, logged=route_path not in _QUIET_ROUTES).record(
            status=response.status_code,
            elapsed_s=elapsed_s,
            request_id=request_id,
            app_id=getattr(state, "app_id", None),
            app_kind=getattr(state, "app_kind", None),
            body=getattr(state, "answered", None),
            operator_id=getattr(state, "operator_id", None),
            outcome=getattr(state, "outcome", None),
            counts=getattr(state, "claim_outcomes", envelope.NO_COUNTS),
        )
        app_id = getattr(state, "app_id", None)
        if app_id is not None:
            record_answer(
                platform.rt.pulse,
                int(platform.rt.clock.now().timestamp()),
                app_id,
                response.status_code,
                getattr(state, "error_code", None),
            )
        structlog.contextvars.clear_contextvars()
        return response

    install_error_handlers(app)

    async def refused_by_the_framework(request: Request, error: Exception) -> Response:
        """The framework's own refusals, in the envelope; a 405 says which methods the
        path takes (``Allow``, RFC 9110)."""
        status, body, headers = error_answer(error)
        if status == 405:
            headers = (*headers, (b"allow", _allowed_methods(request).encode()))
        return json_response(request, status, body, headers)

    app.add_exception_handler(HTTPException, refused_by_the_framework)
    app.front = (
        partial(
            BodyLimit,
            body_bytes_max=body_max,
            body_timeout_s=settings.http_body_timeout_s,
            buffered_bytes_max=settings.request_body_buffer_bytes_max,
        ),
    )
    if fast_path:
        lean = {
            "platform": platform,
            "throttle": app.state.throttle,
            "nonces": nonces,
            "metrics": metrics,
        }
        app.front += (
            partial(FastClaims, **lean, claims=claims),
            partial(FastBatchClaims, **lean, claims=claims),
            partial(FastRedemptions, **lean),
        )
    app.include_router(channel.router)
    app.include_router(acquirer.router)
    app.include_router(admin.router)
    app.include_router(risk.router)
    app.include_router(fairness.router)
    app.include_router(screen.router)
    app.state.stream_slots = screen.StreamSlots(
        total_max=settings.screen_streams_max,
        per_operator_max=settings.screen_streams_per_operator_max,
    )

    static = resources.files("lequan.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="lequan API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
        )

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="The store and the gate answer",
        responses={503: {"model": ErrorOut, "description": "`not_ready`: `details` says which"}},
    )
    def readyz(request: Request) -> Response:
        problems: dict[str, Any] = {}
        try:
            platform.rt.store.ping()
        except Exception as error:
            problems["store"] = type(error).__name__
        try:
            platform.rt.gate.remaining("readyz:probe", "probe")
        except Exception as error:
            problems["gate"] = type(error).__name__
        rebuilding = platform.gatekeeper.rebuilding()
        if rebuilding:  # claims to these answer gate_rebuilding until their fence passes
            problems["gate_rebuilding"] = rebuilding
        if problems:
            return json_response(
                request,
                503,
                {"code": "not_ready", "message": "a dependency is down", "details": problems},
            )
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics, in the text exposition format",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus() -> Response:
        # On a worker thread: the scrape reads the store, the gate and every worker's file.
        return Response(scrape.latest(), media_type=CONTENT_TYPE_LATEST)

    return app
