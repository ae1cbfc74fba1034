"""First-come claiming: cheap refusals from memory, an atomic reservation in
the gate, then a group commit of the vouchers before anyone hears "issued".

Durability rule: an ``issued`` answer means the voucher row is committed.
Reservations whose commit fails are handed back to the gate, so stock is
never lost to a failed write and never sold twice.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from lequan.domain.campaigns import (
    CampaignStatus,
    Eligibility,
    RoundPhase,
    eligibility_reasons,
    round_phase,
)
from lequan.domain.errors import Conflict, LequanError, NotFound, Unavailable
from lequan.domain.ledger import issue_entry
from lequan.domain.vouchers import VoucherState
from lequan.ports import (
    ConstraintViolated,
    GateUnavailable,
    ReserveOutcome,
    ReserveRequest,
    StoreError,
    StoreUnavailable,
    UnitOfWork,
)
from lequan.rows import StockKey, VoucherRow
from lequan.services.batching import BatchWriter
from lequan.services.campaigns import CampaignCache, pool_key
from lequan.services.idempotency import Answer, Idempotency, in_flight, replay_or_refuse
from lequan.services.runtime import Runtime
from lequan.services.views import error_body, http_status, new_ids, voucher_body

__all__ = [
    "ClaimRequest",
    "ClaimResult",
    "ClaimService",
    "GroupCommitter",
    "answered",
    "issued_answer",
    "issued_voucher_json",
]

log = structlog.get_logger(__name__)

_GATE_REFUSALS: dict[ReserveOutcome, tuple[str, str]] = {
    ReserveOutcome.SOLD_OUT: ("sold_out", "the vouchers of this round are gone"),
    ReserveOutcome.ALREADY_CLAIMED: (
        "already_claimed",
        "the person has already claimed in this round through this channel",
    ),
    ReserveOutcome.CAMPAIGN_LIMIT: (
        "claim_limit_reached",
        "the person has claimed as many vouchers as this campaign allows",
    ),
    ReserveOutcome.UNKNOWN_STOCK: ("sold_out", "this round offers no such voucher here"),
}


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    channel_user_id: str
    campaign_id: str
    round_id: str
    template_id: str
    location_region: str | None
    key: Idempotency


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The answer for one claim; ``outcome`` is ``issued`` or an error code."""

    outcome: str
    answer: Answer
    replayed: bool = False
    error: LequanError | None = None  # a refusal's, for its HTTP headers (Retry-After)


@dataclass(slots=True)
class _Pending:
    request: ReserveRequest
    claim_seq: int
    voucher: VoucherRow
    key: Idempotency
    answer: Answer
    reserved_at: float  # monotonic s, taken before asking the gate


class _TooLate(Exception):
    """A transaction outlived a reservation's ttl before COMMIT: it is rolled back."""


class _DoesNotFit(Exception):
    """A stock or a budget could not hold every claim of the batch: rolled back, to be
    written again with those rows locked first and only the claims that fit."""


@dataclass(slots=True)
class _Job:
    claims: list[_Pending]
    future: Future[list[LequanError | Answer | None]] = field(default_factory=Future)


# The store's answer to a claim its stock no longer holds, whatever the gate said.
_SOLD_OUT_IN_STORE = Conflict(*_GATE_REFUSALS[ReserveOutcome.SOLD_OUT])


def _refusal(error: LequanError, status_code: int) -> ClaimResult:
    """A refusal, rendered once: the claims of a batch refused alike share it."""
    expected = http_status(error)
    assert status_code == expected
    return ClaimResult(error.code, Answer.of(status_code, error_body(error)), error=error)


def _tell_gate(
    step: Callable[[list[tuple[ReserveRequest, int]]], None],
    what: str,
    reservations: list[tuple[ReserveRequest, int]],
) -> None:
    """Settle or release reservations; a gate that cannot hear it is logged, not
    raised: what stays pending is reaped (GateKeeper)."""
    if not reservations:
        return
    try:
        step(reservations)
    except Exception as error:
        log.error(f"gate_{what}_failed", error_type=type(error).__name__, claims=len(reservations))


