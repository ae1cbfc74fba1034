"""Central's signed HTTP API (docs/central.md): a province is an app, and signs every
call with the X-Lequan-* scheme of ``lequan.signing``.

Every route takes a batch (at most ``ports.central.BATCH_MAX`` items), is
idempotent, and answers each item in order. The pieces are the province's:
``signing.py`` for the signature, a ``NonceStore`` for replays,
``http/envelope.py`` for every error's status and body, ``http.app.BodyLimit``
for bodies. Bad input is a 4xx with a stable code and changes nothing; a
store that does not answer is ``503 store_unavailable``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from lequan.central.services import CentralService
from lequan.domain.errors import AuthError, InvalidInput
from lequan.http import envelope
from lequan.http.app import BodyLimit
from lequan.http.deps import raw_target
from lequan.ports import NonceStore, StoreUnavailable
from lequan.ports.central import (
    ConsumeRequest,
    LockRequest,
    SyncEvent,
)
from lequan.signing import TIMESTAMP_HEADER, parse_headers, verify_signed

__all__ = ["CentralApp", "bounded", "create_app"]

log = structlog.get_logger("lequan.central")

M = TypeVar("M", bound=BaseModel)

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A province's secret is looked up again at most this often on a miss (a new province).
_PROVINCES_REFRESH_S = 1.0


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


Id = Annotated[str, Field(max_length=64)]


class PseudonymsIn(_In):
    blinded: list[Annotated[str, Field(max_length=64)]]


class LockIn(_In):
    lock_id: Id
    pseudonym: Annotated[str, Field(max_length=64)]
    category: Annotated[str, Field(max_length=40)]
    items_max: int
    hold_s: int


class LocksIn(_In):
    locks: list[LockIn]


class ConsumeIn(_In):
    lock_id: Id
    voucher_id: Id
    redemption_id: Id
    category: Annotated[str, Field(max_length=40)]
    serial: Annotated[str | None, Field(max_length=128)] = None
    imei: Annotated[str | None, Field(max_length=32)] = None
    invoice_no: Annotated[str, Field(max_length=128)]
    price_fen: int
    subsidy_fen: int


class ConsumptionsIn(_In):
    consumptions: list[ConsumeIn]


class ReleaseIn(_In):
    lock_id: Id
    reason: Annotated[str, Field(max_length=400)]


class ReleasesIn(_In):
    releases: list[ReleaseIn]


class EventIn(_In):
    event_id: Id
    topic: Annotated[str, Field(max_length=64)]
    at: AwareDatetime
    payload: dict[str, Any]
    voucher_id: Id | None = None
    seq: int | None = None


class EventsIn(_In):
    events: list[EventIn]


class _Provinces:
    """Each app id's province code and secret, read from the store on a miss (at most
    once a second, so unknown app ids cannot flood the store)."""

    def __init__(self, service: CentralService) -> None:
        self._service = service
        self._by_app: dict[str, tuple[str, str]] = {}
        self._loaded_at = -_PROVINCES_REFRESH_S
        self._lock = threading.Lock()

    def lookup(self, app_id: str) -> tuple[str, str] | None:
        found = self._by_app.get(app_id)
        if found is not None:
            return found
        with self._lock:
            if time.monotonic() - self._loaded_at >= _PROVINCES_REFRESH_S:
                self._loaded_at = time.monotonic()
                self._by_app = {
                    row.app_id: (row.code, row.secret) for row in self._service.store.provinces()
                }
            return self._by_app.get(app_id)


class CentralApp:
    """What the routes share: the service, the nonces, the settings' limits."""

    def __init__(
        self,
        service: CentralService,
        nonces: NonceStore,
        *,
        signature_max_skew_s: int,
        sweep_interval_s: float,
        sweep_batch_max: int,
    ) -> None:
        self.service = service
        self.nonces = nonces
        self.provinces = _Provinces(service)
        self.max_skew_s = signature_max_skew_s
        self.sweep_interval_s = sweep_interval_s
        self.sweep_batch_max = sweep_batch_max

    async def authenticate(self, request: Request, body: bytes) -> str:
        """The province code of a signed call: signature, clock, then nonce."""
        signed = parse_headers(request.headers)
        found = await run_in_threadpool(self.provinces.lookup, signed.app_id)
        if found is None:
            raise AuthError("unknown_app", "X-Lequan-App names no province")
        province, secret = found
        now_s = int(time.time())
        verified = verify_signed(
            signed,
            secret=secret,
            method=request.method,
            path_with_query=raw_target(request.scope),
            body=body,
            now_s=now_s,
            max_skew_s=self.max_skew_s,
        )
        ttl_s = 2 * self.max_skew_s
        if getattr(self.nonces, "in_process", False):
            fresh = self.nonces.remember(verified.app_id, verified.nonce, ttl_s)
        else:
            fresh = await run_in_threadpool(
                self.nonces.remember, verified.app_id, verified.nonce, ttl_s
            )
        if not fresh:
            raise AuthError("nonce_reused", "this nonce was already used; sign each request anew")
        if verified.timestamp < self.nonces.epoch_s:
            raise AuthError(
                "stale_timestamp",
                f"{TIMESTAMP_HEADER} is older than the nonce store's start; sign the request anew",
                details={"server_time_s": now_s, "nonce_epoch_s": self.nonces.epoch_s},
            )
        return province

    def sweep_forever(self, stop: threading.Event) -> None:
        """Mark expired holds now and then, until ``stop``; a store error waits for the
        next turn (holds past their time count as free whether marked or not)."""
        while not stop.wait(self.sweep_interval_s):
            try:
                self.service.sweep(self.sweep_batch_max)
            except StoreUnavailable:
                log.warning("central_sweep_store_unavailable")


