"""Keeping a shared claim gate whole while many processes use it.

Two jobs run in one background thread per process, and a third serves the
claim path (``check_refusals``: a "claimed already" the store does not bear
out is mended on the spot, as the reaper would, rather than at its next pass):

- **reload what the gate lost.** A claim that finds no stock where the
  campaign has some asks for it (``request``), and a starting process
  hands over what it closed (``load_later``); the keeper closes what is
  lost of every campaign asked for, waits out one fence for all of them,
  and loads them (``services.campaigns.load_closed``), so no reservation
  granted before the loss can commit after the store was read.
- **reap what dead processes left pending.** A process killed between
  reserving and committing leaves its reservations pending in the gate. Once
  older than ``gate_fence_s`` none of them can still commit; the keeper
  looks each up in the store and settles it (the voucher exists) or
  releases it (the stock is sold again).
"""

from __future__ import annotations

import enum
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from lequan.domain.campaigns import CampaignStatus
from lequan.ports import PendingReservation, ReserveOutcome, ReserveRequest
from lequan.services.campaigns import ClosedGate, close_all_lost, load_closed, pool_key
from lequan.services.runtime import Runtime

__all__ = [
    "CLAIMED_ALREADY",
    "GateKeeper",
    "ReapReport",
    "Refusal",
    "Verdict",
    "check_refusals",
    "reap_stale",
]

log = structlog.get_logger(__name__)

# Campaigns waiting for a reload; more are dropped (they ask again on the next claim).
REQUESTS_MAX = 1000


@dataclass(frozen=True, slots=True)
class ReapReport:
    settled: int
    released: int


def reap_stale(rt: Runtime) -> ReapReport:
    """Settle or release the reservations pending longer than ``gate_fence_s``."""
    settled = released = 0
    limit = rt.settings.sweep_batch_max
    with rt.store.unit_of_work(readonly=True) as uow:
        rows = uow.campaigns.list_campaigns(statuses=(CampaignStatus.LIVE, CampaignStatus.PAUSED))
        pools = {row.id: uow.campaigns.stock_initial(row.id) for row in rows}
    for row in rows:
        limits = row.config.limits
        for round_id, channel_id in sorted({(r, c) for r, c, _t, _n in pools[row.id]}):
            pool = pool_key(row.id, round_id, channel_id)
            stale = rt.gate.stale(pool, older_than_s=rt.settings.gate_fence_s, limit=limit)
            if not stale:
                continue
            with rt.store.unit_of_work(readonly=True) as uow:
                committed = uow.vouchers.claimed_slots(
                    row.id, round_id, channel_id, sorted({person for _t, person, _s in stale})
                )
            report = _settle_or_release(
                rt,
                [
                    (
                        ReserveRequest(
                            pool=pool,
                            template_id=template_id,
                            person_id=person_id,
                            limit=limits.per_person_per_round_per_channel,
                            campaign_id=row.id,
                            campaign_limit=limits.per_person_per_campaign,
                        ),
                        seq,
                    )
                    for template_id, person_id, seq in stale
                ],
                {pool: committed},
            )
            settled += report.settled
            released += report.released
    if settled or released:
        log.warning("gate_reaped", settled=settled, released=released)
    return ReapReport(settled=settled, released=released)


# A campaign count is mended only this many fences after it was last taken: a
# claim between the gate's steps (its count taken, its reservation not yet
# made) is never that slow, so a count so old that nothing accounts for it
# was left by a batch that broke between them.
RECOUNT_QUIET_FENCES = 2

CLAIMED_ALREADY = frozenset({ReserveOutcome.ALREADY_CLAIMED, ReserveOutcome.CAMPAIGN_LIMIT})


class Verdict(enum.Enum):
    """What a gate's "claimed already" refusal turned out to be."""

    TRUE = "true"  # the store holds the vouchers the refusal counts
    RETRY = "retry"  # the gate counted what nothing accounts for, and is mended: reserve again
    PENDING = "pending"  # a reservation of the person's may still be committed: retry shortly


@dataclass(frozen=True, slots=True)
class Refusal:
    """A claim the gate refused as claimed already, by its pool's limit or its campaign's."""

    request: ReserveRequest
    outcome: ReserveOutcome
    # The pools the refusal counts in, each with its (round_id, channel_id): the
    # request's own for its pool's limit, every pool of the campaign for the campaign's.
    pools: Mapping[str, tuple[str, str]]

    @property
    def limit(self) -> int:
        if self.outcome is ReserveOutcome.ALREADY_CLAIMED:
            return self.request.limit
        return self.request.campaign_limit


