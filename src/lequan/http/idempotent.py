"""Run a mutating call at most once per Idempotency-Key, replaying its answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response

from lequan.bootstrap import Platform
from lequan.http.envelope import replayed_headers
from lequan.http.errors import json_response
from lequan.ports import UnitOfWork
from lequan.services.claim_answers import answered
from lequan.services.idempotency import Answer, Idempotency, run_once

__all__ = ["answer_response", "run_idempotent"]


def run_idempotent(
    platform: Platform,
    idem: Idempotency,
    act: Callable[[Callable[[UnitOfWork, Any], None]], None],
    render: Callable[[Any], Answer],
) -> tuple[Answer, bool]:
    """(answer, replayed). ``act`` gets a ``record`` to call inside its transaction."""
    rt = platform.rt
    produced: list[Answer] = []

    def lookup() -> tuple[str, int, str] | None:
        with rt.store.unit_of_work(readonly=True) as uow:
            # Claims' keys too: a key a claim used is not used again for another call.
            return answered(uow, idem.app_id, [idem.key]).get(idem.key)

    def record(uow: UnitOfWork, result: Any) -> None:
        answer = render(result)
        produced.append(answer)
        idem.record(uow, answer, rt.clock.now())

    def attempt() -> Answer:
        act(record)
        assert produced, "the service must record its answer"
        return produced[-1]

    answer = run_once(inflight=rt.inflight, key=idem, lookup=lookup, act=attempt)
    return answer, not produced


def answer_response(request: Request, answer: Answer, *, replayed: bool) -> Response:
    return json_response(request, answer.status_code, answer.body, replayed_headers(replayed))
