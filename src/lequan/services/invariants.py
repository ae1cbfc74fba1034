"""The invariants that must hold for every campaign at every commit, checked
against the store: what the demo prints, what tests assert after races,
what an auditor can run at any time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lequan.domain.errors import NotFound
from lequan.domain.ledger import Account
from lequan.domain.vouchers import VoucherState
from lequan.services.runtime import Runtime

__all__ = ["CampaignCheck", "check_campaign"]

LIVE_STATES = (VoucherState.ISSUED, VoucherState.LOCKED)


@dataclass(frozen=True, slots=True)
class CampaignCheck:
    campaign_id: str
    vouchers_by_state: dict[str, int]
    issued: int
    stock_initial: int
    budget_fen: int
    committed_fen: int
    balances: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_campaign(rt: Runtime, campaign_id: str) -> CampaignCheck:
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.campaigns.get_campaign(campaign_id)
        if row is None:
            raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
        states = uow.vouchers.voucher_state_counts(campaign_id)
        balances = uow.ledger.balances(campaign_id)
        initial = uow.campaigns.stock_initial(campaign_id)
        issued_by_pool = uow.vouchers.issued_counts(campaign_id)
        counted_by_pool = uow.campaigns.stock_issued(campaign_id)
        held_fen = uow.redemption_risk.held_fen(campaign_id)
    problems: list[str] = []
    issued = sum(n for n, _ in states.values())
    stock_initial = sum(n for *_, n in initial)
    initial_by_pool = {(r, c, t): n for r, c, t, n in initial}
    for pool, count in issued_by_pool.items():
        if count > initial_by_pool.get(pool, 0):
            problems.append(f"oversold {pool}: {count} issued of {initial_by_pool.get(pool, 0)}")
    for pool, counted in counted_by_pool.items():
        # The counter the claim path keeps (and a CHECK holds within the stock)
        # says what the vouchers say.
        if counted != issued_by_pool.get(pool, 0):
            problems.append(
                f"stock counter {pool}: {counted} counted, {issued_by_pool.get(pool, 0)} vouchers"
            )
    if sum(balances.values()) != 0:
        problems.append(f"ledger does not balance: {sum(balances.values())}")
    funded = -balances.get(Account.FUNDING, 0)
    budget_left = balances.get(Account.BUDGET, 0)
    if funded and budget_left != row.budget_fen - row.committed_fen:
        problems.append(
            f"budget account {budget_left} != "
            f"budget {row.budget_fen} - committed {row.committed_fen}"
        )
    if budget_left < 0:
        problems.append(f"budget overdrawn: {budget_left}")
    live_face = sum(face for state, (_, face) in states.items() if state in LIVE_STATES)
    if balances.get(Account.OUTSTANDING, 0) != live_face:
        problems.append(
            f"outstanding {balances.get(Account.OUTSTANDING, 0)} "
            f"!= face of live vouchers {live_face}"
        )
    if row.committed_fen > row.budget_fen:
        problems.append("committed beyond budget")
    # What the risk rules hold (payable_holds) is what the ledger's held: accounts hold.
    held_balance = sum(n for account, n in balances.items() if account.startswith("held:"))
    if held_balance != held_fen:
        problems.append(f"held accounts {held_balance} != payables held {held_fen}")
    if any(n < 0 for account, n in balances.items() if account.startswith("held:")):
        problems.append("a held account is overdrawn")
    return CampaignCheck(
        campaign_id=campaign_id,
        vouchers_by_state={state: n for state, (n, _) in states.items()},
        issued=issued,
        stock_initial=stock_initial,
        budget_fen=row.budget_fen,
        committed_fen=row.committed_fen,
        balances=balances,
        problems=problems,
    )