def check_refusals(rt: Runtime, refusals: Sequence[Refusal]) -> list[Verdict]:
    """Whether each "claimed already" refusal is true; where it is not, the gate is
    mended (the way ``reap_stale`` does) so that the claim can be reserved again.

    The gate counts a person's pending reservations with their vouchers. A
    reservation whose reply was lost, or whose batch broke between pieces,
    stays pending until the fence; a campaign count taken by a batch that
    broke before reserving stays with nothing behind it. Told "claimed
    already", the person would hold nothing. So the store is asked first
    (one query per pool, for these refusals only): if it holds what the
    refusal counts, it is true. If not, the gate's pending reservations of
    those people say why, and the store is asked again after them (a
    reservation older than the fence can no longer commit, so the store's
    word on it is final): those older than the fence are settled or
    released; one younger may still commit (``PENDING``); a campaign count
    that nothing accounts for is lowered (``recount``) unless it was taken
    too recently to tell.
    """
    verdicts = [Verdict.TRUE] * len(refusals)
    held = _vouchers_held(refusals, _store_slots(rt, refusals))
    doubted = [i for i, r in enumerate(refusals) if held[i] < r.limit]
    if not doubted:
        return verdicts
    doubts = [refusals[i] for i in doubted]
    pools = sorted({pool for r in doubts for pool in r.pools})
    pending = rt.gate.pending_of(pools, sorted({r.request.person_id for r in doubts}))
    slots = _store_slots(rt, doubts)  # after the gate: final for what is past the fence
    fence_s = rt.settings.gate_fence_s
    _reap_for(rt, doubts, [p for p in pending if p.age_s >= fence_s], slots)
    young = {(p.pool, p.person_id) for p in pending if p.age_s < fence_s}
    recounts: dict[str, dict[str, int]] = defaultdict(dict)
    for i, r, now_held in zip(doubted, doubts, _vouchers_held(doubts, slots), strict=True):
        person = r.request.person_id
        if now_held >= r.limit:
            continue  # committed meanwhile: true after all
        if any((pool, person) in young for pool in r.pools):
            verdicts[i] = Verdict.PENDING
            continue
        verdicts[i] = Verdict.RETRY
        if r.outcome is ReserveOutcome.CAMPAIGN_LIMIT:
            recounts[r.request.campaign_id][person] = now_held
    quiet_s = RECOUNT_QUIET_FENCES * fence_s
    busy = {
        (campaign_id, person)
        for campaign_id, counts in sorted(recounts.items())
        for person in rt.gate.recount(campaign_id, counts, quiet_s=quiet_s)
    }
    for i, r in zip(doubted, doubts, strict=True):
        if verdicts[i] is Verdict.RETRY and (r.request.campaign_id, r.request.person_id) in busy:
            verdicts[i] = Verdict.PENDING
    return verdicts


def _store_slots(rt: Runtime, refusals: Sequence[Refusal]) -> dict[str, set[tuple[str, int]]]:
    """pool → (person_id, claim_seq) of the vouchers these people hold there."""
    people: dict[str, set[str]] = defaultdict(set)
    where: dict[str, tuple[str, str, str]] = {}
    for r in refusals:
        for pool, (round_id, channel_id) in r.pools.items():
            people[pool].add(r.request.person_id)
            where[pool] = (r.request.campaign_id, round_id, channel_id)
    with rt.store.unit_of_work(readonly=True) as uow:
        return {
            pool: uow.vouchers.claimed_slots(*where[pool], sorted(people[pool]))
            for pool in sorted(people)
        }


def _vouchers_held(
    refusals: Sequence[Refusal], slots: Mapping[str, set[tuple[str, int]]]
) -> list[int]:
    """The vouchers each refusal's person holds in the pools it counts in."""
    per_pool: dict[tuple[str, str], int] = defaultdict(int)
    for pool, held in slots.items():
        for person, _seq in held:
            per_pool[(pool, person)] += 1
    return [sum(per_pool[(pool, r.request.person_id)] for pool in r.pools) for r in refusals]


