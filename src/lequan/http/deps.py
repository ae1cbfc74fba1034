"""Request dependencies: the platform, signed channel/acquirer callers, operators.

Signature checks read the raw body and the raw path exactly as sent; a
nonce is remembered for twice the allowed clock skew, the whole span in
which its timestamp could still pass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from pydantic import BaseModel

from lequan.bootstrap import Platform
from lequan.domain.errors import AuthError
from lequan.http import envelope, session
from lequan.http.claims import ClaimDesk
from lequan.http.coalescing import Coalescer
from lequan.ports import NonceStore
from lequan.services.admin import authenticate_operator
from lequan.services.idempotency import Idempotency, request_hash
from lequan.signing import TIMESTAMP_HEADER, parse_headers, verify_signed

__all__ = [
    "AcquirerApp",
    "Caller",
    "ChannelApp",
    "ClaimsDep",
    "IdempotencyKey",
    "NonceChecks",
    "Operator",
    "PlatformDep",
    "get_platform",
    "json_body",
]


def get_platform(request: Request) -> Platform:
    platform = request.app.state.platform
    assert isinstance(platform, Platform)
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def _claims(request: Request) -> ClaimDesk:
    claims = request.app.state.claims
    assert isinstance(claims, ClaimDesk)
    return claims


ClaimsDep = Annotated[ClaimDesk, Depends(_claims)]


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its signed body itself
    (``envelope.parse_body``, as the lean routes do) instead of declaring it: the
    framework would parse it first, in its own order and words.

    The app lists the model among its schemas (``app.PARSED_BODIES``).
    """
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified channel or acquirer, with the raw request it signed."""

    app_id: str
    kind: str
    body: bytes
    method: str
    path_with_query: str

    def idempotency(self, key: str) -> Idempotency:
        return Idempotency(
            app_id=self.app_id,
            key=key,
            request_hash=request_hash(self.method, self.path_with_query, self.body),
        )


def raw_target(scope: Mapping[str, Any]) -> str:
    """The request target exactly as sent: what the caller signed."""
    raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
    query = scope.get("query_string") or b""
    target = bytes(raw_path) + (b"?" + bytes(query) if query else b"")
    return target.decode("ascii", errors="replace")


class NonceChecks:
    """The nonces of signed requests, checked for the event loop without blocking it.

    A store in this process (``inline``) is asked at once. A store across the
    network is asked from a thread, once per turn of the event loop for every
    request that reached this step in that turn: a thousand requests arriving
    together cost one round trip, and the loop serves others meanwhile.
    Bounded: at most ``batch_max`` nonces per call to the store.
    """

    def __init__(self, store: NonceStore, *, inline: bool, batch_max: int = 1000) -> None:
        self._store = store
        self._inline = inline
        # Grouped by ttl: one store call records its nonces with one ttl.
        self._batches: Coalescer[int, tuple[str, str], bool] = Coalescer(
            lambda ttl_s, nonces: store.remember_many(nonces, ttl_s),
            wait_s=0,
            batch_max=batch_max,
            workers=2,
            name="lequan-nonces",
        )

    async def remember(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        if self._inline:
            return self._store.remember(app_id, nonce, ttl_s)
        return await self._batches.submit(ttl_s, (app_id, nonce))

    @property
    def epoch_s(self) -> int:
        """Since when the store holds every nonce (``NonceStore.epoch_s``)."""
        return self._store.epoch_s

    def close(self) -> None:
        self._batches.close()


async def authenticate(
    platform: Platform,
    nonces: NonceChecks,
    *,
    kind: str,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
) -> str:
    """The app id of a signed call: signature, clock, nonce and kind, in that order. The
    caller takes the app's allowance next (``TokenBuckets.take``), once it has noted
    whose call it is: a throttled app's 429s are its own on the screen and in metrics.

    A call signed before the nonce store's epoch is refused ``stale_timestamp``:
    the store may have forgotten its nonce (a restart), so it could be a
    replay. An honest client signs each retry anew and is not affected.
    """
    signed = parse_headers(headers)
    found = await platform.apps.lookup(signed.app_id)
    if found is None:
        raise AuthError("unknown_app", "X-Lequan-App names no active app")
    app_kind, secret = found
    settings = platform.rt.settings
    now_s = int(time.time())
    verified = verify_signed(
        signed,
        secret=secret,
        method=method,
        path_with_query=target,
        body=body,
        now_s=now_s,
        max_skew_s=settings.signature_max_skew_s,
    )
    if not await nonces.remember(
        verified.app_id, verified.nonce, 2 * settings.signature_max_skew_s
    ):
        raise AuthError("nonce_reused", "this nonce was already used; sign each request anew")
    if verified.timestamp < nonces.epoch_s:
        raise AuthError(
            "stale_timestamp",
            f"{TIMESTAMP_HEADER} is older than the nonce store's start, when it forgot "
            "earlier nonces; sign the request anew",
            details={
                "server_time_s": now_s,
                "max_skew_s": settings.signature_max_skew_s,
                "nonce_epoch_s": nonces.epoch_s,
            },
        )
    if app_kind != kind:
        raise AuthError("wrong_app_kind", f"this API is for {kind}s; the app is a {app_kind}")
    return verified.app_id


async def _signed(request: Request, platform: Platform, kind: str) -> Caller:
    body = await request.body()
    target = raw_target(request.scope)
    app_id = await authenticate(
        platform,
        request.app.state.nonce_checks,
        kind=kind,
        method=request.method,
        target=target,
        headers=request.headers,
        body=body,
    )
    request.state.app_id = app_id
    request.state.app_kind = kind
    request.app.state.throttle.take(app_id)
    return Caller(
        app_id=app_id, kind=kind, body=body, method=request.method, path_with_query=target
    )


async def _channel(request: Request, platform: PlatformDep) -> Caller:
    return await _signed(request, platform, "channel")


async def _acquirer(request: Request, platform: PlatformDep) -> Caller:
    return await _signed(request, platform, "acquirer")


ChannelApp = Annotated[Caller, Depends(_channel)]
AcquirerApp = Annotated[Caller, Depends(_acquirer)]


def _idempotency_key(
    platform: PlatformDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="One key per effect; a retry with the same key replays the first answer.",
        ),
    ] = None,
) -> str:
    return envelope.idempotency_key(platform, idempotency_key)


IdempotencyKey = Annotated[str, Depends(_idempotency_key)]


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    operator_id: str
    role: str


def _operator(
    request: Request,
    platform: PlatformDep,
    authorization: Annotated[str | None, Header()] = None,
) -> OperatorIdentity:
    cookie = request.cookies.get(session.COOKIE)
    if (not authorization or not authorization.startswith("Bearer ")) and cookie:
        # The big screen's session (http/session.py): a change must prove it is the page's.
        if (
            request.method not in ("GET", "HEAD")
            and request.headers.get(session.CSRF_HEADER) != "1"
        ):
            raise AuthError(
                "csrf_header_required",
                "a change made with the screen's session needs the header X-Lequan-CSRF: 1",
            )
        found = session.read_session(platform.rt, cookie)
        request.state.operator_id = found.operator_id
        return OperatorIdentity(found.operator_id, found.role)
    if not authorization or not authorization.startswith("Bearer "):
        raise AuthError(
            "unauthenticated", "an operator token is required: Authorization: Bearer ..."
        )
    operator_id, role = authenticate_operator(platform.rt, authorization.removeprefix("Bearer "))
    request.state.operator_id = operator_id
    return OperatorIdentity(operator_id, role)


Operator = Annotated[OperatorIdentity, Depends(_operator)]