class GroupCommitter(BatchWriter[_Job]):
    """One writer thread that commits the claims of many requests per transaction.

    Once a claim is submitted the committer owns its consequences, whoever is
    still waiting: it hands a failed reservation back to the gate and lets go
    of the idempotency key only after the outcome is known. So a caller that
    gave up waiting (``commit_timeout``) can retry with the same key and gets
    either "in flight" or the stored answer, never a second voucher.

    Bounded: at most ``queue_max`` claims wait. A caller makes room for its
    claims (``make_room``) before it asks the gate, waiting up to
    ``claim_queue_wait_ms`` for the writer to catch up: backpressure costs a
    short wait, not a reservation handed back and a retry. Beyond the wait,
    ``overloaded`` (429), with nothing reserved.
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        batch_size_max: int,
        wait_ms: float,
        queue_max: int,
        on_budget_exhausted: Callable[[str, int], None],
        on_sold_out: Callable[[str, str], None],
    ) -> None:
        super().__init__(
            name="lequan-group-commit",
            size_max=batch_size_max,
            wait_s=wait_ms / 1000,
            size=lambda job: len(job.claims),
        )
        self._rt = rt
        self._queue_max = queue_max
        self._pending = 0  # places taken in the queue: made room for, or submitted
        self._room = threading.Condition(self._lock)
        self._on_budget_exhausted = on_budget_exhausted
        self._on_sold_out = on_sold_out
        self._start()

    @property
    def waiting(self) -> int:
        """Places taken in the queue: claims made room for or waiting to be committed."""
        return self._pending

    def make_room(self, count: int, *, wait_s: float) -> None:
        """Take ``count`` places in the queue, waiting up to ``wait_s`` for them.

        Refuses with ``overloaded`` once the wait is over (or at once, for more
        claims than the queue holds), ``store_unavailable`` when shutting down.
        """
        deadline = time.monotonic() + wait_s
        with self._room:
            while True:
                if self._closed:
                    raise Unavailable("store_unavailable", "the platform is shutting down")
                if self._pending + count <= self._queue_max:
                    self._pending += count
                    return
                left_s = deadline - time.monotonic()
                if left_s <= 0 or count > self._queue_max:
                    raise Unavailable(
                        "overloaded",
                        "too many claims are waiting to be committed",
                        retry_after_s=1,
                    )
                self._room.wait(left_s)

    def give_back(self, count: int) -> None:
        """Hand back places taken by ``make_room`` and not used."""
        if count:
            with self._room:
                self._pending -= count
                assert self._pending >= 0
                self._room.notify_all()

    def submit(
        self, claims: list[_Pending], *, room: int
    ) -> Future[list[LequanError | Answer | None]]:
        """Queue ``claims`` in the ``room`` places made for them; the rest go back.

        The places are the committer's from this call on, whatever it raises.
        """
        assert 0 < len(claims) <= room
        job = _Job(claims)
        with self._room:
            closed = self._closed
            self._pending -= room if closed else room - len(claims)
            self._room.notify_all()
            if not closed:
                # Queued under the lock: ``close`` cannot slip its stop signal in
                # between and leave this job behind it, never handled.
                self._put(job)
        if closed:
            raise Unavailable("store_unavailable", "the platform is shutting down")
        return job.future

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what was submitted, then stop; claims waiting for room hear at once."""
        with self._room:
            self._closed = True
            self._room.notify_all()
        super().close(timeout_s)

    def _handle_batch(self, jobs: list[_Job]) -> None:
        claims = [c for job in jobs for c in job.claims]
        # The fence of a gate rebuild: a reservation this old is never committed.
        oldest = time.monotonic() - self._rt.settings.claim_reservation_ttl_s
        fresh = [i for i, c in enumerate(claims) if c.reserved_at >= oldest]
        outcomes: list[LequanError | Answer | None] = [self._too_late()] * len(claims)
        if fresh:
            try:
                committed = self._commit([claims[i] for i in fresh])
            except Exception as error:  # the writer must never die; every waiter gets an answer
                log.error("group_commit_failed", error_type=type(error).__name__, claims=len(fresh))
                failed = Unavailable(
                    "store_unavailable", "the store did not accept the claim; retry"
                )
                committed = [failed] * len(fresh)
            for i, outcome in zip(fresh, committed, strict=True):
                outcomes[i] = outcome
        settle = [
            (claim.request, claim.claim_seq)
            for claim, outcome in zip(claims, outcomes, strict=True)
            if outcome is claim.answer
        ]
        release = [
            (claim.request, claim.claim_seq)
            for claim, outcome in zip(claims, outcomes, strict=True)
            if outcome is not claim.answer
        ]
        # Released before anyone hears: a retry must find the stock and the
        # person's count as if the failed claim had never been.
        _tell_gate(self._rt.gate.release, "release", release)
        self._rt.inflight.release_many((c.key.app_id, c.key.key) for c in claims)
        self.give_back(len(claims))
        # Flagged before anyone hears: their next claim is refused from memory.
        self._flag_sold_out(claims, outcomes)
        offset = 0
        for job in jobs:
            job.future.set_result(outcomes[offset : offset + len(job.claims)])
            offset += len(job.claims)
        # Settled after: only the gate's journal waits on it.
        _tell_gate(self._rt.gate.settle, "settle", settle)

    def _flag_sold_out(
        self, claims: list[_Pending], outcomes: list[LequanError | Answer | None]
    ) -> None:
        """Stocks the store refused claims of, though the gate had let them through:
        flagged sold out (here and, through the board, everywhere), and logged, since
        it means the gate believed in more stock than there was."""
        refused: dict[tuple[str, str], int] = defaultdict(int)
        for claim, outcome in zip(claims, outcomes, strict=True):
            if outcome is _SOLD_OUT_IN_STORE:
                refused[(claim.request.pool, claim.request.template_id)] += 1
        for (pool, template_id), count in sorted(refused.items()):
            log.warning(
                "stock_refused_past_the_gate", pool=pool, template_id=template_id, claims=count
            )
            self._on_sold_out(pool, template_id)

    def _before_commit(self, claims: list[_Pending]) -> None:
        """Roll back rather than commit a reservation older than its ttl (the fence)."""
        oldest = time.monotonic() - self._rt.settings.claim_reservation_ttl_s
        if any(c.reserved_at < oldest for c in claims):
            raise _TooLate

    @staticmethod
    def _too_late() -> Unavailable:
        return Unavailable(
            "commit_timeout",
            "the claim waited too long to be committed; retry with the same Idempotency-Key",
        )

    def _commit(self, claims: list[_Pending]) -> list[LequanError | Answer | None]:
        """Commit all claims in one transaction; on a conflict, one by one to isolate it."""
        now = self._rt.clock.now()
        try:
            return self._transaction(claims, now)
        except _TooLate:
            return [self._too_late()] * len(claims)
        except ConstraintViolated:
            pass
        except StoreUnavailable as error:
            log.warning("group_commit_retry_single", error_type=type(error).__name__)
        results: list[LequanError | Answer | None] = []
        for claim in claims:
            results.append(self._commit_one(claim, now))
        return results

    def _commit_one(self, claim: _Pending, now: datetime) -> LequanError | Answer | None:
        try:
            return self._transaction([claim], now)[0]
        except _TooLate:
            return self._too_late()
        except ConstraintViolated:
            with self._rt.store.unit_of_work(readonly=True) as uow:
                stored = answered(uow, claim.key.app_id, [claim.key.key]).get(claim.key.key)
            if stored is not None:
                try:
                    replay = replay_or_refuse(stored, claim.key)
                except LequanError as error:
                    return error
                assert replay is not None
                return replay
            return Conflict("already_claimed", "the person has already claimed in this round")
        except StoreError:
            return Unavailable("store_unavailable", "the store did not accept the claim; retry")

    def _transaction(
        self, claims: list[_Pending], now: datetime
    ) -> list[LequanError | Answer | None]:
        """The claims in one transaction: all of them, counted out of their stocks and
        budgets last (the common case), or, when one of those cannot hold them all,
        again with its rows locked first and only the claims that fit."""
        try:
            with self._rt.store.unit_of_work() as uow:
                outcomes = self._write_all(uow, claims, now)
                self._before_commit(claims)
                uow.commit()
            return outcomes
        except _DoesNotFit:
            pass
        with self._rt.store.unit_of_work() as uow:
            outcomes = self._write_fitting(uow, claims, now)
            self._before_commit(claims)
            uow.commit()
        return outcomes

    def _write_all(
        self, uow: UnitOfWork, claims: list[_Pending], now: datetime
    ) -> list[LequanError | Answer | None]:
        """Every claim written, then counted out; ``_DoesNotFit`` if one count fails.

        The stock and campaign rows are where every process's batches meet
        (each holds them from its update to its commit), so they are updated
        last: locked for those updates and the commit, not for the inserts.
        """
        by_campaign = _by_campaign(claims)
        uow.vouchers.insert_claims(
            [c.voucher for c in claims],
            [(c.key.app_id, c.key.key, c.key.request_hash) for c in claims],
            now,
        )
        for campaign_id in sorted(by_campaign):  # stocks, then the campaign, in key order
            indexes = by_campaign[campaign_id]
            by_stock = _by_stock(campaign_id, claims, indexes)
            for key in sorted(by_stock):
                if not uow.campaigns.take_stock(key, len(by_stock[key])):
                    raise _DoesNotFit
            issued = issue_entry(sum(claims[i].voucher.face_fen for i in indexes))
            if not uow.ledger.record(
                issued, campaign_id=campaign_id, now=now, voucher_count=len(indexes)
            ):
                raise _DoesNotFit
        return [c.answer for c in claims]

    def _write_fitting(
        self, uow: UnitOfWork, claims: list[_Pending], now: datetime
    ) -> list[LequanError | Answer | None]:
        """The claims that their stocks and budgets hold, those rows locked first; the
        others refused in order."""
        outcomes: list[LequanError | Answer | None] = [None] * len(claims)
        by_campaign = _by_campaign(claims)
        accepted: list[int] = []
        for campaign_id in sorted(by_campaign):  # lock campaign rows in primary-key order
            taken = self._take(uow, campaign_id, claims, by_campaign[campaign_id], outcomes)
            if taken:
                recorded = uow.ledger.record(
                    issue_entry(sum(claims[i].voucher.face_fen for i in taken)),
                    campaign_id=campaign_id,
                    now=now,
                    voucher_count=len(taken),
                )
                assert recorded, "the campaign row is locked and its room was counted"
            accepted.extend(taken)
        accepted.sort()
        uow.vouchers.insert_claims(
            [claims[i].voucher for i in accepted],
            [
                (claims[i].key.app_id, claims[i].key.key, claims[i].key.request_hash)
                for i in accepted
            ],
            now,
        )
        for i in accepted:
            outcomes[i] = claims[i].answer
        return outcomes

    def _take(
        self,
        uow: UnitOfWork,
        campaign_id: str,
        claims: list[_Pending],
        indexes: list[int],
        outcomes: list[LequanError | Answer | None],
    ) -> list[int]:
        """The claims of one campaign that its stocks and its budget hold, counted
        out of both; each of the others gets its refusal in ``outcomes``.

        Reached when a stock or the budget did not hold a whole batch: the
        budget is running out, or the gate let through more than a stock
        holds (it forgot decrements in a failover, or two processes kept
        gates of their own). The rows are read locked, stocks in key order
        before the campaign row as in every writer, and the claims taken in
        order while they fit.
        """
        by_stock = _by_stock(campaign_id, claims, indexes)
        keys = sorted(by_stock)
        stock_room: dict[StockKey, int] = {}
        for key in keys:
            initial, issued = uow.campaigns.lock_stock(key)
            stock_room[key] = initial - issued
        budget, committed = uow.campaigns.lock_campaign_budget(campaign_id)
        budget_room = budget - committed
        taken: list[int] = []
        counted: dict[StockKey, int] = dict.fromkeys(keys, 0)
        short_of_budget = False
        for i in indexes:
            v = claims[i].voucher
            key = (campaign_id, v.round_id, v.channel_id, v.template_id)
            if counted[key] >= stock_room[key]:
                outcomes[i] = _SOLD_OUT_IN_STORE
            elif v.face_fen > budget_room:
                short_of_budget = True
                outcomes[i] = Conflict("budget_exhausted", "the campaign's budget is used up")
            else:
                counted[key] += 1
                budget_room -= v.face_fen
                taken.append(i)
        for key in keys:
            if counted[key]:
                counted_out = uow.campaigns.take_stock(key, counted[key])
                assert counted_out, "the stock row is locked by this transaction"
        if short_of_budget:
            self._on_budget_exhausted(campaign_id, budget_room)
        return taken


