"""One HTTP envelope for every answer, however the request was answered.

The framework's handlers and middleware (``errors.py``, ``app.py``) and the
lean routes in front of the framework (``fastpath.py``) build their answers
from these pieces, so the two paths cannot drift apart (``Retry-After`` once
did):

- ``error_answer``: an exception as status, body and headers, ``Retry-After``
  taken from the error itself;
- ``parse_body`` and ``invalid_request``: a JSON body validated in one pass,
  and the 422 ``invalid_request`` body of a validation's errors;
- ``render``: an answer's bytes, every error body naming its request;
- ``request_id`` and ``RouteRecord``: the request's id, its metrics and its
  one log line;
- ``idempotency_key``: the Idempotency-Key header, checked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, TypeVar

import structlog
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from lequan.bootstrap import Platform
from lequan.domain.error_codes import ERRORS, ErrorCode
from lequan.domain.errors import InvalidInput, LequanError, Unavailable
from lequan.ports import StoreUnavailable, UnstorableValue
from lequan.services.idempotency import RenderedBody, validate_key
from lequan.services.views import error_body, http_status

__all__ = [
    "NO_COUNTS",
    "NO_HEADERS",
    "Answered",
    "Metrics",
    "RawHeaders",
    "RouteRecord",
    "error_answer",
    "error_headers",
    "idempotency_key",
    "invalid_request",
    "parse_body",
    "render",
    "replayed_headers",
    "request_id",
]

log = structlog.get_logger("lequan.http")

M = TypeVar("M", bound=BaseModel)

# Headers as ASGI sends them: lower-case names, bytes.
RawHeaders = Sequence[tuple[bytes, bytes]]
# An answer before it is rendered: status, body (no request id yet), extra headers.
Answered = tuple[int, Mapping[str, Any], RawHeaders]

NO_HEADERS: RawHeaders = ()
NO_COUNTS: Mapping[str, int] = {}  # never written: the claim outcomes of a request that has none
_REPLAYED: RawHeaders = ((b"idempotent-replayed", b"true"),)

# What the framework's own refusals (no route, wrong method, ...) are called, by status.
_HTTP_CODES: dict[int, ErrorCode] = {
    spec.status: code for code, spec in ERRORS.items() if spec.framework and spec.status is not None
}
# A value the store cannot hold slipped past validation: still the caller's input.
_UNSTORABLE = InvalidInput("invalid_request", "a value in the request cannot be stored")
# The store is unreachable or timed out: nothing was done; say when to retry.
_STORE_DOWN = Unavailable("store_unavailable", "the store is unavailable; retry shortly")
_INTERNAL = {"code": "internal_error", "message": "an unexpected error; it has been logged"}


def error_answer(error: Exception) -> Answered:
    """The answer to a request that failed with ``error``: every failure the API can
    give, as ``{code, message}`` with its status. Bad input never becomes a 500."""
    if isinstance(error, LequanError):
        return http_status(error), error_body(error), error_headers(error)
    if isinstance(error, RequestValidationError):
        return 422, invalid_request(error.errors()), NO_HEADERS
    if isinstance(error, HTTPException):
        code: ErrorCode = _HTTP_CODES.get(error.status_code, ErrorCode.HTTP_ERROR)
        return error.status_code, {"code": code, "message": str(error.detail)}, NO_HEADERS
    if isinstance(error, UnstorableValue):
        log.warning("unstorable_input", error_type=str(error))
        return error_answer(_UNSTORABLE)
    if isinstance(error, StoreUnavailable):
        log.warning("store_unavailable", error_type=str(error))
        return error_answer(_STORE_DOWN)
    log.exception("unhandled_error", error_type=type(error).__name__)
    return 500, _INTERNAL, NO_HEADERS


def error_headers(error: LequanError) -> RawHeaders:
    """A refusal's headers: one for now (``Unavailable``) says when to come back."""
    if isinstance(error, Unavailable):
        return ((b"retry-after", str(error.retry_after_s).encode()),)
    return NO_HEADERS


def replayed_headers(replayed: bool) -> RawHeaders:
    """An idempotent call's headers: a retry's answer says it is the first one's, replayed."""
    return _REPLAYED if replayed else NO_HEADERS


