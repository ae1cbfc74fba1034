"""The group commit: writer threads that commit the claims of many requests in one
transaction, before any of them hears "issued".

Durability rule: an ``issued`` answer means the voucher row is committed.
Reservations whose commit fails are handed back to the gate, so stock is
never lost to a failed write and never sold twice; a reservation whose
COMMIT may or may not have happened (the connection was lost during it)
is handed back only once a read of the store says it did not.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from lequan.domain.errors import Conflict, LequanError, Unavailable
from lequan.domain.ledger import issue_entry
from lequan.ports import (
    ConstraintViolated,
    ReserveRequest,
    StoreError,
    StoreUnavailable,
    UnitOfWork,
)
from lequan.rows import StockKey, VoucherRow
from lequan.services.claim_answers import SOLD_OUT_IN_STORE, answered
from lequan.services.idempotency import Answer, Idempotency, replay_or_refuse
from lequan.services.runtime import Runtime

__all__ = ["GroupCommitter", "PendingClaim", "tell_gate"]

log = structlog.get_logger(__name__)

# Between two reads of a store that lost a COMMIT's answer: the first pause, doubled
# after each failed read up to the second. The reads stop at ``gate_fence_s``.
_RESOLVE_PAUSE_S = 0.05
_RESOLVE_PAUSE_MAX_S = 1.0


@dataclass(slots=True)
class PendingClaim:
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


class _CommitUnknown(Exception):
    """The store failed during COMMIT itself: the transaction may have committed."""


Outcome = LequanError | Answer | None


@dataclass(slots=True)
class _Job:
    """One caller's claims, answered once the part of every campaign in it is written."""

    claims: list[PendingClaim]
    parts_left: int
    outcomes: list[Outcome] = field(default_factory=list)
    future: Future[list[Outcome]] = field(default_factory=Future)


@dataclass(slots=True)
class _Part:
    """The claims of one job for one campaign: what a campaign's writer takes."""

    job: _Job
    indexes: list[int]  # into job.claims


@dataclass(slots=True)
class _Lane:
    """One campaign's parts waiting to be written; at most one writer takes them at a
    time, so the campaign's stock and budget rows are never contended for by two of
    this process's own transactions."""

    parts: deque[_Part]
    arrived: threading.Condition  # the writer gathering this lane waits on it
    writing: bool = False


