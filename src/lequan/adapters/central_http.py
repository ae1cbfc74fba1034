"""The province's client of central: ``ports.central.CentralPlatform`` over central's
signed HTTP API (docs/central.md).

One ``httpx.Client`` with explicit ``Timeout`` and ``Limits``; every call is
signed anew (a fresh timestamp and nonce per attempt, so a retry after a
central restart is not refused as stale); every call is idempotent, so a
call that failed on the way (refused, timed out, 5xx) is tried again up to
``attempts`` times in all, with a short backoff. What still fails is
``CentralUnavailable``: the call may or may not have happened, and the
caller repeats it with the same ids. A 4xx is the caller's mistake and
raises ``CentralRefused`` with central's code (never retried).

Calls larger than ``BATCH_MAX`` are split into batches, in order.
``pseudonyms`` blinds each ID number, has central evaluate the batch,
verifies central's proof against the public key the province was given
with its credentials, and finalizes (``lequan.oprf``).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

import httpx

from lequan import oprf
from lequan.ports.central import (
    BATCH_MAX,
    CentralDay,
    CentralUnavailable,
    ConsumeOutcome,
    ConsumeRequest,
    ConsumeResult,
    EventOutcome,
    EventResult,
    LockOutcome,
    LockRequest,
    LockResult,
    SyncEvent,
)
from lequan.signing import signature_headers

__all__ = ["CentralRefused", "HttpCentral"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741  # an item of a batch

# Backoff between attempts: this, doubled each time, with jitter up to as much again.
BACKOFF_S = 0.05
BACKOFF_MAX_S = 1.0


# How long the readiness probe waits: a relay asks it once per idle pause.
READY_TIMEOUT_S = 2.0


class CentralRefused(Exception):
    """Central refused the call as malformed (4xx): a bug in the caller, never retried.
    ``code`` is central's stable error code (docs/central.md)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"central refused the call ({status} {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class HttpCentral:
    """One province's client of central (implements ``CentralPlatform``); thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        app_id: str,
        secret: str,
        public_key: str,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        connections_max: int = 16,
        attempts: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        assert 1 <= attempts <= 10, attempts
        self._app_id = app_id
        self._secret = secret
        self.public_key_hex = public_key
        self._public_key = oprf.public_key_from_hex(public_key)
        self._attempts = attempts
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=connections_max,
                max_keepalive_connections=connections_max,
                keepalive_expiry=10.0,
            ),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpCentral:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # The calls.

    def ready(self) -> bool:
        try:
            response = self._client.get("/readyz", timeout=READY_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def pseudonyms(self, id_numbers: Sequence[str]) -> list[str]:
        def batch(chunk: Sequence[str]) -> list[str]:
            clients, blinded = oprf.blind(chunk)
            body = {"blinded": [base64.b64encode(b).decode("ascii") for b in blinded]}
            answer = self._call("POST", "/v1/pseudonyms", body)
            try:
                evaluated = base64.b64decode(str(answer["evaluated"]), validate=True)
                return oprf.finalize(clients, evaluated, self._public_key)
            except (KeyError, ValueError, oprf.ProofInvalid) as error:
                # Not central, or not central's key: nothing derived from it is used.
                raise CentralUnavailable(f"central's pseudonyms do not verify: {error}") from None

        return _batched(id_numbers, batch)

    def lock(self, requests: Sequence[LockRequest]) -> list[LockResult]:
        def batch(chunk: Sequence[LockRequest]) -> list[LockResult]:
            body = {
                "locks": [
                    {
                        "lock_id": r.lock_id,
                        "pseudonym": r.pseudonym,
                        "category": r.category,
                        "items_max": r.items_max,
                        "hold_s": r.hold_s,
                    }
                    for r in chunk
                ]
            }
            answer = self._call("POST", "/v1/locks", body)
            return [
                LockResult(
                    lock_id=item["lock_id"],
                    outcome=LockOutcome(item["outcome"]),
                    expires_at=datetime.fromisoformat(item["expires_at"])
                    if item.get("expires_at")
                    else None,
                )
                for item in _results(answer, len(chunk))
            ]

        return _batched(requests, batch)

    def consume(self, requests: Sequence[ConsumeRequest]) -> list[ConsumeResult]:
        def batch(chunk: Sequence[ConsumeRequest]) -> list[ConsumeResult]:
            body = {
                "consumptions": [
                    {
                        "lock_id": r.lock_id,
                        "voucher_id": r.voucher_id,
                        "redemption_id": r.redemption_id,
                        "category": r.category,
                        "serial": r.serial,
                        "imei": r.imei,
                        "invoice_no": r.invoice_no,
                        "price_fen": r.price_fen,
                        "subsidy_fen": r.subsidy_fen,
                    }
                    for r in chunk
                ]
            }
            answer = self._call("POST", "/v1/consumptions", body)
            return [
                ConsumeResult(item["lock_id"], ConsumeOutcome(item["outcome"]))
                for item in _results(answer, len(chunk))
            ]

        return _batched(requests, batch)

    def release(self, lock_ids: Sequence[tuple[str, str]]) -> None:
        def batch(chunk: Sequence[tuple[str, str]]) -> list[None]:
            body = {"releases": [{"lock_id": i, "reason": reason} for i, reason in chunk]}
            self._call("POST", "/v1/releases", body)
            return []

        _batched(lock_ids, batch)

    def deliver(self, events: Sequence[SyncEvent]) -> list[EventResult]:
        def batch(chunk: Sequence[SyncEvent]) -> list[EventResult]:
            body = {
                "events": [
                    {
                        "event_id": e.event_id,
                        "topic": e.topic,
                        "at": e.at.isoformat(),
                        "payload": dict(e.payload),
                        "voucher_id": e.voucher_id,
                        "seq": e.seq,
                    }
                    for e in chunk
                ]
            }
            answer = self._call("POST", "/v1/events", body)
            return [
                EventResult(item["event_id"], EventOutcome(item["outcome"]), item.get("reason"))
                for item in _results(answer, len(chunk))
            ]

        return _batched(events, batch)

    def day(self, day: date) -> CentralDay:
        answer = self._call("GET", f"/v1/days/{day.isoformat()}", None)
        return CentralDay(
            day=date.fromisoformat(answer["day"]),
            province=answer["province"],
            categories={
                category: {fact: (int(pair[0]), int(pair[1])) for fact, pair in facts.items()}
                for category, facts in answer["categories"].items()
            },
            vouchers={
                voucher: (str(entry[0]), str(entry[1]), int(entry[2]))
                for voucher, entry in answer["vouchers"].items()
            },
        )

    # The wire.

    def _call(self, method: str, path: str, body: Any) -> Any:
        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        failure = "no attempt"
        for attempt in range(self._attempts):
            if attempt:
                delay_s = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1))
                time.sleep(delay_s + secrets.randbelow(1000) / 1000 * delay_s)
            headers = signature_headers(
                self._app_id,
                self._secret,
                method,
                path,
                raw,
                timestamp=int(time.time()),
                nonce=secrets.token_urlsafe(18),
            )
            headers["content-type"] = "application/json"
            try:
                response = self._client.request(method, path, content=raw, headers=headers)
            except httpx.HTTPError as error:  # refused, reset, timed out
                failure = f"{type(error).__name__}: {error}"
                continue
            if response.status_code >= 500 or response.status_code == 429:
                failure = f"{response.status_code} {_code(response)}"
                continue
            if response.status_code >= 400:
                raise CentralRefused(response.status_code, _code(response), _message(response))
            try:
                return response.json()
            except ValueError:
                failure = "an answer that is not JSON"
                continue
        raise CentralUnavailable(
            f"central did not answer {method} {path} after {self._attempts} attempts ({failure})"
        )


def _batched(items: Sequence[I], call: Callable[[Sequence[I]], list[T]]) -> list[T]:
    results: list[T] = []
    for start in range(0, len(items), BATCH_MAX):
        results += call(items[start : start + BATCH_MAX])
    return results


def _results(answer: Any, expected: int) -> list[dict[str, Any]]:
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != expected:
        raise CentralUnavailable("central answered a batch with another number of results")
    return results


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", "unknown"))
    except (ValueError, AttributeError):
        return "unknown"


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        return response.text[:200]
