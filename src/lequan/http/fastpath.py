"""The hottest paths (single claims, batch claims, one-step redemptions), served
without the framework's per-request cost.

``POST /v1/claims`` is the hottest route of a flash sale. Here it is a
plain ASGI handler in front of the whole FastAPI app, its middleware
included (the framework's route stays, for the exact OpenAPI description),
behind the same body limit and with the same rules in the same order:
signature, nonce, Idempotency-Key, body, then the claim. Single claims that
arrive within ``claim_coalesce_ms`` of each other are handed to the claim
service as one batch, so a thousand people pressing "claim" through one
channel cost one lookup, one gate call and one share of a group commit, as
a channel's own batch would.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from json.encoder import encode_basestring
from typing import Any

import structlog
from anyio import CapacityLimiter, to_thread
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import Headers

from lequan.bootstrap import Platform
from lequan.domain.errors import InvalidInput, LequanError, Unavailable
from lequan.http.admission import InFlightLimit, TokenBuckets
from lequan.http.coalescing import Coalescer
from lequan.http.deps import NonceChecks, authenticate, raw_target
from lequan.http.routes.acquirer import redeem_answer
from lequan.http.routes.channel import claim_hash
from lequan.http.schemas import BatchClaimIn, ClaimIn, RedeemIn
from lequan.ports import StoreUnavailable, UnstorableValue
from lequan.services.claiming import ClaimRequest, ClaimResult, issued_voucher_json
from lequan.services.idempotency import Idempotency, RenderedBody, request_hash, validate_key
from lequan.services.views import error_body, http_status

__all__ = ["FastBatchClaims", "FastClaims", "FastRedemptions"]

log = structlog.get_logger("lequan.http")

CLAIM_PATH = "/v1/claims"
BATCH_PATH = "/v1/claims/batch"
REDEMPTION_PATH = "/v1/redemptions"
_CLAIM_IN: TypeAdapter[ClaimIn] = TypeAdapter(ClaimIn)
_BATCH_CLAIM_IN: TypeAdapter[BatchClaimIn] = TypeAdapter(BatchClaimIn)
_REDEEM_IN: TypeAdapter[RedeemIn] = TypeAdapter(RedeemIn)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


# (status, body, extra headers, app id, the request's outcome for the log line, claim
# answers by outcome for the metrics)
_Answered = tuple[
    int, Mapping[str, Any], list[tuple[bytes, bytes]], str | None, str | None, Mapping[str, int]
]


# Batch claims answered at once by one process (each on a thread of its own).
BATCH_CLAIM_THREADS = 40


class _LeanRoute:
    """ASGI middleware answering one ``POST`` path itself; everything else passes through.

    Same answers as the framework's route: the JSON error body with its
    ``request_id``, ``Retry-After`` on 429/503, the request log line and the
    metrics. Subclasses say how to answer (``_answer``).
    """

    path = ""

    def __init__(
        self,
        app: Any,
        *,
        platform: Platform,
        throttle: TokenBuckets,
        nonces: NonceChecks,
        metrics: Any,
    ) -> None:
        self.app = app
        self.platform = platform
        self.throttle = throttle
        self.nonces = nonces
        self.metrics = metrics
        # Prometheus children by label value: ``labels()`` per request costs more than
        # the increment (a handful of statuses and outcomes, so these stay small).
        self._requests: dict[int, Any] = {}
        self._outcomes: dict[str, Any] = {}
        self._seconds = metrics.seconds.labels(self.path)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != self.path:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)  # as the middleware does
        app_id = outcome = None
        counts: Mapping[str, int] = {}
        raw = await _read_body(receive)  # within the limit: ``BodyLimit`` is in front
        try:
            status, body, extra, app_id, outcome, counts = await self._answer(scope, raw, headers)
        except Exception as error:  # the answer is still JSON with a code, never a hang
            status, body, extra = _error_answer(error)
        if status >= 400:
            body = {**body, "request_id": request_id}
        if isinstance(body, RenderedBody):  # rendered once already, for the store
            payload = body.text.encode()
        else:
            payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id.encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        elapsed_s = time.perf_counter() - started
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = self.metrics.requests.labels(
                self.path, "POST", str(status)
            )
        counter.inc()
        self._seconds.observe(elapsed_s)
        for claim_outcome, count in counts.items():
            claims = self._outcomes.get(claim_outcome)
            if claims is None:
                claims = self._outcomes[claim_outcome] = self.metrics.claims.labels(claim_outcome)
            claims.inc(count)
        log.info(
            "request",
            method="POST",
            route=self.path,
            status=status,
            duration_ms=round(elapsed_s * 1000, 2),
            app_id=app_id,
            outcome=outcome,
            request_id=request_id,
        )

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        """The answer to one request body (see ``_Answered``)."""
        raise NotImplementedError

    async def _authenticate(
        self, scope: dict[str, Any], raw: bytes, headers: Headers, *, kind: str
    ) -> str:
        return await authenticate(
            self.platform,
            self.throttle,
            self.nonces,
            kind=kind,
            method="POST",
            target=raw_target(scope),
            headers=headers,
            body=raw,
        )


class _ClaimRoute(_LeanRoute):
    """A channel's claim route: its claim items count against the process's in-flight
    bound (``claim_inflight_max``)."""

    def __init__(self, app: Any, *, admission: InFlightLimit, **parts: Any) -> None:
        super().__init__(app, **parts)  # the _LeanRoute's parts
        self.admission = admission


def _error_answer(
    error: Exception,
) -> tuple[int, Mapping[str, Any], list[tuple[bytes, bytes]]]:
    """The framework's error handlers (``http/errors.py``), for the lean routes."""
    if isinstance(error, LequanError):
        extra = []
        if isinstance(error, Unavailable):
            extra.append((b"retry-after", str(error.retry_after_s).encode()))
        return http_status(error), error_body(error), extra
    if isinstance(error, UnstorableValue):
        log.warning("unstorable_input", error_type=str(error))
        body = {"code": "invalid_request", "message": "a value in the request cannot be stored"}
        return 422, body, []
    if isinstance(error, StoreUnavailable):
        log.warning("store_unavailable", error_type=str(error))
        body = {"code": "store_unavailable", "message": "the store is unavailable; retry shortly"}
        return 503, body, [(b"retry-after", b"1")]
    log.exception("unhandled_error", error_type=type(error).__name__)
    return 500, {"code": "internal_error", "message": "an unexpected error; it has been logged"}, []