def _by_campaign(claims: list[_Pending]) -> dict[str, list[int]]:
    by_campaign: dict[str, list[int]] = defaultdict(list)
    for i, claim in enumerate(claims):
        by_campaign[claim.voucher.campaign_id].append(i)
    return by_campaign


def _by_stock(
    campaign_id: str, claims: list[_Pending], indexes: list[int]
) -> dict[StockKey, list[int]]:
    by_stock: dict[StockKey, list[int]] = defaultdict(list)
    for i in indexes:
        v = claims[i].voucher
        by_stock[(campaign_id, v.round_id, v.channel_id, v.template_id)].append(i)
    return by_stock


class ClaimService:
    """Claims for one process: the campaign cache, the gate and the group committer."""

    def __init__(
        self,
        rt: Runtime,
        cache: CampaignCache,
        *,
        on_gate_lost: Callable[[str], None] = lambda _campaign_id: None,
        on_sold_out: Callable[[str, str], None] = lambda _pool, _template_id: None,
    ) -> None:
        self._rt = rt
        self._cache = cache
        self._on_gate_lost = on_gate_lost
        self._on_sold_out = on_sold_out
        s = rt.settings
        self.committer = GroupCommitter(
            rt,
            batch_size_max=s.claim_batch_size_max,
            wait_ms=s.claim_batch_wait_ms,
            queue_max=s.claim_queue_max,
            on_budget_exhausted=cache.budget_room.__setitem__,
            on_sold_out=self._mark_sold_out,
        )

    def close(self) -> None:
        self.committer.close()

    def claim(self, channel_id: str, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """Answer every request, in order; refusals are answers too, never exceptions."""
        assert len(requests) <= self._rt.settings.claim_batch_items_max
        rt = self._rt
        now = rt.clock.now()
        results: list[ClaimResult | None] = [None] * len(requests)
        held: list[int] = []
        handed: set[int] = set()  # their keys now belong to the group committer
        try:
            self._hold_or_replay(channel_id, requests, results, held)
            self._claim_held(channel_id, requests, results, now, handed)
        except StoreError as error:
            log.warning("claim_store_unreadable", error_type=type(error).__name__)
            refusal = Unavailable("store_unavailable", "the store cannot be read; retry")
            for i, result in enumerate(results):
                if result is None:
                    results[i] = _refusal(refusal, http_status(refusal))
        finally:
            rt.inflight.release_many(
                (requests[i].key.app_id, requests[i].key.key) for i in held if i not in handed
            )
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _hold_or_replay(
        self,
        channel_id: str,
        requests: Sequence[ClaimRequest],
        results: list[ClaimResult | None],
        held: list[int],
    ) -> None:
        """Hold each key in flight first, then look for stored answers.

        In this order a key's earlier request has either let go (and its
        answer is stored, since the committer stores before letting go) or
        still holds it (409): one query, no window in between.
        """
        holds = self._rt.inflight.acquire_many([(r.key.app_id, r.key.key) for r in requests])
        busy: ClaimResult | None = None
        for i, now_held in enumerate(holds):
            if now_held:
                held.append(i)
                continue
            if busy is None:
                error = in_flight()
                busy = _refusal(error, http_status(error))
            results[i] = busy
        if not held:
            return
        with self._rt.store.unit_of_work(readonly=True) as uow:
            stored = answered(uow, channel_id, [requests[i].key.key for i in held])
        for i in held:
            request = requests[i]
            try:
                replay = replay_or_refuse(stored.get(request.key.key), request.key)
            except LequanError as error:
                results[i] = _refusal(error, http_status(error))
                continue
            if replay is not None:
                results[i] = ClaimResult("replayed", replay, replayed=True)

    def _claim_held(
        self,
        channel_id: str,
        requests: Sequence[ClaimRequest],
        results: list[ClaimResult | None],
        now: datetime,
        handed: set[int],
    ) -> None:
        rt = self._rt
        # What is on offer first: after a sell-out (or before a release) the
        # whole flood is answered from memory, without reading the store.
        offers: dict[tuple[str, str, str], _Offer | ClaimResult] = {}
        todo: list[tuple[int, _Offer]] = []
        for i, result in enumerate(results):
            if result is not None:
                continue
            request = requests[i]
            group = (request.campaign_id, request.round_id, request.template_id)
            offer = offers.get(group)
            if offer is None:
                made = self._offer(channel_id, request, now)
                offer = offers[group] = (
                    _refusal(made, http_status(made)) if isinstance(made, LequanError) else made
                )
            if isinstance(offer, ClaimResult):
                results[i] = offer
            else:
                todo.append((i, offer))
        if not todo:
            return
        with rt.store.unit_of_work(readonly=True) as uow:
            claimants = uow.people.claimants(
                channel_id, [requests[i].channel_user_id for i, _ in todo]
            )
        verdicts: dict[tuple[str, str, str | None, bool], ClaimResult | None] = {}
        unknown: ClaimResult | None = None
        reserve: list[tuple[int, ReserveRequest, _Offer, str]] = []
        for i, offer in todo:
            request = requests[i]
            claimant = claimants.get(request.channel_user_id)
            if claimant is None:
                if unknown is None:
                    error = NotFound("not_registered", "this channel account is not registered")
                    unknown = _refusal(error, http_status(error))
                results[i] = unknown
                continue
            person_id, residence, blacklisted = claimant
            verdict_key = (request.campaign_id, residence, request.location_region, blacklisted)
            if verdict_key not in verdicts:
                refusal = _ineligible(offer, residence, request.location_region, blacklisted)
                verdicts[verdict_key] = (
                    None if refusal is None else _refusal(refusal, http_status(refusal))
                )
            verdict = verdicts[verdict_key]
            if verdict is not None:
                results[i] = verdict
                continue
            reserve.append((i, offer.reserve_request(person_id), offer, person_id))
        if not reserve:
            return
        try:
            self.committer.make_room(len(reserve), wait_s=rt.settings.claim_queue_wait_ms / 1000)
        except Unavailable as full:  # nothing reserved yet: nothing to hand back
            refused = _refusal(full, http_status(full))
            for i, _, _, _ in reserve:
                results[i] = refused
            return
        # The places made are the gate's reservations' until they reach the committer.
        try:
            pending = self._reserve(requests, results, reserve)
        except GateUnavailable as error:
            self.committer.give_back(len(reserve))
            log.warning("gate_unavailable", error_type=str(error), claims=len(reserve))
            down = Unavailable(
                "gate_unavailable", "the claim gate cannot be reached; retry shortly"
            )
            refused = _refusal(down, http_status(down))
            for i, _, _, _ in reserve:
                results[i] = refused
            return
        except BaseException:
            self.committer.give_back(len(reserve))
            raise
        if not pending:
            self.committer.give_back(len(reserve))
            return
        self._commit(pending, results, handed, room=len(reserve))

    def _reserve(
        self,
        requests: Sequence[ClaimRequest],
        results: list[ClaimResult | None],
        reserve: list[tuple[int, ReserveRequest, _Offer, str]],
    ) -> list[tuple[int, _Pending]]:
        rt = self._rt
        reserved_at = time.monotonic()
        gate_results = rt.gate.reserve([r for _, r, _, _ in reserve])
        pending: list[tuple[int, _Pending]] = []
        voucher_ids = iter(new_ids("v", len(reserve)))
        gate_refusals: dict[tuple[ReserveOutcome, str, str], ClaimResult] = {}
        for (i, reserved, offer, person_id), got in zip(reserve, gate_results, strict=True):
            if got.outcome is not ReserveOutcome.OK:
                alike = (got.outcome, reserved.pool, reserved.template_id)
                refused = gate_refusals.get(alike)
                if refused is None:
                    refused = gate_refusals[alike] = self._gate_refusal(
                        reserved, offer, got.outcome
                    )
                results[i] = refused
                continue
            voucher = offer.voucher(next(voucher_ids), person_id, got.claim_seq)
            pending.append(
                (
                    i,
                    _Pending(
                        request=reserved,
                        claim_seq=got.claim_seq,
                        voucher=voucher,
                        key=requests[i].key,
                        answer=offer.answer(voucher.id),
                        reserved_at=reserved_at,
                    ),
                )
            )
        return pending

    def _gate_refusal(
        self, reserved: ReserveRequest, offer: _Offer, outcome: ReserveOutcome
    ) -> ClaimResult:
        if outcome is ReserveOutcome.UNKNOWN_STOCK and offer.stocked:
            # The campaign stocks it, the gate does not hold it: the gate lost
            # it (Redis restarted or flushed). Never a guess: retry shortly.
            self._on_gate_lost(offer.campaign_id)
            lost = Unavailable("gate_rebuilding", "the claim gate is being rebuilt; retry")
            return _refusal(lost, http_status(lost))
        if outcome is ReserveOutcome.SOLD_OUT:
            self._mark_sold_out(reserved.pool, reserved.template_id)
        elif outcome is ReserveOutcome.UNKNOWN_STOCK:
            self._cache.sold_out.add((reserved.pool, reserved.template_id))
        code, message = _GATE_REFUSALS[outcome]
        gate_refusal = Conflict(code, message)
        return _refusal(gate_refusal, http_status(gate_refusal))

    def _mark_sold_out(self, pool: str, template_id: str) -> None:
        """Refuse the template of the pool from memory from now on, and tell the others once."""
        flag = (pool, template_id)
        if flag not in self._cache.sold_out:
            self._cache.sold_out.add(flag)
            self._on_sold_out(pool, template_id)

    def _commit(
        self,
        pending: list[tuple[int, _Pending]],
        results: list[ClaimResult | None],
        handed: set[int],
        room: int,
    ) -> None:
        rt = self._rt
        claims = [p for _, p in pending]
        try:
            future = self.committer.submit(claims, room=room)
        except Unavailable as closing:
            # It never reached the writer: the stock goes straight back.
            _tell_gate(rt.gate.release, "release", [(c.request, c.claim_seq) for c in claims])
            refused = _refusal(closing, http_status(closing))
            for i, _ in pending:
                results[i] = refused
            return
        handed.update(i for i, _ in pending)
        try:
            outcomes = future.result(timeout=rt.settings.claim_commit_timeout_s)
        except FutureTimeout:
            # Still being written: the committer will settle it either way.
            pending_refusal = Unavailable(
                "commit_timeout",
                "the claim is still being committed; retry with the same Idempotency-Key",
            )
            refused = _refusal(pending_refusal, http_status(pending_refusal))
            for i, _ in pending:
                results[i] = refused
            return
        refusals: dict[int, ClaimResult] = {}  # the committer refuses many claims with one error
        for (i, claim), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, Answer):
                replayed = outcome is not claim.answer
                results[i] = ClaimResult(
                    "replayed" if replayed else "issued", outcome, replayed=replayed
                )
            else:
                assert outcome is not None
                alike = refusals.get(id(outcome))
                if alike is None:
                    alike = refusals[id(outcome)] = _refusal(outcome, http_status(outcome))
                results[i] = alike

    def _offer(self, channel_id: str, request: ClaimRequest, now: datetime) -> _Offer | LequanError:
        """What a campaign's round offers of one template in this channel now, or why not.

        Decided once per batch for every claim of the same template: none of
        it depends on the person.
        """
        row = self._cache.get(request.campaign_id)
        if row is None:
            return NotFound("campaign_not_found", f"no campaign {request.campaign_id}")
        if row.status is CampaignStatus.PAUSED:
            return Conflict("campaign_paused", "the campaign is paused")
        if row.status is not CampaignStatus.LIVE:
            return Conflict("campaign_not_live", f"the campaign is {row.status.value}")
        config = row.config
        times = row.rounds.get(request.round_id)
        if times is None:
            return NotFound("round_not_found", f"no round {request.round_id} in this campaign")
        phase = round_phase(release_at=times[0], ends_at=times[1], now=now)
        if phase is RoundPhase.NOT_STARTED:
            return Conflict(
                "not_started",
                f"the round opens at {times[0].isoformat()}",
                details={"release_at": times[0].isoformat()},
            )
        if phase is RoundPhase.ENDED:
            return Conflict("round_ended", "the round has ended")
        if channel_id not in config.channels:
            return Conflict(
                "channel_not_in_campaign", "this campaign is not issued in this channel"
            )
        template = config.template(request.template_id)
        if template is None:
            return NotFound("template_not_found", f"no template {request.template_id}")
        room = self._cache.budget_room.get(request.campaign_id)
        if room is not None and template.face_fen > room:
            return Conflict("budget_exhausted", "the campaign's budget is used up")
        pool = pool_key(request.campaign_id, request.round_id, channel_id)
        if (pool, template.id) in self._cache.sold_out:
            return Conflict("sold_out", "the vouchers of this round are gone")
        valid_from, valid_until = config.validity.window(now)
        stocked = any(
            r.id == request.round_id and template.id in r.stock.get(channel_id, {})
            for r in config.rounds
        )
        return _Offer(
            campaign_id=request.campaign_id,
            round_id=request.round_id,
            channel_id=channel_id,
            template_id=template.id,
            face_fen=template.face_fen,
            pool=pool,
            limit=config.limits.per_person_per_round_per_channel,
            campaign_limit=config.limits.per_person_per_campaign,
            eligibility=config.eligibility,
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=now,
            stocked=stocked,
        )


