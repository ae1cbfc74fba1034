"""Errors as JSON ``{code, message, request_id}``: every failure the API can
give, mapped through ``lequan.services.views.http_status``. Bad input never
becomes a 500.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lequan.domain.error_codes import ERRORS, ErrorCode
from lequan.domain.errors import LequanError, Unavailable
from lequan.ports import StoreUnavailable, UnstorableValue
from lequan.services.views import error_body, http_status

__all__ = ["error_response", "install_error_handlers"]

log = structlog.get_logger(__name__)

# The codes the registry gives the web framework's own refusals, by status.
_HTTP_CODES: dict[int, ErrorCode] = {
    spec.status: code for code, spec in ERRORS.items() if spec.framework and spec.status is not None
}


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_response(
    request: Request, status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {**body, "request_id": _request_id(request)}, status_code=status_code, headers=headers
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LequanError)
    async def _lequan(request: Request, error: LequanError) -> JSONResponse:
        headers = None
        if isinstance(error, Unavailable):
            headers = {"Retry-After": str(error.retry_after_s)}
        return error_response(request, http_status(error), error_body(error), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field(tuple(e.get("loc", ()))), "rule": str(e.get("msg", ""))}
            for e in error.errors()
        ][:20]
        message = "; ".join(f"{p['field']}: {p['rule']}" for p in problems[:5])
        return error_response(
            request,
            422,
            {"code": "invalid_request", "message": message, "details": {"errors": problems}},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code: ErrorCode = _HTTP_CODES.get(error.status_code, ErrorCode.HTTP_ERROR)
        return error_response(
            request, error.status_code, {"code": code, "message": str(error.detail)}
        )

    @app.exception_handler(UnstorableValue)
    async def _unstorable(request: Request, error: UnstorableValue) -> JSONResponse:
        # A value the store cannot hold slipped past validation: still the caller's input.
        log.warning("unstorable_input", error_type=str(error))
        return error_response(
            request,
            422,
            {"code": "invalid_request", "message": "a value in the request cannot be stored"},
        )

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, error: StoreUnavailable) -> JSONResponse:
        # The store is unreachable or timed out: nothing was done; say when to retry.
        log.warning("store_unavailable", error_type=str(error))
        return error_response(
            request,
            503,
            {"code": "store_unavailable", "message": "the store is unavailable; retry shortly"},
            {"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled_error", error_type=type(error).__name__)
        return error_response(
            request,
            500,
            {"code": "internal_error", "message": "an unexpected error; it has been logged"},
        )