class FastClaims(_ClaimRoute):
    """``POST /v1/claims``, single claims coalesced into batches."""

    path = CLAIM_PATH

    def __init__(self, app: Any, **parts: Any) -> None:
        super().__init__(app, **parts)
        platform = self.platform
        settings = platform.rt.settings
        # Single claims of one channel arriving together: one call of the claim service.
        self.coalescer: Coalescer[str, ClaimRequest, ClaimResult] = Coalescer(
            platform.claims.claim,
            wait_s=settings.claim_coalesce_ms / 1000,
            batch_max=settings.claim_batch_items_max,
            workers=4,
            name="lequan-claims",
        )

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        app_id: str | None = None
        try:
            app_id = await self._authenticate(scope, raw, headers, kind="channel")
            key = validate_key(
                headers.get("idempotency-key"),
                chars_max=self.platform.rt.settings.idempotency_key_chars_max,
            )
            try:
                claim = _CLAIM_IN.validate_json(raw)
            except ValidationError as error:
                return (*_invalid_request(error), app_id, None, {})
            request = _claim_request(app_id, key, claim)
            with self.admission.admit(1):
                result = await self.coalescer.submit(app_id, request)
        except Exception as error:
            return (*_error_answer(error), app_id, None, {})
        extra = []
        if result.replayed:
            extra.append((b"idempotent-replayed", b"true"))
        if result.answer.status_code in (429, 503):
            extra.append((b"retry-after", b"1"))
        status = result.answer.status_code
        return status, result.answer.body, extra, app_id, result.outcome, {result.outcome: 1}


