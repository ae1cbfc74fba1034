"""A claim gate that times the claim path's calls, around whichever gate is chosen.

The calls of the claim path (reserve, settle, release) are made by the
claim service, the group committer and the gatekeeper, each through
``rt.gate``: timing them here, at the seam, measures every caller the
same way and keeps the instruments out of each service's code (as httpx
wraps a transport). One batch is one call, so a thousand claims cost one
clock read pair and one observation. The other calls pass through.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from lequan.metrics import Instruments
from lequan.ports import ClaimGate, GateUnavailable, PendingReservation, ReserveRequest
from lequan.ports.gate import (
    DrawEntry,
    DrawnEntry,
    DrawProgress,
    DrawResult,
    EntryOutcome,
    ReserveResult,
)

__all__ = ["TimedGate"]


class TimedGate:
    """``inner``, with its reserve, settle and release calls timed
    (``lequan_gate_seconds{call}``) and those that could not reach it counted
    (``lequan_gate_failures_total{call}``)."""

    def __init__(self, inner: ClaimGate, instruments: Instruments) -> None:
        self.inner = inner
        seconds, failures = instruments.gate_seconds, instruments.gate_failures
        self._reserve_s = seconds.labels("reserve")
        self._settle_s = seconds.labels("settle")
        self._release_s = seconds.labels("release")
        self._reserve_failed = failures.labels("reserve")
        self._settle_failed = failures.labels("settle")
        self._release_failed = failures.labels("release")

    @property
    def shared(self) -> bool:
        return self.inner.shared

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        started = time.perf_counter()
        try:
            return self.inner.reserve(requests)
        except GateUnavailable:
            self._reserve_failed.inc()
            raise
        finally:
            self._reserve_s.observe(time.perf_counter() - started)

    def settle(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        started = time.perf_counter()
        try:
            self.inner.settle(reservations)
        except GateUnavailable:
            self._settle_failed.inc()
            raise
        finally:
            self._settle_s.observe(time.perf_counter() - started)

    def release(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        started = time.perf_counter()
        try:
            self.inner.release(reservations)
        except GateUnavailable:
            self._release_failed.inc()
            raise
        finally:
            self._release_s.observe(time.perf_counter() - started)

    def stale(self, pool: str, *, older_than_s: float, limit: int) -> list[tuple[str, str, int]]:
        return self.inner.stale(pool, older_than_s=older_than_s, limit=limit)

    def pending_of(
        self, pools: Sequence[str], person_ids: Sequence[str]
    ) -> list[PendingReservation]:
        return self.inner.pending_of(pools, person_ids)

    def recount(self, campaign_id: str, counts: Mapping[str, int], *, quiet_s: float) -> set[str]:
        return self.inner.recount(campaign_id, counts, quiet_s=quiet_s)

    def remaining(self, pool: str, template_id: str) -> int | None:
        return self.inner.remaining(pool, template_id)

    def loaded(self, campaign_id: str, pools: Sequence[str]) -> bool:
        return self.inner.loaded(campaign_id, pools)

    def begin_rebuild(self, campaign_id: str, *, ttl_s: float) -> str | None:
        return self.inner.begin_rebuild(campaign_id, ttl_s=ttl_s)

    def end_rebuild(self, campaign_id: str, token: str) -> None:
        self.inner.end_rebuild(campaign_id, token)

    def forget(self, campaign_id: str, pools: Sequence[str]) -> None:
        self.inner.forget(campaign_id, pools)

    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        self.inner.reset_pool(pool, stock=stock, claimed=claimed)

    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        self.inner.reset_campaign(campaign_id, claimed=claimed)

    def enter(
        self, draw: str, entries: Sequence[DrawEntry], *, entries_max: int
    ) -> list[EntryOutcome]:
        return self.inner.enter(draw, entries, entries_max=entries_max)

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        return self.inner.draw(
            draw, chunk_size=chunk_size, pending_max=pending_max, lock_ttl_s=lock_ttl_s
        )

    def draw_results(self, draw: str, tickets: Sequence[str]) -> list[DrawResult | None]:
        return self.inner.draw_results(draw, tickets)

    def drawn(self, draw: str, *, start: int, limit: int) -> list[DrawnEntry]:
        return self.inner.drawn(draw, start=start, limit=limit)

    def forget_draw(self, draw: str) -> None:
        self.inner.forget_draw(draw)

    def close(self) -> None:
        self.inner.close()
