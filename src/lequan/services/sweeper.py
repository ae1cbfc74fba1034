"""Scheduled housekeeping: expire vouchers past validity (their face value
returns to the budget), time out locks nobody confirmed or voided, and let
go of the gate state of campaigns whose rounds have all ended.

Each pass does at most ``sweep_batch_max`` of each, one small transaction
per voucher so a long pass never holds locks the claim path needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from lequan.domain.errors import Conflict
from lequan.domain.ledger import expire_entry
from lequan.domain.redemption_states import RedemptionAction, next_status
from lequan.domain.vouchers import Action, VoucherState, next_state
from lequan.services.background import Loop
from lequan.services.campaigns import retire_gates
from lequan.services.qualification import release_for_voucher, release_stale
from lequan.services.runtime import Runtime

__all__ = ["SweepReport", "Sweeper", "sweep"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    expired: int
    locks_timed_out: int
    gates_retired: int = 0


def sweep(rt: Runtime) -> SweepReport:
    now = rt.clock.now()
    limit = rt.settings.sweep_batch_max
    timed_out = 0
    with rt.store.unit_of_work(readonly=True) as uow:
        locks = uow.vouchers.locks_past_timeout(now, limit)
    for redemption in locks:
        with rt.store.unit_of_work() as uow:
            voucher = uow.vouchers.lock_voucher(redemption.voucher_id)
            current = uow.vouchers.get_redemption(redemption.id)
            if voucher is None or current is None:
                continue
            try:
                status = next_status(current.status, RedemptionAction.LOCK_TIMEOUT)
            except Conflict:
                continue  # confirmed, voided or timed out meanwhile
            if not uow.vouchers.move_redemption(current, status=status, now=now):
                continue
            # A trade-in product held by the lock may be subsidised by another now.
            uow.products.release_product(redemption.id, now=now)
            if voucher.state is VoucherState.LOCKED and voucher.redemption_id == redemption.id:
                state = next_state(voucher.state, Action.LOCK_TIMEOUT)
                if not uow.vouchers.move_voucher(voucher, state=state, now=now):
                    continue
            uow.commit()
            timed_out += 1
    expired = 0
    with rt.store.unit_of_work(readonly=True) as uow:
        due = uow.vouchers.vouchers_past_validity(now, limit)
    for candidate in due:
        with rt.store.unit_of_work() as uow:
            voucher_now = uow.vouchers.lock_voucher(candidate.id)
            if voucher_now is None or voucher_now.valid_until > now:
                continue
            try:
                state = next_state(voucher_now.state, Action.EXPIRE)
            except Conflict:
                continue
            if not uow.vouchers.move_voucher(voucher_now, state=state, now=now):
                continue
            uow.ledger.record(
                expire_entry(voucher_now.face_fen),
                campaign_id=voucher_now.campaign_id,
                now=now,
                voucher_id=voucher_now.id,
            )
            # An unused trade-in voucher gives its qualification back.
            release_for_voucher(uow, voucher_now, topic="voucher.expired", now=now)
            uow.commit()
            expired += 1
    if rt.central is not None:
        # Locks whose application died between central's lock and the voucher's commit.
        release_stale(rt, older_than_s=rt.settings.trade_in_hold_s, limit=limit)
    gates_retired = len(retire_gates(rt))
    if expired or timed_out or gates_retired:
        log.info("sweep", expired=expired, locks_timed_out=timed_out, gates_retired=gates_retired)
    return SweepReport(expired=expired, locks_timed_out=timed_out, gates_retired=gates_retired)


class Sweeper(Loop):
    """Runs ``sweep`` every ``sweep_interval_s`` in a background thread, counting its
    runs by outcome and what they did (``lequan_sweeps_total``, ``lequan_swept_total``)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        sweeps, swept = rt.metrics.sweeps, rt.metrics.swept
        self._ok, self._failed = sweeps.labels("ok"), sweeps.labels("failed")
        self._expired = swept.labels("expired")
        self._timed_out = swept.labels("locks_timed_out")
        self._retired = swept.labels("gates_retired")
        interval_s = rt.settings.sweep_interval_s
        super().__init__(
            "lequan-sweep", self.step, first_pause_s=interval_s, retry_pause_s=interval_s
        )

    def step(self) -> float:
        """One sweep; the pause before the next."""
        try:
            report = sweep(self._rt)
        except Exception:
            self._failed.inc()
            raise  # logged by the loop, which tries again
        self._ok.inc()
        self._expired.inc(report.expired)
        self._timed_out.inc(report.locks_timed_out)
        self._retired.inc(report.gates_retired)
        return self._rt.settings.sweep_interval_s