def _answer(status: int, body: Any, headers: envelope.RawHeaders = envelope.NO_HEADERS) -> Response:
    request_id = envelope.request_id(None)
    raw = envelope.render(status, body, request_id)
    response = Response(raw, status_code=status, media_type="application/json")
    response.headers["x-request-id"] = request_id
    for name, value in headers:
        response.headers[name.decode()] = value.decode()
    return response


def _error(error: Exception) -> Response:
    status, body, headers = envelope.error_answer(error)
    return _answer(status, body, headers)


def create_app(central: CentralApp) -> Any:
    """Central's ASGI app (its bodies bounded by the caller: ``BodyLimit``)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        stop = threading.Event()
        sweeper = threading.Thread(
            target=central.sweep_forever, args=(stop,), name="lequan-central-sweep", daemon=True
        )
        sweeper.start()
        try:
            yield
        finally:
            stop.set()
            await asyncio.to_thread(sweeper.join, 5)

    app = FastAPI(
        title="lequan central",
        summary="The national platform of trade-in qualifications (docs/central.md).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.central = central
    service = central.service

    for kind in (Exception, RequestValidationError, HTTPException):

        async def handle(_request: Request, error: Exception) -> Response:
            return _error(error)

        app.add_exception_handler(kind, handle)

    async def signed(request: Request, model: type[M], work: Callable[[str, M], Any]) -> Response:
        body = await request.body()
        province = await central.authenticate(request, body)
        parsed = envelope.parse_body(model, body)
        result = await run_in_threadpool(work, province, parsed)
        return _answer(200, result)

    @app.post("/v1/pseudonyms")
    async def pseudonyms(request: Request) -> Response:
        def work(_province: str, body: PseudonymsIn) -> dict[str, Any]:
            answer = service.evaluate(body.blinded)
            return {
                "evaluated": base64.b64encode(answer).decode("ascii"),
                "public_key": service.key.public_key_hex,
            }

        return await signed(request, PseudonymsIn, work)

    @app.post("/v1/locks")
    async def locks(request: Request) -> Response:
        def work(province: str, body: LocksIn) -> dict[str, Any]:
            results = service.lock(
                province,
                [
                    LockRequest(x.lock_id, x.pseudonym, x.category, x.items_max, x.hold_s)
                    for x in body.locks
                ],
            )
            return {
                "results": [
                    {
                        "lock_id": r.lock_id,
                        "outcome": str(r.outcome),
                        "expires_at": r.expires_at.isoformat() if r.expires_at else None,
                    }
                    for r in results
                ]
            }

        return await signed(request, LocksIn, work)

    @app.post("/v1/consumptions")
    async def consumptions(request: Request) -> Response:
        def work(province: str, body: ConsumptionsIn) -> dict[str, Any]:
            results = service.consume(
                province,
                [
                    ConsumeRequest(
                        lock_id=c.lock_id,
                        voucher_id=c.voucher_id,
                        redemption_id=c.redemption_id,
                        category=c.category,
                        serial=c.serial,
                        imei=c.imei,
                        invoice_no=c.invoice_no,
                        price_fen=c.price_fen,
                        subsidy_fen=c.subsidy_fen,
                    )
                    for c in body.consumptions
                ],
            )
            return {"results": [{"lock_id": r.lock_id, "outcome": str(r.outcome)} for r in results]}

        return await signed(request, ConsumptionsIn, work)

    @app.post("/v1/releases")
    async def releases(request: Request) -> Response:
        def work(province: str, body: ReleasesIn) -> dict[str, Any]:
            released = service.release(province, [(r.lock_id, r.reason) for r in body.releases])
            return {"released": released}

        return await signed(request, ReleasesIn, work)

    @app.post("/v1/events")
    async def events(request: Request) -> Response:
        def work(province: str, body: EventsIn) -> dict[str, Any]:
            results = service.deliver(
                province,
                [
                    SyncEvent(e.event_id, e.topic, e.at, e.payload, e.voucher_id, e.seq)
                    for e in body.events
                ],
            )
            return {
                "results": [
                    {"event_id": r.event_id, "outcome": str(r.outcome), "reason": r.reason}
                    for r in results
                ]
            }

        return await signed(request, EventsIn, work)

    @app.get("/v1/days/{day}")
    async def day(request: Request, day: str) -> Response:
        province = await central.authenticate(request, await request.body())
        if not _DAY.fullmatch(day):
            raise InvalidInput("central_invalid_day", "a day is YYYY-MM-DD")
        try:
            when = date.fromisoformat(day)
        except ValueError:
            raise InvalidInput("central_invalid_day", "a day is YYYY-MM-DD") from None
        record = await run_in_threadpool(service.day, province, when)
        return _answer(
            200,
            {
                "day": record.day.isoformat(),
                "province": record.province,
                "categories": {
                    category: {fact: list(pair) for fact, pair in facts.items()}
                    for category, facts in record.categories.items()
                },
                "vouchers": {v: list(entry) for v, entry in record.vouchers.items()},
            },
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _answer(200, {"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        try:
            await run_in_threadpool(service.store.ping)
        except StoreUnavailable:
            return _answer(
                503,
                {"code": "not_ready", "message": "central's store does not answer"},
            )
        return _answer(200, {"status": "ready"})

    return app


def bounded(app: Any, *, body_bytes_max: int) -> Any:
    """The app behind the province's body limit (413 ``body_too_large`` past it)."""
    return BodyLimit(app, body_bytes_max=body_bytes_max)