def parse_body(model: type[M], raw: bytes) -> M:
    """The request's JSON body as ``model``, parsed and validated in one pass, or the
    framework's own validation error (``invalid_request``) whichever path asked."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        # Located as the framework locates a body's errors, so both read alike.
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


def invalid_request(errors: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The 422 body of a validation's errors: at most 20 named, the first five in the message."""
    problems = [
        {"field": _field(e.get("loc", ())), "rule": str(e.get("msg", ""))}
        for e in islice(errors, 20)
    ]
    message = "; ".join(f"{p['field']}: {p['rule']}" for p in problems[:5])
    return {"code": "invalid_request", "message": message, "details": {"errors": problems}}


def _field(loc: Sequence[Any]) -> str:
    """Where a value failed, as a dotted path: a body's fields without the ``body`` in
    front; the body itself, or a query, path or header value, by that name."""
    parts = loc[1:] if loc and loc[0] == "body" else loc
    return ".".join(str(p) for p in parts) or "body"


def render(status: int, body: Mapping[str, Any], request_id: str) -> bytes:
    """An answer's JSON. An error names its request; a body rendered once already (an
    issued claim's, a stored answer's) goes as it is."""
    if status >= 400:
        body = {**body, "request_id": request_id}
    if isinstance(body, RenderedBody):
        return body.text.encode()
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def request_id(sent: str | None) -> str:
    """The request's id: the caller's ``X-Request-Id`` (its first 64 characters) or a new
    one, bound to every log event of the request."""
    found = (sent or "")[:64] or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=found)
    return found


def idempotency_key(platform: Platform, sent: str | None) -> str:
    """The ``Idempotency-Key`` header of a mutating call, checked."""
    return validate_key(sent, chars_max=platform.rt.settings.idempotency_key_chars_max)


class Metrics:
    """The app's own registry, so two apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lequan_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "lequan_http_request_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.claims = Counter(
            "lequan_claims", "Claim answers by outcome", ["outcome"], registry=self.registry
        )
        # Prometheus children by label value: ``labels()`` per request costs more than the
        # increment (a handful of routes, statuses and outcomes).
        self._routes: dict[tuple[str, str], RouteRecord] = {}
        self._outcomes: dict[str, Any] = {}

    def route(self, route: str, method: str, *, logged: bool = True) -> RouteRecord:
        """The record of one route's requests with one method."""
        key = (route, method)
        record = self._routes.get(key)
        if record is None:
            if len(self._routes) >= _ROUTES_MAX:  # an unmatched route takes any method
                self._routes.clear()
            record = self._routes[key] = RouteRecord(self, route, method, logged=logged)
        return record

    def count_claims(self, counts: Mapping[str, int]) -> None:
        for outcome, count in counts.items():
            claims = self._outcomes.get(outcome)
            if claims is None:
                claims = self._outcomes[outcome] = self.claims.labels(outcome)
            claims.inc(count)


_ROUTES_MAX = 1000


class RouteRecord:
    """What every request of one route leaves behind: its metrics and one log line."""

    def __init__(self, metrics: Metrics, route: str, method: str, *, logged: bool) -> None:
        self._metrics = metrics
        self._route = route
        self._method = method
        self._logged = logged
        self._requests: dict[int, Any] = {}
        self._seconds = metrics.seconds.labels(route)

    def record(
        self,
        *,
        status: int,
        elapsed_s: float,
        request_id: str,
        app_id: str | None,
        operator_id: str | None = None,
        outcome: str | None = None,
        counts: Mapping[str, int] = NO_COUNTS,
    ) -> None:
        """Count the request, time it, count its claims by outcome, and log it."""
        requests = self._requests.get(status)
        if requests is None:
            requests = self._requests[status] = self._metrics.requests.labels(
                self._route, self._method, str(status)
            )
        requests.inc()
        self._seconds.observe(elapsed_s)
        if counts:
            self._metrics.count_claims(counts)
        if self._logged:
            log.info(
                "request",
                method=self._method,
                route=self._route,
                status=status,
                duration_ms=round(elapsed_s * 1000, 2),
                app_id=app_id,
                operator_id=operator_id,
                outcome=outcome,
                request_id=request_id,
            )