def tell_gate(
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


class GroupCommitter:
    """Writer threads that commit the claims of many requests per transaction.

    Once a claim is submitted the committer owns its consequences, whoever is
    still waiting: it hands a failed reservation back to the gate and lets go
    of the idempotency key only after the outcome is known. So a caller that
    gave up waiting (``commit_timeout``) can retry with the same key and gets
    either "in flight" or the stored answer, never a second voucher.

    One campaign per transaction, written by one of ``writers`` threads at a
    time: a writer takes a campaign's claims that are waiting (up to
    ``batch_size_max``, waiting up to ``wait_ms`` for more), and the others
    take other campaigns meanwhile. A campaign whose rows someone holds
    locked stalls one writer until the store's lock timeout, not every
    campaign's claims behind it. Campaigns are taken in the order their
    claims arrived, each going to the back of the line after its batch.

    Bounded: at most ``queue_max`` claims wait, whatever their campaigns. A
    caller makes room for its claims (``make_room``) before it asks the gate,
    waiting up to ``claim_queue_wait_ms`` for the writers to catch up:
    backpressure costs a short wait, not a reservation handed back and a
    retry. Beyond the wait, ``overloaded`` (429), with nothing reserved.
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
        writers: int | None = None,
    ) -> None:
        self._rt = rt
        self._size_max = batch_size_max
        self._wait_s = wait_ms / 1000
        self._queue_max = queue_max
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0  # places taken in the queue: made room for, or submitted
        self._room = threading.Condition(self._lock)
        self._work = threading.Condition(self._lock)  # idle writers wait on it
        self._lanes: dict[str, _Lane] = {}
        self._ready: deque[str] = deque()  # campaigns with parts and no writer
        self._on_budget_exhausted = on_budget_exhausted
        self._on_sold_out = on_sold_out
        # Taken once: a child per label value costs more than the figure it records.
        metrics = rt.metrics
        self._commit_s = metrics.commit_seconds
        self._batch_claims = metrics.commit_batch_claims
        self._queue_claims = metrics.commit_queue_claims
        metrics.commit_queue_claims_max.set(queue_max)  # one committer per runtime
        self._queue_claims_max = metrics.commit_queue_claims_max
        count = writers if writers is not None else rt.settings.group_commit_writers
        assert count >= 1
        self._threads = [
            threading.Thread(target=self._run, name=f"lequan-group-commit-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

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
                self._queue_claims.set(self._pending)

    def submit(self, claims: list[PendingClaim], *, room: int) -> Future[list[Outcome]]:
        """Queue ``claims`` in the ``room`` places made for them; the rest go back.

        The places are the committer's from this call on, whatever it raises.
        """
        assert 0 < len(claims) <= room
        by_campaign = _by_campaign(claims)
        job = _Job(claims, parts_left=len(by_campaign), outcomes=[None] * len(claims))
        with self._room:
            closed = self._closed
            self._pending -= room if closed else room - len(claims)
            self._room.notify_all()
            if not closed:
                # Queued under the lock: ``close`` cannot slip in between and leave
                # this job behind the writers' last look, never handled.
                for campaign_id, indexes in by_campaign.items():
                    self._queue(campaign_id, _Part(job, indexes))
        if closed:
            raise Unavailable("store_unavailable", "the platform is shutting down")
        return job.future

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what was submitted, then stop; claims waiting for room hear at once."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
            self._work.notify_all()
            for lane in self._lanes.values():
                lane.arrived.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._queue_claims_max.set(0)  # a closed queue holds nothing

    def _queue(self, campaign_id: str, part: _Part) -> None:
        """Add a part to its campaign's lane and wake whoever takes it (under the lock)."""
        lane = self._lanes.get(campaign_id)
        if lane is None:
            lane = self._lanes[campaign_id] = _Lane(deque(), threading.Condition(self._lock))
        lane.parts.append(part)
        if lane.writing:
            lane.arrived.notify()
        elif len(lane.parts) == 1:  # the lane was empty: it joins the line
            self._ready.append(campaign_id)
            self._work.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not self._closed:
                    self._work.wait()
                if not self._ready:
                    return  # closed, and every lane is empty or has its writer
                campaign_id = self._ready.popleft()
                lane = self._lanes[campaign_id]
                lane.writing = True
                parts = self._gather(lane)
            try:
                self._handle_batch(parts)
            finally:
                with self._lock:
                    lane.writing = False
                    if lane.parts:
                        self._ready.append(campaign_id)
                        self._work.notify()
                    else:
                        del self._lanes[campaign_id]

    def _gather(self, lane: _Lane) -> list[_Part]:
        """The lane's parts, and what arrives within ``wait_s``, up to ``size_max``
        claims (at least one part, whatever its size). Called under the lock."""
        batch: list[_Part] = []
        size = 0
        deadline = time.monotonic() + self._wait_s
        while True:
            while lane.parts and (not batch or size < self._size_max):
                part = lane.parts.popleft()
                batch.append(part)
                size += len(part.indexes)
            left_s = deadline - time.monotonic()
            if size >= self._size_max or self._closed or left_s <= 0:
                return batch
            lane.arrived.wait(left_s)

    def _handle_batch(self, parts: list[_Part]) -> None:
        claims = [part.job.claims[i] for part in parts for i in part.indexes]
        # The fence of a gate rebuild: a reservation this old is never committed.
        oldest = time.monotonic() - self._rt.settings.claim_reservation_ttl_s
        fresh = [i for i, c in enumerate(claims) if c.reserved_at >= oldest]
        outcomes: list[Outcome] = [self._too_late()] * len(claims)
        # How full the queue is as a batch starts: what a saturated store looks like.
        self._queue_claims.set(self._pending)
        if fresh:
            self._batch_claims.observe(len(fresh))
            started = time.perf_counter()
            try:
                committed = self._commit([claims[i] for i in fresh])
            except Exception as error:  # the writer must never die; every waiter gets an answer
                log.error("group_commit_failed", error_type=type(error).__name__, claims=len(fresh))
                committed = [_store_refused()] * len(fresh)
            self._commit_s.observe(time.perf_counter() - started)
            for i, outcome in zip(fresh, committed, strict=True):
                outcomes[i] = outcome
        settle = [
            (claim.request, claim.claim_seq)
            for claim, outcome in zip(claims, outcomes, strict=True)
            if outcome is claim.answer
        ]
        # A claim whose outcome is not known stays pending in the gate: handing it
        # back could sell a voucher twice. The GateKeeper reaps it after the fence,
        # once the store can say whether its voucher is there.
        release = [
            (claim.request, claim.claim_seq)
            for claim, outcome in zip(claims, outcomes, strict=True)
            if outcome is not claim.answer and outcome is not _OUTCOME_UNKNOWN
        ]
        # Released before anyone hears: a retry must find the stock and the
        # person's count as if the failed claim had never been.
        tell_gate(self._rt.gate.release, "release", release)
        self._rt.inflight.release_many((c.key.app_id, c.key.key) for c in claims)
        self.give_back(len(claims))
        # Flagged before anyone hears: their next claim is refused from memory.
        self._flag_sold_out(claims, outcomes)
        self._answer(parts, outcomes)
        # Settled after: only the gate's journal waits on it.
        tell_gate(self._rt.gate.settle, "settle", settle)

    def _answer(self, parts: list[_Part], outcomes: list[Outcome]) -> None:
        """Each part's outcomes into its job; a job whose last part this was is answered."""
        done: list[_Job] = []
        offset = 0
        with self._lock:
            for part in parts:
                for i in part.indexes:
                    part.job.outcomes[i] = outcomes[offset]
                    offset += 1
                part.job.parts_left -= 1
                if part.job.parts_left == 0:
                    done.append(part.job)
        for job in done:
            job.future.set_result(job.outcomes)

    def _flag_sold_out(self, claims: list[PendingClaim], outcomes: list[Outcome]) -> None:
        """Stocks the store refused claims of, though the gate had let them through:
        flagged sold out (here and, through the board, everywhere), and logged, since
        it means the gate believed in more stock than there was."""
        refused: dict[tuple[str, str], int] = defaultdict(int)
        for claim, outcome in zip(claims, outcomes, strict=True):
            if outcome is SOLD_OUT_IN_STORE:
                refused[(claim.request.pool, claim.request.template_id)] += 1
        for (pool, template_id), count in sorted(refused.items()):
            log.warning(
                "stock_refused_past_the_gate", pool=pool, template_id=template_id, claims=count
            )
            self._on_sold_out(pool, template_id)

    def _before_commit(self, claims: list[PendingClaim]) -> None:
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

    def _commit(self, claims: list[PendingClaim]) -> list[Outcome]:
        """Commit all claims in one transaction; on a conflict, one by one to isolate it."""
        now = self._rt.clock.now()
        try:
            return self._transaction(claims, now)
        except _TooLate:
            return [self._too_late()] * len(claims)
        except _CommitUnknown:
            return self._resolve(claims)
        except ConstraintViolated:
            pass
        except StoreUnavailable as error:
            # Nothing was committed. Down, or gave up waiting for a lock someone
            # holds: one transaction per claim would wait as long again for each.
            log.warning(
                "group_commit_store_unavailable",
                error_type=type(error).__name__,
                claims=len(claims),
            )
            return [_store_refused()] * len(claims)
        results: list[Outcome] = []
        for claim in claims:
            results.append(self._commit_one(claim, now))
        return results

    def _commit_one(self, claim: PendingClaim, now: datetime) -> Outcome:
        try:
            return self._transaction([claim], now)[0]
        except _TooLate:
            return self._too_late()
        except _CommitUnknown:
            return self._resolve([claim])[0]
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
            return _store_refused()

    def _resolve(self, claims: list[PendingClaim]) -> list[Outcome]:
        """What became of a transaction whose COMMIT failed in flight, read from the store:
        a claim whose voucher is there was committed (and is answered ``issued``),
        one whose voucher is not was not. Read again, a little later each time,
        while the store cannot answer, until ``gate_fence_s``; then the outcome
        stays unknown (``_OUTCOME_UNKNOWN``) and the gate keeps the reservations
        for the GateKeeper, which decides them the same way once it can read.

        Claims are held in flight meanwhile: a retry hears "in flight", not a
        refusal the reservation still pending in the gate would cause.
        """
        deadline = time.monotonic() + self._rt.settings.gate_fence_s
        pause_s = _RESOLVE_PAUSE_S
        by_app: dict[str, list[PendingClaim]] = defaultdict(list)
        for claim in claims:
            by_app[claim.key.app_id].append(claim)
        while True:
            try:
                with self._rt.store.unit_of_work(readonly=True) as uow:
                    found = {
                        (app_id, key): voucher_id
                        for app_id, alike in by_app.items()
                        for key, (*_, voucher_id) in uow.idempotency.answered_keys(
                            app_id, [c.key.key for c in alike]
                        ).items()
                    }
                break
            except StoreError as error:
                if time.monotonic() + pause_s > deadline:
                    log.error(
                        "group_commit_outcome_unknown",
                        error_type=type(error).__name__,
                        claims=len(claims),
                    )
                    return [_OUTCOME_UNKNOWN] * len(claims)
                time.sleep(pause_s)
                pause_s = min(2 * pause_s, _RESOLVE_PAUSE_MAX_S)
        committed = [found.get((c.key.app_id, c.key.key)) == c.voucher.id for c in claims]
        log.warning("group_commit_outcome_read", committed=sum(committed), claims=len(claims))
        refused = _store_refused()
        return [c.answer if ok else refused for c, ok in zip(claims, committed, strict=True)]

    def _transaction(self, claims: list[PendingClaim], now: datetime) -> list[Outcome]:
        """The claims in one transaction: all of them, counted out of their stocks and
        budgets last (the common case), or, when one of those cannot hold them all,
        again with its rows locked first and only the claims that fit."""
        try:
            return self._attempt(claims, now, fitting=False)
        except _DoesNotFit:
            pass
        return self._attempt(claims, now, fitting=True)

    def _attempt(
        self, claims: list[PendingClaim], now: datetime, *, fitting: bool
    ) -> list[Outcome]:
        """One transaction; ``_CommitUnknown`` when the store failed during its COMMIT."""
        write = self._write_fitting if fitting else self._write_all
        committing = False
        try:
            with self._rt.store.unit_of_work() as uow:
                outcomes = write(uow, claims, now)
                self._before_commit(claims)
                committing = True
                uow.commit()
        except StoreUnavailable as error:
            if committing:  # the connection went during COMMIT: done or not, unknown
                raise _CommitUnknown from error
            raise
        return outcomes

    def _write_all(
        self, uow: UnitOfWork, claims: list[PendingClaim], now: datetime
    ) -> list[Outcome]:
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
        self, uow: UnitOfWork, claims: list[PendingClaim], now: datetime
    ) -> list[Outcome]:
        """The claims that their stocks and budgets hold, those rows locked first; the
        others refused in order."""
        outcomes: list[Outcome] = [None] * len(claims)
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
        claims: list[PendingClaim],
        indexes: list[int],
        outcomes: list[Outcome],
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
                outcomes[i] = SOLD_OUT_IN_STORE
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


def _store_refused() -> Unavailable:
    return Unavailable("store_unavailable", "the store did not accept the claim; retry")


# The answer to a claim whose COMMIT's outcome could not be read back: retry with the
# same key, which replays the voucher if it was committed.
_OUTCOME_UNKNOWN = Unavailable(
    "commit_timeout",
    "whether the claim was committed is not known yet; retry with the same Idempotency-Key",
)


def _by_campaign(claims: list[PendingClaim]) -> dict[str, list[int]]:
    by_campaign: dict[str, list[int]] = defaultdict(list)
    for i, claim in enumerate(claims):
        by_campaign[claim.voucher.campaign_id].append(i)
    return by_campaign


def _by_stock(
    campaign_id: str, claims: list[PendingClaim], indexes: list[int]
) -> dict[StockKey, list[int]]:
    by_stock: dict[StockKey, list[int]] = defaultdict(list)
    for i in indexes:
        v = claims[i].voucher
        by_stock[(campaign_id, v.round_id, v.channel_id, v.template_id)].append(i)
    return by_stock
