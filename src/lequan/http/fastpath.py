"""The hottest paths (single claims, batch claims, one-step redemptions), served
without the framework's per-request cost.

``POST /v1/claims`` is the hottest route of a flash sale. Here it is a
plain ASGI handler in front of the whole FastAPI app, its middleware
included, behind the same body limit and with the same rules in the same
order: signature, nonce, Idempotency-Key, body, then the claim, and the
same envelope (``http/envelope.py``). Single claims that arrive within
``claim_coalesce_ms`` of each other are handed to the claim service as one
batch, so a thousand people pressing "claim" through one channel cost one
lookup, one gate call and one share of a group commit, as a channel's own
batch would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from json.encoder import encode_basestring
from typing import Any

from anyio import CapacityLimiter, to_thread
from starlette.datastructures import Headers

from lequan.bootstrap import Platform
from lequan.domain.errors import InvalidInput
from lequan.http.admission import InFlightLimit, TokenBuckets
from lequan.http.coalescing import Coalescer
from lequan.http.deps import NonceChecks, authenticate, raw_target
from lequan.http.envelope import (
    NO_COUNTS,
    NO_HEADERS,
    Metrics,
    RawHeaders,
    error_answer,
    error_headers,
    idempotency_key,
    parse_body,
    render,
    replayed_headers,
    request_id,
)
from lequan.http.routes.acquirer import redeem_answer
from lequan.http.routes.channel import claim_hash
from lequan.http.schemas import BatchClaimIn, ClaimIn, RedeemIn
from lequan.services.claiming import ClaimRequest, ClaimResult, issued_voucher_json
from lequan.services.idempotency import Idempotency, RenderedBody, request_hash, validate_key

__all__ = ["FastBatchClaims", "FastClaims", "FastRedemptions"]

CLAIM_PATH = "/v1/claims"
BATCH_PATH = "/v1/claims/batch"
REDEMPTION_PATH = "/v1/redemptions"

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


# (status, body, extra headers, app id, the request's outcome for the log line, claim
# answers by outcome for the metrics)
_Answered = tuple[int, Mapping[str, Any], RawHeaders, str | None, str | None, Mapping[str, int]]


# Batch claims answered at once by one process (each on a thread of its own).
BATCH_CLAIM_THREADS = 40


class _LeanRoute:
    """ASGI middleware answering one ``POST`` path itself; everything else passes through.

    Same answers as the framework's route, from the same envelope: the JSON
    error body with its ``request_id``, ``Retry-After`` from the error, the
    request log line and the metrics. Subclasses say how to answer
    (``_answer``).
    """

    path = ""

    def __init__(
        self,
        app: Any,
        *,
        platform: Platform,
        throttle: TokenBuckets,
        nonces: NonceChecks,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.platform = platform
        self.throttle = throttle
        self.nonces = nonces
        self._record = metrics.route(self.path, "POST")

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _route_path(scope) != self.path:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        rid = request_id(headers.get("x-request-id"))
        app_id = outcome = None
        counts = NO_COUNTS
        raw = await _read_body(receive)  # within the limit: ``BodyLimit`` is in front
        try:
            status, body, extra, app_id, outcome, counts = await self._answer(scope, raw, headers)
        except Exception as error:  # the answer is still JSON with a code, never a hang
            status, body, extra = error_answer(error)
        payload = render(status, body, rid)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", rid.encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        self._record.record(
            status=status,
            elapsed_s=time.perf_counter() - started,
            request_id=rid,
            app_id=app_id,
            outcome=outcome,
            counts=counts,
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
            key = idempotency_key(self.platform, headers.get("idempotency-key"))
            request = _claim_request(app_id, key, parse_body(ClaimIn, raw))
            with self.admission.admit(1):
                result = await self.coalescer.submit(app_id, request)
        except Exception as error:
            return (*error_answer(error), app_id, None, NO_COUNTS)
        answer = result.answer
        status = answer.status_code
        return (
            status,
            answer.body,
            _claim_headers(result),
            app_id,
            result.outcome,
            {result.outcome: 1},
        )


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
            batch = parse_body(BatchClaimIn, raw)
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
            return (*error_answer(error), app_id, None, NO_COUNTS)
        text, counts = _batch_text(requests, results)
        return 200, RenderedBody(text), NO_HEADERS, app_id, f"batch:{len(requests)}", counts


def _claim_headers(result: ClaimResult) -> RawHeaders:
    """A claim's headers: a retry's answer says it is replayed; a refusal for now says
    when to come back, as its error says."""
    if result.replayed:
        return replayed_headers(True)
    if result.error is not None:
        return error_headers(result.error)
    return NO_HEADERS


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
            key = idempotency_key(platform, headers.get("idempotency-key"))
            body = parse_body(RedeemIn, raw)
            idem = Idempotency(app_id, key, request_hash("POST", target, raw))
            answer, replayed = await redeem_answer(platform, app_id, body, idem)
        except Exception as error:
            return (*error_answer(error), app_id, None, NO_COUNTS)
        return answer.status_code, answer.body, replayed_headers(replayed), app_id, None, NO_COUNTS


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