# Stands for the voucher id in an offer's rendered answer; never a real id ("v" + hex).
_ID_SLOT = "@voucher-id@"
# How an offer's rendered "issued" answer begins (sorted keys): the voucher follows.
_ISSUED_PREFIX = '{"status":"issued","voucher":'


def issued_answer(voucher: VoucherRow) -> Answer:
    """The "issued" answer of the claim that made ``voucher``, rebuilt from its row.

    Only as-issued fields are read (the state is the one it was issued in),
    so a retry long after the voucher was spent gets, byte for byte, the
    answer its first request got (``_Offer.answer``).
    """
    as_issued = replace(voucher, state=VoucherState.ISSUED)
    return Answer.rendered(201, _issued_text(as_issued))


def _issued_text(voucher: VoucherRow) -> str:
    body = {"status": "issued", "voucher": voucher_body(voucher)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def answered(uow: UnitOfWork, app_id: str, keys: Sequence[str]) -> dict[str, tuple[str, int, str]]:
    """key -> (request_hash, status_code, response_json) of the keys already answered.

    A claim's answer is rebuilt from the voucher its key is on; any other
    answer (and a claim's from before migration 0002) was stored as such.
    """
    rows = uow.idempotency.answered_keys(app_id, keys)
    # The vouchers of a batch sent again are read in one query, not one each.
    vouchers = uow.vouchers.get_vouchers([vid for _, _, _, vid in rows.values() if vid is not None])
    found: dict[str, tuple[str, int, str]] = {}
    for key, (request_hash, status_code, body, voucher_id) in rows.items():
        if voucher_id is None:
            assert body is not None
            found[key] = (request_hash, status_code, body)
            continue
        voucher = vouchers.get(voucher_id)
        assert voucher is not None, "a voucher found by its key is there"
        found[key] = (request_hash, status_code, issued_answer(voucher).json())
    return found


def issued_voucher_json(answer: Answer) -> str | None:
    """The voucher of an "issued" answer as JSON text, when it was rendered already."""
    text = answer.text
    if text is None or not text.startswith(_ISSUED_PREFIX):
        return None
    return text[len(_ISSUED_PREFIX) : -1]


@dataclass(frozen=True, slots=True)
class _Offer:
    """One template of one round in one channel, as a batch of claims sees it."""

    campaign_id: str
    round_id: str
    channel_id: str
    template_id: str
    face_fen: int
    pool: str
    limit: int
    campaign_limit: int
    eligibility: Eligibility
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime
    stocked: bool  # the campaign's configuration gives this pool stock of the template
    _text: list[str] = field(default_factory=list, compare=False)

    def reserve_request(self, person_id: str) -> ReserveRequest:
        return ReserveRequest(
            pool=self.pool,
            template_id=self.template_id,
            person_id=person_id,
            limit=self.limit,
            campaign_id=self.campaign_id,
            campaign_limit=self.campaign_limit,
        )

    def voucher(self, voucher_id: str, person_id: str, claim_seq: int) -> VoucherRow:
        return VoucherRow(
            id=voucher_id,
            campaign_id=self.campaign_id,
            round_id=self.round_id,
            channel_id=self.channel_id,
            template_id=self.template_id,
            person_id=person_id,
            claim_seq=claim_seq,
            face_fen=self.face_fen,
            state=VoucherState.ISSUED,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            issued_at=self.issued_at,
            version=1,
            redemption_id=None,
        )

    def answer(self, voucher_id: str) -> Answer:
        """The "issued" answer (``views.voucher_body``), its shared parts made once per batch.

        Only the voucher id differs between the claims of one offer, so the
        stored JSON is the rendered template with the id put in.
        """
        if not self._text:
            self._text.append(_issued_text(self.voucher(_ID_SLOT, "", 0)))
        return Answer.rendered(201, self._text[0].replace(_ID_SLOT, voucher_id, 1))


def _ineligible(
    offer: _Offer, residence: str, location: str | None, blacklisted: bool
) -> LequanError | None:
    reasons = eligibility_reasons(
        offer.eligibility,
        residence_region=residence,
        location_region=location,
        blacklisted=blacklisted,
    )
    if not reasons:
        return None
    return Conflict(
        "ineligible",
        "; ".join(r.message for r in reasons),
        details={"reasons": [{"code": r.code, "message": r.message} for r in reasons]},
    )
