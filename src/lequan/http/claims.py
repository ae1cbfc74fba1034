"""Claims handed from HTTP to the claim service, however they arrived.

The framework's claim routes (``routes/channel.py``) and the lean routes in
front of the framework (``fastpath.py``) both hand their claims to one
``ClaimDesk``, so a claim is answered alike on either path. Single claims
that arrive within ``claim_coalesce_ms`` of each other are handed on as one
batch per channel, so a thousand people pressing "claim" through one channel
cost one lookup, one gate call and one share of a group commit, as a
channel's own batch would. Both count their items against the process's
in-flight bound (``claim_inflight_max``) while the claim service decides them;
a claim entered in a round's fair start then waits for its draw on the event
loop, as a future, holding no thread and no in-flight place (the draws bound
those: ``draw_waiting_max``), so a window's crowd is taken in whole rather than
its first arrivals only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from json.encoder import encode_basestring
from typing import Any

from anyio import CapacityLimiter, to_thread

from lequan.bootstrap import Platform
from lequan.domain.errors import InvalidInput
from lequan.http.admission import InFlightLimit, TokenBuckets
from lequan.http.coalescing import Coalescer
from lequan.http.envelope import NO_HEADERS, RawHeaders, error_headers, replayed_headers
from lequan.http.schemas import BatchClaimIn, ClaimIn, ClaimSignalsIn
from lequan.services.claim_answers import ClaimResult, issued_voucher_json
from lequan.services.claim_requests import ClaimSignals
from lequan.services.claiming import (
    ACCEPTED_OUTCOMES,
    ClaimRequest,
    Pending,
    Waiting,
    wait_entered,
)
from lequan.services.idempotency import Idempotency, RenderedBody, validate_key
from lequan.services.risk import HELD_FOR_REVIEW

__all__ = ["ASYNC_APPLIED", "ClaimDesk", "claim_hash", "claim_headers", "respond_async"]


class ClaimDesk:
    """Where one app's claims meet the claim service: single claims coalesced, batches
    on threads of their own, both within the in-flight bound."""

    def __init__(
        self, platform: Platform, *, admission: InFlightLimit, throttle: TokenBuckets
    ) -> None:
        self._platform = platform
        self._admission = admission
        self._throttle = throttle
        settings = platform.rt.settings
        # Single claims of one channel arriving together: one call of the claim service.
        self._coalescer: Coalescer[str, ClaimRequest, ClaimResult | Pending] = Coalescer(
            platform.claims.claim_or_hold,
            wait_s=settings.claim_coalesce_ms / 1000,
            batch_max=settings.claim_batch_items_max,
            workers=settings.claim_coalesce_workers,
            name="lequan-claims",
        )
        # Threads of its own: a batch waiting for room in the commit queue (up to
        # claim_queue_wait_ms) must not hold the threads the framework's routes share.
        self._threads = CapacityLimiter(settings.claim_batch_threads_max)

    async def claim(
        self, app_id: str, key: str, claim: ClaimIn, *, respond_async: bool = False
    ) -> ClaimResult:
        """One claim, answered with the others of its channel arriving meanwhile; with
        ``respond_async``, one waiting for a round's draw is answered at once (202)."""
        request = _claim_request(app_id, key, claim)
        async with self._admission.admit(1):
            got = await self._coalescer.submit(app_id, request)
        if isinstance(got, ClaimResult):
            return got
        if respond_async:
            return self._platform.claims.accepted(got)
        [answered] = await self._wait_entered([got])
        return answered

    async def claim_batch(
        self, app_id: str, batch: BatchClaimIn, *, respond_async: bool = False
    ) -> tuple[RenderedBody, dict[str, int]]:
        """A channel's batch: its ``BatchClaimOut`` as JSON text, and its answers counted
        by outcome. Each item costs the app a token (the call itself paid one). With
        ``respond_async``, the claims waiting for a round's draw are answered at once
        (202 ``entered`` or ``queued``) instead of when the draw reaches them."""
        settings = self._platform.rt.settings
        if len(batch.items) > settings.claim_batch_items_max:
            raise InvalidInput(
                "batch_too_large",
                f"a batch holds at most {settings.claim_batch_items_max} items",
            )
        self._throttle.take(app_id, cost=len(batch.items) - 1)
        chars_max = settings.idempotency_key_chars_max
        requests = [
            _claim_request(app_id, validate_key(item.idempotency_key, chars_max=chars_max), item)
            for item in batch.items
        ]
        async with self._admission.admit(len(requests)):
            decided = await to_thread.run_sync(
                self._platform.claims.claim_or_hold, app_id, requests, limiter=self._threads
            )
        entered = [got for got in decided if isinstance(got, Pending)]
        if respond_async:
            answers = iter([self._platform.claims.accepted(p) for p in entered])
        else:
            answers = iter(await self._wait_entered(entered) if entered else [])
        results = [got if isinstance(got, ClaimResult) else next(answers) for got in decided]
        text, counts = _batch_text(requests, results)
        return RenderedBody(text), counts

    async def _wait_entered(self, entered: list[Pending]) -> list[ClaimResult]:
        """The answers of claims waiting for a round's draw, within the longest an entered
        claim may wait; one still waiting then hears ``commit_timeout`` (its claim goes
        on, and a retry with its key finds it). One wait per call's ``Waiting``."""
        waitings: dict[int, Waiting] = {id(p.waiting): p.waiting for p in entered}
        # ``asyncio.wait`` cancels nothing when it times out: the claims go on.
        await asyncio.wait(
            [asyncio.wrap_future(w.done) for w in waitings.values()],
            timeout=self._platform.claims.entered_wait_s,
        )
        return [wait_entered(p, timeout_s=0) for p in entered]

    def close(self) -> None:
        self._coalescer.close()


