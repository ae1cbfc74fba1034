"""Keeping a shared claim gate whole while many processes use it.

Two jobs, in one background thread per process:

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

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import structlog

from lequan.domain.campaigns import CampaignStatus
from lequan.ports import ReserveRequest
from lequan.services.campaigns import ClosedGate, close_all_lost, load_closed, pool_key
from lequan.services.runtime import Runtime

__all__ = ["GateKeeper", "ReapReport", "reap_stale"]

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
            done: dict[bool, list[tuple[ReserveRequest, int]]] = defaultdict(list)
            for template_id, person_id, seq in stale:
                request = ReserveRequest(
                    pool=pool,
                    template_id=template_id,
                    person_id=person_id,
                    limit=limits.per_person_per_round_per_channel,
                    campaign_id=row.id,
                    campaign_limit=limits.per_person_per_campaign,
                )
                done[(person_id, seq) in committed].append((request, seq))
            rt.gate.settle(done[True])
            rt.gate.release(done[False])
            settled += len(done[True])
            released += len(done[False])
    if settled or released:
        log.warning("gate_reaped", settled=settled, released=released)
    return ReapReport(settled=settled, released=released)


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
        self._wake.set()

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
