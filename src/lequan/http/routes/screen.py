"""The big screen (an operator's), the public page (anyone's), and what they read.

Pages are plain files of ``lequan.web`` (``pages/``), their scripts, styles
and fonts under ``/static``; nothing is loaded from another origin. The
screen's figures come from ``services/screen.py``, one snapshot per process
per interval, shared by every stream the process serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from lequan.domain.errors import AuthError, Unavailable
from lequan.http import session
from lequan.http.deps import PlatformDep
from lequan.http.envelope import parse_body
from lequan.http.schemas import error_responses
from lequan.http.screen_schemas import PublicOut, ScreenOut
from lequan.services.admin import authenticate_operator
from lequan.services.screen import Screen

__all__ = ["StreamSlots", "router"]

router = APIRouter()


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    token: str = Field(min_length=8, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")


class WhoAmIOut(BaseModel):
    operator_id: str
    role: str


class StreamSlots:
    """How many event streams this process serves, in all and per operator."""

    def __init__(self, *, total_max: int, per_operator_max: int) -> None:
        self._total_max = total_max
        self._per_operator_max = per_operator_max
        self._open: dict[str, int] = {}

    @contextmanager
    def take(self, operator_id: str) -> Iterator[None]:
        if sum(self._open.values()) >= self._total_max:
            raise Unavailable(
                "too_many_streams",
                f"this process serves at most {self._total_max} screen streams",
                retry_after_s=5,
            )
        if self._open.get(operator_id, 0) >= self._per_operator_max:
            raise Unavailable(
                "too_many_streams",
                f"an operator has at most {self._per_operator_max} screen streams open",
                retry_after_s=5,
            )
        self._open[operator_id] = self._open.get(operator_id, 0) + 1
        try:
            yield
        finally:
            self._open[operator_id] -= 1
            if not self._open[operator_id]:
                del self._open[operator_id]

    @property
    def open(self) -> int:
        return sum(self._open.values())


def _page(name: str) -> str:
    return resources.files("lequan.web").joinpath("pages", name).read_text(encoding="utf-8")


def _screen(request: Request) -> Screen:
    screen: Screen = request.app.state.screen
    return screen


def _session(request: Request, platform: PlatformDep) -> session.SessionOperator:
    found = session.read_session(platform.rt, request.cookies.get(session.COOKIE))
    request.state.operator_id = found.operator_id
    return found


SESSION_ERRORS = error_responses(401)


@router.get("/screen", include_in_schema=False)
def screen_page(request: Request, platform: PlatformDep) -> Response:
    try:
        _session(request, platform)
    except AuthError:
        return RedirectResponse("/screen/login", status_code=303)
    return HTMLResponse(_page("screen.html"), headers={"Cache-Control": "no-store"})


@router.get("/screen/login", include_in_schema=False)
def login_page() -> Response:
    return HTMLResponse(_page("login.html"), headers={"Cache-Control": "no-store"})


@router.get("/public", include_in_schema=False)
def public_page() -> Response:
    return HTMLResponse(_page("public.html"), headers={"Cache-Control": "public, max-age=60"})


@router.post(
    "/v1/screen/session",
    tags=["screen"],
    status_code=204,
    summary="Sign in to the screen with an operator's token: a session cookie",
    responses=error_responses(401, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SessionIn"}}},
        }
    },
)
async def open_session(request: Request, platform: PlatformDep) -> Response:
    body = parse_body(SessionIn, await request.body())
    operator_id, _role = await run_in_threadpool(authenticate_operator, platform.rt, body.token)
    request.state.operator_id = operator_id
    response = Response(status_code=204)
    response.set_cookie(
        session.COOKIE,
        session.open_session(platform.rt, operator_id),
        max_age=platform.rt.settings.screen_session_s,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.delete(
    "/v1/screen/session", tags=["screen"], status_code=204, summary="Sign out of the screen"
)
def close_session() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get(
    "/v1/screen/whoami",
    tags=["screen"],
    response_model=WhoAmIOut,
    responses=SESSION_ERRORS,
    summary="The operator the screen's session is for, and their role",
)
def whoami(request: Request, platform: PlatformDep) -> JSONResponse:
    found = _session(request, platform)
    return JSONResponse({"operator_id": found.operator_id, "role": found.role})


@router.get(
    "/v1/screen/snapshot",
    tags=["screen"],
    response_model=ScreenOut,
    responses=SESSION_ERRORS,
    summary="The big screen's figures now (the stream sends one each second)",
)
def snapshot(request: Request, platform: PlatformDep) -> Response:
    _session(request, platform)
    return Response(
        _screen(request).latest_json(),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@router.get(
    "/v1/screen/stream",
    tags=["screen"],
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-Sent Events: `event: snapshot`, `data:` one ScreenOut.",
        },
        **error_responses(401, 429),
    },
    response_class=Response,
    summary="The big screen's figures as Server-Sent Events, every `every_s` seconds",
)
async def stream(
    request: Request,
    platform: PlatformDep,
    every_s: Annotated[
        float, Query(ge=0.2, le=60, description="Seconds between snapshots (default 1).")
    ] = 1.0,
) -> Response:
    found = await run_in_threadpool(_session, request, platform)
    slots: StreamSlots = request.app.state.stream_slots
    settings = platform.rt.settings
    every_s = max(every_s, settings.screen_interval_s)
    return _SnapshotStream(
        _screen(request),
        slots,
        found.operator_id,
        every_s=every_s,
        send_timeout_s=settings.screen_send_timeout_s,
    )


class _SnapshotStream(Response):
    """Snapshots as Server-Sent Events until the client goes, is stuck, or the process
    stops; the slot is taken before the first byte, so a refusal is still a 429."""

    media_type = "text/event-stream"

    def __init__(
        self,
        screen: Screen,
        slots: StreamSlots,
        operator_id: str,
        *,
        every_s: float,
        send_timeout_s: float,
    ):
        super().__init__(headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        # A stream has no length: the framework counted the empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._screen = screen
        self._slots = slots
        self._operator_id = operator_id
        self._every_s = every_s
        self._send_timeout_s = send_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self._slots.take(self._operator_id):
            gone = asyncio.Event()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                gone.set()

            watcher = asyncio.create_task(watch())
            try:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                await send(
                    {"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True}
                )
                while not gone.is_set():
                    payload = await run_in_threadpool(self._screen.latest_json)
                    event = b"event: snapshot\ndata: " + payload + b"\n\n"
                    async with asyncio.timeout(self._send_timeout_s):
                        await send({"type": "http.response.body", "body": event, "more_body": True})
                    try:
                        async with asyncio.timeout(self._every_s):
                            await gone.wait()
                    except TimeoutError:
                        pass
            except (TimeoutError, OSError):
                pass  # a stuck or vanished client: its slot is given back
            finally:
                watcher.cancel()


@router.get(
    "/v1/public/live",
    tags=["public"],
    response_model=PublicOut,
    summary="Campaigns, their stock and milestones: anyone may read it (cacheable)",
)
def public_live(request: Request) -> Response:
    body = _screen(request).public()
    return JSONResponse(body, headers={"Cache-Control": "public, max-age=2"})
