"""First-come claiming: cheap refusals from memory, an atomic reservation in
the gate, then a group commit of the vouchers before anyone hears "issued".

Durability rule: an ``issued`` answer means the voucher row is committed.
Reservations whose commit fails are handed back to the gate, so stock is
never lost to a failed write and never sold twice.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from lequan.adapters.sql.store import UnitOfWork, VoucherRow
from lequan.domain.campaigns import (
    CampaignStatus,
    RoundPhase,
    eligibility_reasons,
    round_phase,
)
from lequan.domain.errors import Conflict, LequanError, NotFound, Unavailable
from lequan.domain.ledger import issue_entry
from lequan.domain.vouchers import VoucherState
from lequan.ports import ReserveOutcome, ReserveRequest
from lequan.services.campaigns import CampaignCache, pool_key
from lequan.services.idempotency import Answer, Idempotency, replay_or_refuse
from lequan.services.runtime import Runtime
from lequan.services.views import error_body, http_status, new_id, voucher_body

__all__ = ["ClaimRequest", "ClaimResult", "ClaimService", "GroupCommitter"]

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


@dataclass(slots=True)
class _Pending:
    request: ReserveRequest
    claim_seq: int
    voucher: VoucherRow
    key: Idempotency
    answer: Answer


@dataclass(slots=True)
class _Job:
    claims: list[_Pending]
    future: Future[list[LequanError | Answer | None]] = field(default_factory=Future)


def _refusal(error: LequanError, status_code: int) -> ClaimResult:
    assert status_code == http_status(error)
    return ClaimResult(error.code, Answer(status_code, error_body(error)))


class GroupCommitter:
    """One writer thread that commits the claims of many requests per transaction.

    Once a claim is submitted the committer owns its consequences, whoever is
    still waiting: it hands a failed reservation back to the gate and lets go
    of the idempotency key only after the outcome is known. So a caller that
    gave up waiting (``commit_timeout``) can retry with the same key and gets
    either "in flight" or the stored answer, never a second voucher.

    Bounded: at most ``queue_max`` claims wait; beyond that ``submit`` refuses
    with ``overloaded`` (429), and the caller hands its reservations back.
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        batch_size_max: int,
        wait_ms: float,
        queue_max: int,
        on_budget_exhausted: Callable[[str, int], None],
    ) -> None:
        self._rt = rt
        self._batch_size_max = batch_size_max
        self._wait_s = wait_ms / 1000
        self._queue_max = queue_max
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._on_budget_exhausted = on_budget_exhausted
        self._thread = threading.Thread(target=self._run, name="lequan-group-commit", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, claims: list[_Pending]) -> Future[list[LequanError | Answer | None]]:
        with self._pending_lock:
            if self._closed:
                raise Unavailable("store_unavailable", "the platform is shutting down")
            if self._pending + len(claims) > self._queue_max:
                raise Unavailable(
                    "overloaded", "too many claims are waiting to be committed", retry_after_s=1
                )
            self._pending += len(claims)
        job = _Job(claims)
        self._queue.put(job)
        return job.future

    def close(self, timeout_s: float = 10.0) -> None:
        with self._pending_lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            size = len(first.claims)
            deadline = time.monotonic() + self._wait_s
            stop = False
            while size < self._batch_size_max:
                remaining_s = deadline - time.monotonic()
                try:
                    job = (
                        self._queue.get(timeout=remaining_s)
                        if remaining_s > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
                size += len(job.claims)
            self._commit_jobs(jobs)
            if stop:
                return

    def _commit_jobs(self, jobs: list[_Job]) -> None:
        claims = [c for job in jobs for c in job.claims]
        try:
            outcomes = self._commit(claims)
        except Exception as error:  # the writer must never die; every waiter gets an answer
            log.error("group_commit_failed", error_type=type(error).__name__, claims=len(claims))
            outcomes = [
                Unavailable("store_unavailable", "the store did not accept the claim; retry")
            ] * len(claims)
        release = [
            (claim.request, claim.claim_seq)
            for claim, outcome in zip(claims, outcomes, strict=True)
            if outcome is not claim.answer
        ]
        if release:
            try:
                self._rt.gate.release(release)
            except Exception as error:  # the gate is rebuilt from the store on restart
                log.error(
                    "gate_release_failed", error_type=type(error).__name__, claims=len(release)
                )
        for claim in claims:
            self._rt.inflight.release(claim.key.app_id, claim.key.key)
        with self._pending_lock:
            self._pending -= len(claims)
        offset = 0
        for job in jobs:
            job.future.set_result(outcomes[offset : offset + len(job.claims)])
            offset += len(job.claims)

    def _commit(self, claims: list[_Pending]) -> list[LequanError | Answer | None]:
        """Commit all claims in one transaction; on a conflict, one by one to isolate it."""
        now = self._rt.clock.now()
        try:
            with self._rt.store.unit_of_work() as uow:
                outcomes = self._write(uow, claims, now)
                uow.commit()
            return outcomes
        except IntegrityError:
            pass
        except OperationalError as error:
            log.warning("group_commit_retry_single", error_type=type(error).__name__)
        results: list[LequanError | Answer | None] = []
        for claim in claims:
            results.append(self._commit_one(claim, now))
        return results

    def _commit_one(self, claim: _Pending, now: datetime) -> LequanError | Answer | None:
        try:
            with self._rt.store.unit_of_work() as uow:
                outcome = self._write(uow, [claim], now)[0]
                uow.commit()
                return outcome
        except IntegrityError:
            with self._rt.store.unit_of_work(readonly=True) as uow:
                stored = uow.idempotent_answer(claim.key.app_id, claim.key.key)
            if stored is not None:
                try:
                    replay = replay_or_refuse(stored, claim.key)
                except LequanError as error:
                    return error
                assert replay is not None
                return replay
            return Conflict("already_claimed", "the person has already claimed in this round")
        except SQLAlchemyError:
            return Unavailable("store_unavailable", "the store did not accept the claim; retry")

    def _write(
        self, uow: UnitOfWork, claims: list[_Pending], now: datetime
    ) -> list[LequanError | Answer | None]:
        outcomes: list[LequanError | Answer | None] = [None] * len(claims)
        by_campaign: dict[str, list[int]] = defaultdict(list)
        for i, claim in enumerate(claims):
            by_campaign[claim.voucher.campaign_id].append(i)
        accepted: list[int] = []
        for campaign_id in sorted(by_campaign):  # lock campaign rows in primary-key order
            indexes = by_campaign[campaign_id]
            total = sum(claims[i].voucher.face_fen for i in indexes)
            if uow.commit_budget(campaign_id, total):
                taken = indexes
            else:
                budget, committed = uow.lock_campaign_budget(campaign_id)
                room = budget - committed
                taken = []
                for i in indexes:
                    face = claims[i].voucher.face_fen
                    if face <= room:
                        taken.append(i)
                        room -= face
                    else:
                        outcomes[i] = Conflict(
                            "budget_exhausted", "the campaign's budget is used up"
                        )
                self._on_budget_exhausted(campaign_id, room)
                taken_total = sum(claims[i].voucher.face_fen for i in taken)
                if taken_total:
                    assert uow.commit_budget(campaign_id, taken_total)
            if taken:
                uow.post(
                    issue_entry(sum(claims[i].voucher.face_fen for i in taken)),
                    campaign_id=campaign_id,
                    now=now,
                    voucher_count=len(taken),
                )
            accepted.extend(taken)
        accepted.sort()
        uow.insert_vouchers([_voucher_values(claims[i].voucher) for i in accepted])
        uow.store_answers([claims[i].key.row(claims[i].answer, now) for i in accepted])
        for i in accepted:
            outcomes[i] = claims[i].answer
        return outcomes


def _voucher_values(v: VoucherRow) -> dict[str, Any]:
    return {
        "id": v.id,
        "campaign_id": v.campaign_id,
        "round_id": v.round_id,
        "channel_id": v.channel_id,
        "template_id": v.template_id,
        "person_id": v.person_id,
        "claim_seq": v.claim_seq,
        "face_fen": v.face_fen,
        "state": v.state.value,
        "valid_from": v.valid_from,
        "valid_until": v.valid_until,
        "issued_at": v.issued_at,
        "updated_at": v.issued_at,
        "version": v.version,
    }


class ClaimService:
    """Claims for one process: the campaign cache, the gate and the group committer."""

    def __init__(self, rt: Runtime, cache: CampaignCache) -> None:
        self._rt = rt
        self._cache = cache
        s = rt.settings
        self.committer = GroupCommitter(
            rt,
            batch_size_max=s.claim_batch_size_max,
            wait_ms=s.claim_batch_wait_ms,
            queue_max=s.claim_queue_max,
            on_budget_exhausted=cache.budget_room.__setitem__,
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
        except SQLAlchemyError as error:
            log.warning("claim_store_unreadable", error_type=type(error).__name__)
            refusal = Unavailable("store_unavailable", "the store cannot be read; retry")
            for i, result in enumerate(results):
                if result is None:
                    results[i] = _refusal(refusal, http_status(refusal))
        finally:
            for i in held:
                if i not in handed:
                    rt.inflight.release(requests[i].key.app_id, requests[i].key.key)
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
        for i, request in enumerate(requests):
            try:
                self._rt.inflight.acquire(request.key.app_id, request.key.key)
                held.append(i)
            except LequanError as error:
                results[i] = _refusal(error, http_status(error))
        if not held:
            return
        with self._rt.store.unit_of_work(readonly=True) as uow:
            stored = uow.idempotent_answers(channel_id, [requests[i].key.key for i in held])
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
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return
        with rt.store.unit_of_work(readonly=True) as uow:
            persons = uow.accounts_persons(channel_id, [requests[i].channel_user_id for i in todo])
            regions = uow.persons_regions(list(persons.values()))
            blacklisted = uow.blacklisted([bidx for _, bidx in regions.values()])
        reserve: list[tuple[int, ReserveRequest, VoucherRow]] = []
        for i in todo:
            request = requests[i]
            try:
                person_id = persons.get(request.channel_user_id)
                if person_id is None:
                    raise NotFound("not_registered", "this channel account is not registered")
                residence, bidx = regions[person_id]
                reserve_request, voucher = self._check(
                    channel_id,
                    request,
                    person_id=person_id,
                    residence=residence,
                    blacklisted=bidx in blacklisted,
                    now=now,
                )
                reserve.append((i, reserve_request, voucher))
            except LequanError as error:
                results[i] = _refusal(error, http_status(error))
        if not reserve:
            return
        gate_results = rt.gate.reserve([r for _, r, _ in reserve])
        pending: list[tuple[int, _Pending]] = []
        for (i, reserved, voucher), got in zip(reserve, gate_results, strict=True):
            if got.outcome is not ReserveOutcome.OK:
                if got.outcome in (ReserveOutcome.SOLD_OUT, ReserveOutcome.UNKNOWN_STOCK):
                    self._cache.sold_out.add((reserved.pool, reserved.template_id))
                code, message = _GATE_REFUSALS[got.outcome]
                refusal = Conflict(code, message)
                results[i] = _refusal(refusal, http_status(refusal))
                continue
            if got.remaining == 0:
                self._cache.sold_out.add((reserved.pool, reserved.template_id))
            issued = _with_seq(voucher, got.claim_seq)
            pending.append(
                (
                    i,
                    _Pending(
                        request=reserved,
                        claim_seq=got.claim_seq,
                        voucher=issued,
                        key=requests[i].key,
                        answer=Answer(201, {"status": "issued", "voucher": voucher_body(issued)}),
                    ),
                )
            )
        if not pending:
            return
        self._commit(pending, results, handed)

    def _commit(
        self,
        pending: list[tuple[int, _Pending]],
        results: list[ClaimResult | None],
        handed: set[int],
    ) -> None:
        rt = self._rt
        claims = [p for _, p in pending]
        try:
            future = self.committer.submit(claims)
        except Unavailable as overloaded:
            # It never reached the writer: the stock goes straight back.
            rt.gate.release([(c.request, c.claim_seq) for c in claims])
            for i, _ in pending:
                results[i] = _refusal(overloaded, http_status(overloaded))
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
            for i, _ in pending:
                results[i] = _refusal(pending_refusal, http_status(pending_refusal))
            return
        for (i, claim), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, Answer):
                replayed = outcome is not claim.answer
                results[i] = ClaimResult(
                    "replayed" if replayed else "issued", outcome, replayed=replayed
                )
            else:
                assert outcome is not None
                results[i] = _refusal(outcome, http_status(outcome))

    def _check(
        self,
        channel_id: str,
        request: ClaimRequest,
        *,
        person_id: str,
        residence: str,
        blacklisted: bool,
        now: datetime,
    ) -> tuple[ReserveRequest, VoucherRow]:
        """Every refusal that needs no gate: campaign, round, template, eligibility."""
        row = self._cache.get(request.campaign_id)
        if row is None:
            raise NotFound("campaign_not_found", f"no campaign {request.campaign_id}")
        if row.status is CampaignStatus.PAUSED:
            raise Conflict("campaign_paused", "the campaign is paused")
        if row.status is not CampaignStatus.LIVE:
            raise Conflict("campaign_not_live", f"the campaign is {row.status.value}")
        config = row.config
        times = row.rounds.get(request.round_id)
        if times is None:
            raise NotFound("round_not_found", f"no round {request.round_id} in this campaign")
        phase = round_phase(release_at=times[0], ends_at=times[1], now=now)
        if phase is RoundPhase.NOT_STARTED:
            raise Conflict(
                "not_started",
                f"the round opens at {times[0].isoformat()}",
                details={"release_at": times[0].isoformat()},
            )
        if phase is RoundPhase.ENDED:
            raise Conflict("round_ended", "the round has ended")
        if channel_id not in config.channels:
            raise Conflict("channel_not_in_campaign", "this campaign is not issued in this channel")
        template = config.template(request.template_id)
        if template is None:
            raise NotFound("template_not_found", f"no template {request.template_id}")
        reasons = eligibility_reasons(
            config.eligibility,
            residence_region=residence,
            location_region=request.location_region,
            blacklisted=blacklisted,
        )
        if reasons:
            raise Conflict(
                "ineligible",
                "; ".join(r.message for r in reasons),
                details={"reasons": [{"code": r.code, "message": r.message} for r in reasons]},
            )
        room = self._cache.budget_room.get(request.campaign_id)
        if room is not None and template.face_fen > room:
            raise Conflict("budget_exhausted", "the campaign's budget is used up")
        pool = pool_key(request.campaign_id, request.round_id, channel_id)
        if (pool, template.id) in self._cache.sold_out:
            raise Conflict("sold_out", "the vouchers of this round are gone")
        valid_from, valid_until = config.validity.window(now)
        voucher = VoucherRow(
            id=new_id("v"),
            campaign_id=request.campaign_id,
            round_id=request.round_id,
            channel_id=channel_id,
            template_id=template.id,
            person_id=person_id,
            claim_seq=0,
            face_fen=template.face_fen,
            state=VoucherState.ISSUED,
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=now,
            version=1,
            redemption_id=None,
        )
        reserve = ReserveRequest(
            pool=pool,
            template_id=template.id,
            person_id=person_id,
            limit=config.limits.per_person_per_round_per_channel,
            campaign_id=request.campaign_id,
            campaign_limit=config.limits.per_person_per_campaign,
        )
        return reserve, voucher


def _with_seq(voucher: VoucherRow, claim_seq: int) -> VoucherRow:
    from dataclasses import replace

    return replace(voucher, claim_seq=claim_seq)