def _reap_for(
    rt: Runtime,
    refusals: Sequence[Refusal],
    stale: Sequence[PendingReservation],
    slots: Mapping[str, set[tuple[str, int]]],
) -> None:
    """Settle or release the stale reservations found for these refusals."""
    if not stale:
        return
    # Every pool of a campaign has its campaign's limits: any refusal of it has them.
    limits = {pool: r.request for r in refusals for pool in r.pools}
    report = _settle_or_release(
        rt,
        [
            (
                ReserveRequest(
                    pool=p.pool,
                    template_id=p.template_id,
                    person_id=p.person_id,
                    limit=limits[p.pool].limit,
                    campaign_id=limits[p.pool].campaign_id,
                    campaign_limit=limits[p.pool].campaign_limit,
                ),
                p.claim_seq,
            )
            for p in stale
        ],
        slots,
    )
    log.warning("gate_reaped_for_claim", settled=report.settled, released=report.released)


def _settle_or_release(
    rt: Runtime,
    stale: Sequence[tuple[ReserveRequest, int]],
    committed: Mapping[str, set[tuple[str, int]]],
) -> ReapReport:
    """Settle the stale reservations whose voucher the store holds (``committed``: pool
    → (person_id, claim_seq)), release the others: none of them can commit any more,
    so the store's word on each is final."""
    done: dict[bool, list[tuple[ReserveRequest, int]]] = defaultdict(list)
    for request, seq in stale:
        held = committed.get(request.pool, set())
        done[(request.person_id, seq) in held].append((request, seq))
    rt.gate.settle(done[True])
    rt.gate.release(done[False])
    return ReapReport(settled=len(done[True]), released=len(done[False]))


class _Stopping(Exception):
    """The keeper was stopped during a fence: nothing closed is loaded early."""


class GateKeeper:
    """The background thread that reloads lost campaigns and reaps stale reservations."""

    def __init__(self, rt: Runtime, *, interval_s: float) -> None:
        self._rt = rt
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._requested: set[str] = set()
        self._closed: list[ClosedGate] = []  # handed over by ``load_later``
        # Campaigns handed over whose gate is not loaded yet: what readiness reports.
        self._loading: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lequan-gatekeeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def request(self, campaign_id: str) -> None:
        """Ask for a campaign to be reloaded; returns at once."""
        with self._lock:
            if campaign_id in self._requested or len(self._requested) >= REQUESTS_MAX:
                return
            self._requested.add(campaign_id)
        self._wake.set()

    def load_later(self, closed: list[ClosedGate]) -> None:
        """Load campaigns closed already (under their locks) after their fence; returns at once."""
        with self._lock:
            self._closed.extend(closed)
            self._loading.update(c.campaign_id for c in closed)
        self._wake.set()

    def rebuilding(self) -> list[str]:
        """The campaigns whose gate is waiting out its fence before it is loaded: claims
        to them answer ``gate_rebuilding`` until then (``/readyz`` says so)."""
        with self._lock:
            return sorted(self._loading)

    def _fence(self, wait_s: float) -> None:
        if self._stop.wait(wait_s):
            raise _Stopping

    def _run(self) -> None:
        next_reap = time.monotonic() + self._interval_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_reap - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                requested, self._requested = self._requested, set()
                closed, self._closed = self._closed, []
            if requested or closed:
                try:
                    self._reload(sorted(requested), closed)
                except _Stopping:
                    return
                finally:
                    with self._lock:
                        self._loading.difference_update(c.campaign_id for c in closed)
            if time.monotonic() < next_reap:
                continue
            next_reap = time.monotonic() + self._interval_s
            try:
                reap_stale(self._rt)
            except Exception as error:  # the next pass retries
                log.error("gate_reap_failed", error_type=type(error).__name__)

    def _reload(self, requested: list[str], closed: list[ClosedGate]) -> None:
        """Close what is lost of the campaigns asked for, then load them with those
        handed over: one fence for all. A failure is asked again by the next claim."""
        try:
            closed = closed + close_all_lost(self._rt, requested)
        except Exception as error:
            log.error("gate_reload_failed", campaigns=requested, error_type=type(error).__name__)
        try:
            load_closed(self._rt, closed, sleep=self._fence)
        except _Stopping:
            raise
        except Exception as error:
            log.error(
                "gate_reload_failed",
                campaigns=[c.campaign_id for c in closed],
                error_type=type(error).__name__,
            )
