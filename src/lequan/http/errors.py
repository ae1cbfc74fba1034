"""Errors as JSON ``{code, message, request_id}``: every failure the API can
give, answered by the framework through the one envelope the lean routes use
too (``http/envelope.py``). Bad input never becomes a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from lequan.domain.errors import LequanError
from lequan.http.envelope import NO_HEADERS, RawHeaders, error_answer, render
from lequan.ports import StoreUnavailable, UnstorableValue

__all__ = ["install_error_handlers", "json_response"]


def json_response(
    request: Request, status: int, body: Mapping[str, Any], headers: RawHeaders = NO_HEADERS
) -> Response:
    """An answer as the framework sends it: the envelope's bytes and headers."""
    request_id = str(getattr(request.state, "request_id", "") or "")
    # For the request's metrics: an error's code, a redemption's status (envelope.py).
    request.state.answered = body
    if status >= 400:
        request.state.error_code = body.get("code")  # the big screen's errors by app
    response = Response(
        render(status, body, request_id), status_code=status, media_type="application/json"
    )
    response.raw_headers.extend(headers)
    return response


async def _answer_error(request: Request, error: Exception) -> Response:
    return json_response(request, *error_answer(error))


def install_error_handlers(app: FastAPI) -> None:
    # An unexpected error in a route is answered by the request middleware (app.py),
    # within the request's metrics and log line; the handler for ``Exception`` answers
    # one in that middleware itself.
    for kind in (
        LequanError,
        RequestValidationError,
        HTTPException,
        UnstorableValue,
        StoreUnavailable,
        Exception,
    ):
        app.add_exception_handler(kind, _answer_error)