def respond_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header (RFC 7240) asks for ``respond-async``."""
    if not prefer:
        return False
    return any(
        part.split(";", 1)[0].strip().lower() == "respond-async" for part in prefer.split(",")
    )


# Said with an answer given at once because the call asked for it (RFC 7240).
ASYNC_APPLIED: RawHeaders = ((b"preference-applied", b"respond-async"),)


def claim_headers(result: ClaimResult) -> RawHeaders:
    """A claim's headers: a retry's answer says it is replayed; a refusal for now says
    when to come back, as its error says; an answer at once for a claim waiting for a
    draw, when to send it again."""
    if result.replayed:
        return replayed_headers(True)
    if result.outcome in ACCEPTED_OUTCOMES:
        retry_after_s = str(result.answer.body["retry_after_s"]).encode()
        return (*ASYNC_APPLIED, (b"retry-after", retry_after_s))
    if result.error is not None:
        return error_headers(result.error)
    return NO_HEADERS


def claim_hash(body: ClaimIn) -> str:
    """A claim is the same claim whether it came alone or in a batch: a retry may switch.

    The digest is of the fields as a compact JSON array (``json.dumps`` with
    ``ensure_ascii=False``), written out here: a thousand ``json.dumps`` calls
    per batch cost more than the claims' gate step.
    """
    region = body.location_region
    text = (
        f"[{encode_basestring(body.channel_user_id)},{encode_basestring(body.campaign_id)},"
        f"{encode_basestring(body.round_id)},{encode_basestring(body.template_id)},"
        f"{'null' if region is None else encode_basestring(region)}]"
    )
    # request_hash("claim", text), inlined: it is computed for every claim of a batch.
    return hashlib.sha256(_CLAIM_DIGEST_PREFIX + text.encode() + b"\x00").hexdigest()


_CLAIM_DIGEST_PREFIX = b"claim\x00"
# The status of a claim a risk rule held for review (``held_for_review``): nothing issued.
HELD_STATUS = 202


def _claim_request(app_id: str, key: str, claim: ClaimIn) -> ClaimRequest:
    """The claim service's request for a claim's body (alone, or a batch's item)."""
    return ClaimRequest(
        channel_user_id=claim.channel_user_id,
        campaign_id=claim.campaign_id,
        round_id=claim.round_id,
        template_id=claim.template_id,
        location_region=claim.location_region,
        key=Idempotency(app_id, key, claim_hash(claim)),
        signals=None if claim.signals is None else _claim_signals(claim.signals),
        pressed_at=claim.pressed_at,
    )


def _claim_signals(sent: ClaimSignalsIn) -> ClaimSignals:
    return ClaimSignals(
        device_id=sent.device_id,
        ip=sent.ip,
        account_age_s=sent.account_age_s,
        network_region=sent.network_region,
        channel_risk=sent.channel_risk,
    )


def _batch_text(
    requests: list[ClaimRequest], results: list[ClaimResult]
) -> tuple[str, dict[str, int]]:
    """The ``BatchClaimOut`` of a batch as JSON text, and its answers counted by outcome.

    Written as text: each issued voucher's JSON was rendered once already, for
    the stored answer, and is put in as it is.
    """
    items: list[str] = []
    counts: dict[str, int] = {}
    for index, (request, result) in enumerate(zip(requests, results, strict=True)):
        answer = result.answer
        # Answered at once, waiting for a round's draw: sent again later for the answer.
        accepted = result.outcome in ACCEPTED_OUTCOMES and not result.replayed
        held = answer.status_code == HELD_STATUS and not accepted  # held for an analyst
        ok = answer.status_code < 400 and not held and not accepted
        if accepted:
            outcome = result.outcome
        elif ok:
            outcome = "issued"
        elif held:
            outcome = HELD_FOR_REVIEW
        elif result.replayed:  # a stored answer: its code is in its body
            outcome = str(answer.body.get("code", result.outcome))
        else:
            outcome = result.outcome
        counts[outcome] = counts.get(outcome, 0) + 1
        # A held claim's item names its review, an accepted one when to come back and
        # its ticket; no other item has these fields.
        extra = ""
        if accepted:
            voucher, error = "null", "null"
            ticket = answer.body.get("draw_ticket")
            extra = f',"retry_after_s":{int(answer.body["retry_after_s"])}'
            if ticket is not None:
                extra += f',"draw_ticket":{encode_basestring(str(ticket))}'
        elif ok:
            voucher = issued_voucher_json(answer) or _json(answer.body.get("voucher"))
            error = "null"
        else:
            voucher = "null"
            error = "null" if held else answer.text or _json(dict(answer.body))
            if held:
                extra = f',"review_id":{encode_basestring(str(answer.body["review_id"]))}'
        items.append(
            f'{{"index":{index},"idempotency_key":{encode_basestring(request.key.key)},'
            f'"status_code":{answer.status_code},"outcome":{encode_basestring(outcome)},'
            f'"replayed":{"true" if result.replayed else "false"},"voucher":{voucher},'
            f'"error":{error}{extra}}}'
        )
    return '{"results":[' + ",".join(items) + '],"outcomes":' + _json(counts) + "}", counts


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
