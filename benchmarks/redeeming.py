"""After the sale: the winners spend their vouchers through the acquirer API, the ring
fakes its orders, and the admin API's review queue is read for what it flagged.

Every call is a real signed HTTP call to the server on loopback: ``POST
/v1/redemptions`` with ``RedeemIn.signals`` (the payer's token, the
terminal), ``POST /v1/redemptions/{id}/refunds`` for the refunds, and
``GET /v1/admin/reviews?kind=redemption`` with an operator's token for the
flags. Bounded: at most ``redemptions_max`` orders are planned, each ring
voucher is spent at most ``ring_cycles`` times, every call is sent again at
most ``RESENDS_MAX`` times after a 429 or 503, and the phase ends after
``duration_s_max`` whatever is left.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.adversaries import Population, RedemptionPlan
from benchmarks.risk_report import FlagSource, RedemptionSeen
from lequan.client import LequanAuth

__all__ = ["StoredVoucher", "read_flags", "spend"]

CONCURRENCY = 16  # calls in flight, as an acquirer's gateway keeps a small pool
REFUND_AFTER_S = 1.0  # "soon after": in the simulation's time, within the minute
SPEND_AGAIN_AFTER_S = 0.5
RESENDS_MAX = 5
RETRY_AFTER_S = 1.0
HTTP_TIMEOUT_S = 30.0
REVIEW_PAGES_MAX = 1000
FLAG_POLL_S = 1.0


@dataclass(frozen=True)
class StoredVoucher:
    voucher_id: str
    person: int
    channel_id: str


@dataclass
class _Attempt:
    person: int
    voucher: StoredVoucher
    plan: RedemptionPlan
    cycle: int
    outcome: str = "unanswered"
    redemption_id: str | None = None
    refunded: bool = False
    resends: int = 0


class _Phase:
    """The jobs of the redemption phase: orders and refunds, some of them after a delay."""

    def __init__(
        self, population: Population, client: httpx.AsyncClient, rng: random.Random
    ) -> None:
        self.population = population
        self.client = client
        self.rng = rng
        self.queue: asyncio.Queue[tuple[str, _Attempt]] = asyncio.Queue()
        self.attempts: list[_Attempt] = []
        self.pending = 0
        self.idle = asyncio.Event()
        self.orders = 0

    def put(self, job: str, attempt: _Attempt, *, after_s: float = 0.0) -> None:
        self.pending += 1
        self.idle.clear()
        if after_s <= 0:
            self.queue.put_nowait((job, attempt))
        else:
            asyncio.get_running_loop().call_later(after_s, self.queue.put_nowait, (job, attempt))

    def done(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.idle.set()

    async def worker(self) -> None:
        while True:
            job, attempt = await self.queue.get()
            try:
                if job == "redeem":
                    await self._redeem(attempt)
                else:
                    await self._refund(attempt)
            finally:
                self.done()

    async def _post(self, path: str, body: dict[str, Any], key: str) -> httpx.Response | None:
        for _ in range(RESENDS_MAX + 1):
            try:
                response = await self.client.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError:
                return None
            if response.status_code not in (429, 503):
                return response
            await asyncio.sleep(RETRY_AFTER_S)
        return response

    async def _redeem(self, attempt: _Attempt) -> None:
        plan, voucher = attempt.plan, attempt.voucher
        self.orders += 1
        body = {
            "voucher_id": voucher.voucher_id,
            "channel_id": voucher.channel_id,
            "channel_user_id": f"b{attempt.person}",
            "merchant_id": plan.merchant_id,
            "order_id": f"SIM-{self.orders:07d}",
            "order_amount_fen": plan.amount_fen,
            "mode": "in_store",
            "capture": "one_step",
            "signals": {"payer_id": plan.payer_id, "terminal_id": plan.terminal_id},
        }
        self.attempts.append(attempt)
        response = await self._post(
            "/v1/redemptions", body, f"sim-r-{voucher.voucher_id}-{attempt.cycle}"
        )
        if response is None:
            attempt.outcome = "transport_error"
            return
        answer = _json(response)
        if response.status_code == 201:
            attempt.outcome = "redeemed"
            attempt.redemption_id = str(answer.get("redemption_id"))
            if plan.refund:
                self.put("refund", attempt, after_s=REFUND_AFTER_S)
        elif response.status_code == 202:  # held, if the platform holds
            attempt.outcome = "held_for_review"
            attempt.redemption_id = answer.get("redemption_id")
        else:
            attempt.outcome = str(answer.get("code") or f"http_{response.status_code}")

    async def _refund(self, attempt: _Attempt) -> None:
        body = {"refund_amount_fen": attempt.plan.amount_fen, "reason": "customer request"}
        response = await self._post(
            f"/v1/redemptions/{attempt.redemption_id}/refunds",
            body,
            f"sim-f-{attempt.redemption_id}",
        )
        if response is None or response.status_code != 201:
            return
        attempt.refunded = True
        again = attempt.cycle + 1
        if (
            attempt.plan.fake
            and again < self.population.config.ring_cycles
            and _json(response).get("voucher_state") == "issued"
        ):
            # The refund gave the voucher back: the ring spends it on another fake order.
            follow = _Attempt(
                attempt.person, attempt.voucher, self.population.fake_order(self.rng), again
            )
            self.put("redeem", follow, after_s=SPEND_AGAIN_AFTER_S)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def spend(
    population: Population,
    vouchers: list[StoredVoucher],
    *,
    port: int,
    acquirer_id: str,
    secret: str,
    seed: int,
    duration_s_max: float,
) -> list[RedemptionSeen]:
    """Spend the vouchers as their holders would; the attempts and their answers."""
    rng = random.Random(seed)  # noqa: S311  # a reproducible phase, not a secret
    plans: list[_Attempt] = []
    for voucher in vouchers:
        plan = population.redemption_plan(voucher.person, rng)
        if plan is not None:
            plans.append(_Attempt(voucher.person, voucher, plan, 0))
    # The ring's orders first when the cap bites: they are what the phase is for.
    plans.sort(key=lambda a: not a.plan.fake)
    plans = plans[: population.config.redemptions_max]
    rng.shuffle(plans)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        auth=LequanAuth(acquirer_id, secret),
        timeout=HTTP_TIMEOUT_S,
        limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
    ) as client:
        phase = _Phase(population, client, rng)
        if not plans:
            return []
        for attempt in plans:
            phase.put("redeem", attempt)
        workers = [asyncio.create_task(phase.worker()) for _ in range(CONCURRENCY)]
        try:
            await asyncio.wait_for(phase.idle.wait(), timeout=duration_s_max)
        except TimeoutError:
            pass  # what is left unanswered is reported as such
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return [
        RedemptionSeen(
            person=a.person,
            voucher_id=a.voucher.voucher_id,
            merchant_id=a.plan.merchant_id,
            fake=a.plan.fake,
            outcome=a.outcome,
            redemption_id=a.redemption_id,
            refunded=a.refunded,
        )
        for a in phase.attempts
    ]


def _redemption_id(item: Mapping[str, Any]) -> str | None:
    """The redemption a review item is about, under the names a review item may use."""
    for key in ("redemption_id", "subject_id"):
        value = item.get(key)
        if isinstance(value, str):
            return value
    subject = item.get("subject")
    if isinstance(subject, Mapping):
        for key in ("redemption_id", "id"):
            value = subject.get(key)
            if isinstance(value, str):
                return value
    return None


def _reasons(item: Mapping[str, Any]) -> tuple[str, ...]:
    """The reason codes of a review item: strings, or objects with a ``code``."""
    found: list[str] = []
    for reason in item.get("reasons") or item.get("rules") or ():
        if isinstance(reason, str):
            found.append(reason)
        elif isinstance(reason, Mapping):
            code = reason.get("code") or reason.get("reason") or reason.get("rule")
            if isinstance(code, str):
                found.append(code)
    return tuple(found)


async def _read_queue(client: httpx.AsyncClient) -> tuple[dict[str, tuple[str, ...]] | None, str]:
    flags: dict[str, tuple[str, ...]] = {}
    cursor: str | None = None
    for _ in range(REVIEW_PAGES_MAX):
        params = {"kind": "redemption"} | ({"cursor": cursor} if cursor else {})
        try:
            response = await client.get("/v1/admin/reviews", params=params)
        except httpx.HTTPError as error:
            return None, f"GET /v1/admin/reviews failed: {type(error).__name__}"
        if response.status_code != 200:
            code = _json(response).get("code", "")
            return None, f"GET /v1/admin/reviews answered {response.status_code} {code}".strip()
        page = _json(response)
        for item in page.get("items") or ():
            if isinstance(item, Mapping) and item.get("kind", "redemption") == "redemption":
                redemption = _redemption_id(item)
                if redemption is not None:
                    flags[redemption] = flags.get(redemption, ()) + _reasons(item)
        cursor = page.get("next_cursor")
        if not cursor:
            return flags, ""
    return flags, f"stopped after {REVIEW_PAGES_MAX} pages"


async def read_flags(*, port: int, token: str, wait_s: float) -> FlagSource:
    """The redemptions the review queue lists, read again every FLAG_POLL_S until
    ``wait_s`` passed: rules that judge a minute's redemptions flag after it ends."""
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_TIMEOUT_S,
    ) as client:
        deadline = time.monotonic() + wait_s
        flags, note = await _read_queue(client)
        while flags is not None and time.monotonic() < deadline:
            await asyncio.sleep(FLAG_POLL_S)
            flags, note = await _read_queue(client)
    if flags is None:
        return FlagSource({}, available=False, note=note)
    return FlagSource(flags, available=True, note=note or "GET /v1/admin/reviews?kind=redemption")
