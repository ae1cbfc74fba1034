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
- ``request_id`` and ``RouteRecord``: the request's id, its metrics (on the
  runtime's instruments, ``lequan.metrics``) and its one log line;
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
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from lequan.bootstrap import Platform
from lequan.domain.error_codes import ERRORS, ErrorCode
from lequan.domain.errors import InvalidInput, LequanError, Unavailable
from lequan.domain.redemption_states import RedemptionStatus
from lequan.metrics import Instruments
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
    """The HTTP layer's records, on the runtime's instruments (``lequan.metrics``).

    Prometheus children are cached by label value: ``labels()`` per request
    costs more than the increment. Every cache is bounded: routes by the app's
    templates (and at most ``_ROUTES_MAX``), statuses and error codes by their
    closed sets, apps by registration (and at most ``_APPS_MAX`` per route).
    """

    def __init__(self, instruments: Instruments) -> None:
        self.instruments = instruments
        self._routes: dict[tuple[str, str], RouteRecord] = {}
        self._outcomes: dict[str, Any] = {}

    @property
    def registry(self) -> CollectorRegistry:
        """This runtime's own figures (not the other workers')."""
        return self.instruments.registry

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
                claims = self._outcomes[outcome] = self.instruments.claims.labels(outcome)
            claims.inc(count)


_ROUTES_MAX = 1000
_APPS_MAX = 10_000
# An error answer's code as a label: one of the closed set, or "other" (a body the
# framework wrote without one).
_ERROR_CODES = frozenset(code.value for code in ErrorCode)
_OTHER = "other"
# The acquirer's calls that change a redemption (not the quote, not a read): counted
# per acquirer by outcome, the redemption's status after the call or the error code.
_REDEMPTION_ROUTES = frozenset(
    {
        "/v1/redemptions",
        "/v1/redemptions/{redemption_id}/confirm",
        "/v1/redemptions/{redemption_id}/void",
        "/v1/redemptions/{redemption_id}/reverse",
        "/v1/redemptions/{redemption_id}/refunds",
    }
)
_REDEMPTION_STATUSES = frozenset(status.value for status in RedemptionStatus)
_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def _error_code(body: Mapping[str, Any] | None) -> str:
    code = body.get("code") if body is not None else None
    return code if code in _ERROR_CODES else _OTHER


class RouteRecord:
    """What every request of one route leaves behind: its metrics and one log line."""

    def __init__(self, metrics: Metrics, route: str, method: str, *, logged: bool) -> None:
        self._metrics = metrics
        self._instruments = metrics.instruments
        self._route = route
        self._method = method
        self._logged = logged
        self._by_status: dict[int, tuple[Any, Any]] = {}  # (requests, seconds) children
        self._errors: dict[str, Any] = {}
        self._apps: dict[str, dict[int, Any]] = {}
        self._redemptions: dict[str, dict[str, Any]] | None = (
            {} if method == "POST" and route in _REDEMPTION_ROUTES else None
        )

    def record(
        self,
        *,
        status: int,
        elapsed_s: float,
        request_id: str,
        app_id: str | None,
        app_kind: str | None = None,
        body: Mapping[str, Any] | None = None,
        operator_id: str | None = None,
        outcome: str | None = None,
        counts: Mapping[str, int] = NO_COUNTS,
    ) -> None:
        """Count the request (by status, by error code, by calling app, a redemption by
        its outcome), time it, count its claims by outcome, and log it. ``body``: the
        answer's, read only for an error's code and a redemption's status."""
        children = self._by_status.get(status)
        if children is None:
            children = self._by_status[status] = self._status_children(status)
        requests, seconds = children
        requests.inc()
        seconds.observe(elapsed_s)
        code = None
        if status >= 400:
            code = _error_code(body)
            errors = self._errors.get(code)
            if errors is None:
                errors = self._errors[code] = self._instruments.http_errors.labels(
                    self._route, code
                )
            errors.inc()
        if app_id is not None:
            self._count_app(app_id, app_kind or _OTHER, status)
            if self._redemptions is not None:
                self._count_redemption(app_id, status, code, body)
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

    def _status_children(self, status: int) -> tuple[Any, Any]:
        label = str(status)
        return (
            self._instruments.http_requests.labels(self._route, self._method, label),
            self._instruments.http_seconds.labels(self._route, label),
        )

    def _count_app(self, app_id: str, kind: str, status: int) -> None:
        by_status = self._apps.get(app_id)
        if by_status is None:
            if len(self._apps) >= _APPS_MAX:
                self._apps.clear()
            by_status = self._apps[app_id] = {}
        requests = by_status.get(status)
        if requests is None:
            status_class = _STATUS_CLASSES.get(status // 100, _OTHER)
            requests = by_status[status] = self._instruments.app_requests.labels(
                app_id, kind, status_class
            )
        requests.inc()

    def _count_redemption(
        self, acquirer_id: str, status: int, code: str | None, body: Mapping[str, Any] | None
    ) -> None:
        assert self._redemptions is not None
        if code is None:
            found = body.get("status") if body is not None else None
            code = found if found in _REDEMPTION_STATUSES else _OTHER
        by_outcome = self._redemptions.get(acquirer_id)
        if by_outcome is None:
            if len(self._redemptions) >= _APPS_MAX:
                self._redemptions.clear()
            by_outcome = self._redemptions[acquirer_id] = {}
        redemptions = by_outcome.get(code)
        if redemptions is None:
            redemptions = by_outcome[code] = self._instruments.redemptions.labels(acquirer_id, code)
        redemptions.inc()
