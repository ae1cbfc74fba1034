"""The hottest paths (single claims, batch claims, one-step redemptions), served
without the framework's per-request cost.

``POST /v1/claims`` is the hottest route of a flash sale. Here it is a
plain ASGI handler in front of the whole FastAPI app, its middleware
included, behind the same body limit and with the same rules in the same
order as the framework's route: signature, nonce, Idempotency-Key, body,
then the claim. Both hand the claim to the same ``ClaimDesk`` and build
the answer from the same envelope (``http/envelope.py``), so the app gives
the same answers without this front (``create_app(fast_path=False)``); the
front only makes them cheaper.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.datastructures import Headers

from lequan.bootstrap import Platform
from lequan.http.admission import TokenBuckets
from lequan.http.claims import ASYNC_APPLIED, ClaimDesk, claim_headers, respond_async
from lequan.http.deps import NonceChecks, authenticate, raw_target
from lequan.http.envelope import (
    NO_COUNTS,
    NO_HEADERS,
    Metrics,
    RawHeaders,
    error_answer,
    idempotency_key,
    parse_body,
    render,
    replayed_headers,
    request_id,
)
from lequan.http.routes.acquirer import redeem_answer
from lequan.http.schemas import BatchClaimIn, ClaimIn, RedeemIn
from lequan.services.idempotency import Idempotency, request_hash
from lequan.services.live import record_answer

__all__ = ["FastBatchClaims", "FastClaims", "FastRedemptions"]

CLAIM_PATH = "/v1/claims"
BATCH_PATH = "/v1/claims/batch"
REDEMPTION_PATH = "/v1/redemptions"

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


# (status, body, extra headers, app id, the request's outcome for the log line, claim
# answers by outcome for the metrics)
_Answered = tuple[int, Mapping[str, Any], RawHeaders, str | None, str | None, Mapping[str, int]]


class _LeanRoute:
    """ASGI middleware answering one ``POST`` path itself; everything else passes through.

    Same answers as the framework's route, from the same envelope: the JSON
    error body with its ``request_id``, ``Retry-After`` from the error, the
    request log line and the metrics. Subclasses say how to answer
    (``_answer``).
    """

    path = ""
    kind = ""  # of the app calling it: "channel" or "acquirer"

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
            app_kind=self.kind,
            body=body,
            outcome=outcome,
            counts=counts,
        )
        if app_id is not None:
            code = body.get("code") if status >= 400 and isinstance(body, dict) else None
            rt = self.platform.rt  # the runtime's clock: the pulse's seconds are its own
            record_answer(rt.pulse, int(rt.clock.now().timestamp()), app_id, status, code)

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        """The answer to one request body (see ``_Answered``)."""
        raise NotImplementedError

    async def _authenticate(
        self, scope: dict[str, Any], raw: bytes, headers: Headers, *, kind: str
    ) -> str:
        return await authenticate(
            self.platform,
            self.nonces,
            kind=kind,
            method="POST",
            target=raw_target(scope),
            headers=headers,
            body=raw,
        )


class _ClaimRoute(_LeanRoute):
    """A channel's claim route: its claims go to the app's ``ClaimDesk``, as the
    framework's route's do."""

    kind = "channel"

    def __init__(self, app: Any, *, claims: ClaimDesk, **parts: Any) -> None:
        super().__init__(app, **parts)  # the _LeanRoute's parts
        self.claims = claims


class FastClaims(_ClaimRoute):
    """``POST /v1/claims``, single claims coalesced into batches."""

    path = CLAIM_PATH

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        app_id: str | None = None
        try:
            app_id = await self._authenticate(scope, raw, headers, kind="channel")
            self.throttle.take(app_id)  # after: a throttled call is still its app's
            key = idempotency_key(self.platform, headers.get("idempotency-key"))
            result = await self.claims.claim(
                app_id,
                key,
                parse_body(ClaimIn, raw),
                respond_async=respond_async(headers.get("prefer")),
            )
        except Exception as error:
            return (*error_answer(error), app_id, None, NO_COUNTS)
        answer = result.answer
        status = answer.status_code
        return (
            status,
            answer.body,
            claim_headers(result),
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

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        app_id: str | None = None
        try:
            app_id = await self._authenticate(scope, raw, headers, kind="channel")
            self.throttle.take(app_id)  # after: a throttled call is still its app's
            batch = parse_body(BatchClaimIn, raw)
            prefer_async = respond_async(headers.get("prefer"))
            body, counts = await self.claims.claim_batch(app_id, batch, respond_async=prefer_async)
        except Exception as error:
            return (*error_answer(error), app_id, None, NO_COUNTS)
        applied = ASYNC_APPLIED if prefer_async else NO_HEADERS
        return 200, body, applied, app_id, f"batch:{len(batch.items)}", counts


class FastRedemptions(_LeanRoute):
    """``POST /v1/redemptions``: one-step redemptions go to the batch writer from the event
    loop, without the framework's dependency solving or a thread hop; a lock goes to
    the same service call as the framework's route."""

    path = REDEMPTION_PATH
    kind = "acquirer"

    async def _answer(self, scope: dict[str, Any], raw: bytes, headers: Headers) -> _Answered:
        app_id: str | None = None
        platform = self.platform
        try:
            target = raw_target(scope)
            app_id = await self._authenticate(scope, raw, headers, kind="acquirer")
            self.throttle.take(app_id)
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