class FastBatchClaims(_ClaimRoute):
    """``POST /v1/claims/batch``: a channel's batch straight to the claim service.

    The body is parsed and validated in one pass (``validate_json``, not
    ``json.loads`` and then the model), and the answer is written as text:
    each issued voucher's JSON was rendered once already, for the stored
    answer, and is put in as it is.
    """

    path = BATCH_PATH

    def __init__(self, app: Any, **parts: Any) -> None:
        super().__init__(app, **parts)
        # Threads of its own: a batch waiting for room in the commit queue (up to
        # claim_queue_wait_ms) must not hold the threads the framework's routes share.
        self._threads = CapacityLimiter(BATCH_CLAIM_THREADS)

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        app_id: str | None = None
        settings = self.platform.rt.settings
        try:
            app_id = await self._authenticate(scope, raw, headers, kind="channel")
            try:
                batch = _BATCH_CLAIM_IN.validate_json(raw)
            except ValidationError as error:
                return (*_invalid_request(error), app_id, None, {})
            if len(batch.items) > settings.claim_batch_items_max:
                raise InvalidInput(
                    "batch_too_large",
                    f"a batch holds at most {settings.claim_batch_items_max} items",
                )
            self.throttle.take(app_id, cost=len(batch.items) - 1)  # the call itself paid one
            chars_max = settings.idempotency_key_chars_max
            requests = [
                _claim_request(
                    app_id, validate_key(item.idempotency_key, chars_max=chars_max), item
                )
                for item in batch.items
            ]
            with self.admission.admit(len(requests)):
                results = await to_thread.run_sync(
                    self.platform.claims.claim, app_id, requests, limiter=self._threads
                )
        except Exception as error:
            return (*_error_answer(error), app_id, None, {})
        text, counts = _batch_text(requests, results)
        return 200, RenderedBody(text), [], app_id, f"batch:{len(requests)}", counts


def _claim_request(app_id: str, key: str, claim: ClaimIn) -> ClaimRequest:
    """The claim service's request for a claim's body (alone, or a batch's item)."""
    return ClaimRequest(
        channel_user_id=claim.channel_user_id,
        campaign_id=claim.campaign_id,
        round_id=claim.round_id,
        template_id=claim.template_id,
        location_region=claim.location_region,
        key=Idempotency(app_id, key, claim_hash(claim)),
    )


def _batch_text(
    requests: list[ClaimRequest], results: list[ClaimResult]
) -> tuple[str, dict[str, int]]:
    """The ``BatchClaimOut`` of a batch as JSON text, and its answers counted by outcome."""
    items: list[str] = []
    counts: dict[str, int] = {}
    for index, (request, result) in enumerate(zip(requests, results, strict=True)):
        answer = result.answer
        ok = answer.status_code < 400
        if ok:
            outcome = "issued"
        elif result.replayed:  # a stored answer: its code is in its body
            outcome = str(answer.body.get("code", result.outcome))
        else:
            outcome = result.outcome
        counts[outcome] = counts.get(outcome, 0) + 1
        if ok:
            voucher = issued_voucher_json(answer) or _json(answer.body.get("voucher"))
            error = "null"
        else:
            voucher = "null"
            error = answer.text if answer.text is not None else _json(dict(answer.body))
        items.append(
            f'{{"index":{index},"idempotency_key":{encode_basestring(request.key.key)},'
            f'"status_code":{answer.status_code},"outcome":{encode_basestring(outcome)},'
            f'"replayed":{"true" if result.replayed else "false"},"voucher":{voucher},'
            f'"error":{error}}}'
        )
    return '{"results":[' + ",".join(items) + '],"outcomes":' + _json(counts) + "}", counts


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class FastRedemptions(_LeanRoute):
    """``POST /v1/redemptions``: one-step redemptions go to the batch writer from the event
    loop, without the framework's dependency solving or a thread hop; a lock goes to
    the same service call as the framework's route."""

    path = REDEMPTION_PATH

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        app_id: str | None = None
        platform = self.platform
        try:
            target = raw_target(scope)
            app_id = await self._authenticate(scope, raw, headers, kind="acquirer")
            key = validate_key(
                headers.get("idempotency-key"),
                chars_max=platform.rt.settings.idempotency_key_chars_max,
            )
            try:
                body = _REDEEM_IN.validate_json(raw)
            except ValidationError as error:
                return (*_invalid_request(error), app_id, None, {})
            idem = Idempotency(app_id, key, request_hash("POST", target, raw))
            answer, replayed = await redeem_answer(platform, app_id, body, idem)
        except Exception as error:
            return (*_error_answer(error), app_id, None, {})
        extra = [(b"idempotent-replayed", b"true")] if replayed else []
        return answer.status_code, answer.body, extra, app_id, None, {}


def _route_path(scope: dict[str, Any]) -> str:
    """The path as the app's routes see it: without the ``root_path`` it is mounted under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _invalid_request(
    error: ValidationError,
) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    """The same 422 ``invalid_request`` the framework's validation gives."""
    problems = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "rule": e["msg"]}
        for e in error.errors(include_url=False)
    ][:20]
    message = "; ".join(f"{p['field']}: {p['rule']}" for p in problems[:5])
    return 422, {"code": "invalid_request", "message": message, "details": {"errors": problems}}, []
