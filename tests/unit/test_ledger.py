"""The campaign ledger: every entry balances, and the money of a campaign is always accounted for.

An auditor's equation, after every operation: budget + outstanding + Σ payable
= the funded amount; outstanding = Σ face of vouchers still usable; the budget
never goes below zero; all balances together sum to zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lequan.domain.errors import Conflict
from lequan.domain.ledger import (
    Account,
    Entry,
    EntryKind,
    Posting,
    balances,
    expire_entry,
    fund_entry,
    issue_entry,
    payable_account,
    redeem_entry,
    refund_void_entry,
    reverse_entry,
    revoke_entry,
)
from lequan.domain.vouchers import Action, VoucherState, next_state

ACQUIRERS = ("acq-unionpay", "acq-jd")
BUDGET = str(Account.BUDGET)
OUTSTANDING = str(Account.OUTSTANDING)
FUNDING = str(Account.FUNDING)
PAYABLE = payable_account("acq-unionpay")


def _lines(entry: Entry) -> dict[str, int]:
    return {p.account: p.amount_fen for p in entry.postings}


# Each entry on its own


def test_funding_moves_the_issuer_money_into_the_budget() -> None:
    entry = fund_entry(6_000_000_000)
    assert entry.kind is EntryKind.FUND
    assert _lines(entry) == {FUNDING: -6_000_000_000, BUDGET: 6_000_000_000}


def test_issuing_commits_the_face_value_from_the_budget() -> None:
    entry = issue_entry(9_000 * 3)
    assert entry.kind is EntryKind.ISSUE
    assert _lines(entry) == {BUDGET: -27_000, OUTSTANDING: 27_000}


def test_redeeming_makes_the_discount_payable_and_returns_the_unused_face() -> None:
    entry = redeem_entry(face_fen=200_000, discount_fen=150_000, acquirer_id="acq-unionpay")
    assert entry.kind is EntryKind.REDEEM
    assert _lines(entry) == {OUTSTANDING: -200_000, PAYABLE: 150_000, BUDGET: 50_000}


def test_redeeming_the_whole_face_drops_the_zero_budget_line() -> None:
    entry = redeem_entry(face_fen=9_000, discount_fen=9_000, acquirer_id="acq-unionpay")
    assert _lines(entry) == {OUTSTANDING: -9_000, PAYABLE: 9_000}
    assert all(p.amount_fen != 0 for p in entry.postings)


def test_funding_nothing_is_an_empty_entry() -> None:
    assert fund_entry(0).postings == ()


@pytest.mark.parametrize("kind", [EntryKind.REVERSE, EntryKind.REFUND_RESTORE])
@pytest.mark.parametrize(("face_fen", "discount_fen"), [(9_000, 9_000), (200_000, 150_000)])
def test_reversal_exactly_negates_the_redemption(
    kind: EntryKind, face_fen: int, discount_fen: int
) -> None:
    redeem = redeem_entry(face_fen=face_fen, discount_fen=discount_fen, acquirer_id="acq-jd")
    undo = reverse_entry(
        face_fen=face_fen, discount_fen=discount_fen, acquirer_id="acq-jd", kind=kind
    )
    assert undo.kind is kind
    assert undo.postings == tuple(Posting(p.account, -p.amount_fen) for p in redeem.postings)
    assert balances([redeem, undo]) == dict.fromkeys(_lines(redeem), 0)


def test_reversal_takes_the_unused_face_back_out_of_the_budget() -> None:
    """Why callers must commit the unused part from the budget before reversing."""
    undo = reverse_entry(face_fen=200_000, discount_fen=150_000, acquirer_id="acq-unionpay")
    assert _lines(undo)[BUDGET] == -50_000


def test_refund_without_restoring_returns_only_the_discount_to_the_budget() -> None:
    entry = refund_void_entry(discount_fen=9_000, acquirer_id="acq-unionpay")
    assert entry.kind is EntryKind.REFUND_VOID
    assert _lines(entry) == {PAYABLE: -9_000, BUDGET: 9_000}


@pytest.mark.parametrize(
    ("make", "kind"), [(expire_entry, EntryKind.EXPIRE), (revoke_entry, EntryKind.REVOKE)]
)
def test_expiry_and_revocation_return_the_face_to_the_budget(
    make: Callable[[int], Entry], kind: EntryKind
) -> None:
    """The two post the same amounts: only the kind tells an auditor an expiry from
    an operator's revocation, so each must carry its own."""
    entry = make(9_000)
    assert entry.kind is kind
    assert _lines(entry) == {OUTSTANDING: -9_000, BUDGET: 9_000}
    assert _lines(make(1)) == {OUTSTANDING: -1, BUDGET: 1}  # the smallest voucher there is


def test_payable_is_kept_per_acquirer() -> None:
    entries = [
        fund_entry(100_000),
        issue_entry(20_000),
        redeem_entry(face_fen=10_000, discount_fen=10_000, acquirer_id="acq-unionpay"),
        redeem_entry(face_fen=10_000, discount_fen=7_000, acquirer_id="acq-jd"),
    ]
    result = balances(entries)
    assert result[payable_account("acq-unionpay")] == 10_000
    assert result[payable_account("acq-jd")] == 7_000
    assert result[BUDGET] == 83_000
    assert result[OUTSTANDING] == 0


def test_balances_of_nothing_is_empty() -> None:
    assert balances([]) == {}


# Nonsense is a programmer error, caught by assertions


@pytest.mark.parametrize(
    "nonsense",
    [
        lambda: redeem_entry(face_fen=9_000, discount_fen=9_001, acquirer_id="a"),
        lambda: redeem_entry(face_fen=9_000, discount_fen=0, acquirer_id="a"),
        lambda: redeem_entry(face_fen=9_000, discount_fen=-1, acquirer_id="a"),
        lambda: reverse_entry(face_fen=9_000, discount_fen=9_001, acquirer_id="a"),
        lambda: reverse_entry(
            face_fen=9_000, discount_fen=9_000, acquirer_id="a", kind=EntryKind.REDEEM
        ),
        lambda: refund_void_entry(discount_fen=0, acquirer_id="a"),
        lambda: fund_entry(-1),
        lambda: issue_entry(0),
        lambda: issue_entry(-9_000),
        lambda: expire_entry(0),
        lambda: revoke_entry(0),
        lambda: Entry(EntryKind.ISSUE, (Posting(BUDGET, -1), Posting(OUTSTANDING, 2))),
        lambda: Entry(EntryKind.ISSUE, (Posting(BUDGET, 0), Posting(OUTSTANDING, 0))),
    ],
    ids=[
        "discount-above-face",
        "zero-discount",
        "negative-discount",
        "reverse-discount-above-face",
        "reverse-with-redeem-kind",
        "zero-refund",
        "negative-funding",
        "zero-issue",
        "negative-issue",
        "zero-expiry",
        "zero-revocation",
        "unbalanced-entry",
        "zero-lines",
    ],
)
def test_nonsense_entry_fails_an_assertion(nonsense: Callable[[], Entry]) -> None:
    with pytest.raises(AssertionError):
        nonsense()


# A whole campaign, at random


@dataclass
class _Voucher:
    face_fen: int
    state: VoucherState = VoucherState.ISSUED
    discount_fen: int = 0
    acquirer_id: str = ""


LIVE = (VoucherState.ISSUED, VoucherState.LOCKED)


class CampaignMoney(RuleBasedStateMachine):
    """Fund, issue within the budget, lock, redeem, reverse, refund, expire and revoke."""

    def __init__(self) -> None:
        super().__init__()
        self.funded_fen = 0
        self.entries: list[Entry] = []
        self.vouchers: list[_Voucher] = []

    def _post(self, entry: Entry) -> None:
        assert sum(p.amount_fen for p in entry.postings) == 0, entry
        self.entries.append(entry)

    def _move(self, voucher: _Voucher, action: Action) -> None:
        voucher.state = next_state(voucher.state, action)

    def _budget(self) -> int:
        return balances(self.entries).get(BUDGET, 0)

    def _in(self, *states: VoucherState) -> list[_Voucher]:
        return [v for v in self.vouchers if v.state in states]

    @initialize(budget_fen=st.integers(min_value=0, max_value=200_000))
    def fund(self, budget_fen: int) -> None:
        self.funded_fen = budget_fen
        self._post(fund_entry(budget_fen))

    @rule(faces=st.lists(st.integers(min_value=1, max_value=50_000), min_size=1, max_size=4))
    def issue(self, faces: list[int]) -> None:
        # The claim path stops exactly at the budget: never commit more than is free.
        batch: list[int] = []
        for face in faces:
            if sum(batch) + face > self._budget():
                break
            batch.append(face)
        if not batch:
            return
        self._post(issue_entry(sum(batch)))
        self.vouchers.extend(_Voucher(face) for face in batch)

    @precondition(lambda self: self._budget() > 0)
    @rule()
    def issue_the_rest(self) -> None:
        """The last voucher a campaign can afford: the budget is then exactly spent."""
        rest = self._budget()
        self._post(issue_entry(rest))
        self.vouchers.append(_Voucher(rest))

    @precondition(lambda self: self._in(VoucherState.ISSUED))
    @rule(data=st.data())
    def lock(self, data: st.DataObject) -> None:
        self._move(data.draw(st.sampled_from(self._in(VoucherState.ISSUED))), Action.LOCK)

    @precondition(lambda self: self._in(VoucherState.LOCKED))
    @rule(data=st.data(), timed_out=st.booleans())
    def release(self, data: st.DataObject, timed_out: bool) -> None:
        voucher = data.draw(st.sampled_from(self._in(VoucherState.LOCKED)))
        self._move(voucher, Action.LOCK_TIMEOUT if timed_out else Action.RELEASE)

    @precondition(lambda self: self._in(*LIVE))
    @rule(data=st.data(), acquirer_id=st.sampled_from(ACQUIRERS))
    def redeem(self, data: st.DataObject, acquirer_id: str) -> None:
        voucher = data.draw(st.sampled_from(self._in(*LIVE)))
        discount = data.draw(st.integers(min_value=1, max_value=voucher.face_fen))
        action = Action.CONFIRM if voucher.state is VoucherState.LOCKED else Action.REDEEM
        self._move(voucher, action)
        voucher.discount_fen, voucher.acquirer_id = discount, acquirer_id
        self._post(
            redeem_entry(face_fen=voucher.face_fen, discount_fen=discount, acquirer_id=acquirer_id)
        )

    def _undo_redemption(self, voucher: _Voucher, kind: EntryKind) -> bool:
        """Give a redeemed voucher back, if the budget can take back its unused part."""
        unused = voucher.face_fen - voucher.discount_fen
        if unused > self._budget():
            return False  # the service refuses with budget_exhausted
        self._post(
            reverse_entry(
                face_fen=voucher.face_fen,
                discount_fen=voucher.discount_fen,
                acquirer_id=voucher.acquirer_id,
                kind=kind,
            )
        )
        voucher.discount_fen, voucher.acquirer_id = 0, ""
        return True

    @precondition(lambda self: self._in(VoucherState.REDEEMED))
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        voucher = data.draw(st.sampled_from(self._in(VoucherState.REDEEMED)))
        discount, acquirer_id = voucher.discount_fen, voucher.acquirer_id
        if self._undo_redemption(voucher, EntryKind.REVERSE):
            self._move(voucher, Action.REVERSE)
        else:
            assert (voucher.discount_fen, voucher.acquirer_id) == (discount, acquirer_id)

    @precondition(lambda self: self._in(VoucherState.REDEEMED))
    @rule(data=st.data(), restore=st.booleans())
    def refund(self, data: st.DataObject, restore: bool) -> None:
        voucher = data.draw(st.sampled_from(self._in(VoucherState.REDEEMED)))
        self._move(voucher, Action.REFUND)
        if restore and self._undo_redemption(voucher, EntryKind.REFUND_RESTORE):
            self._move(voucher, Action.RESTORE)
            return
        self._post(
            refund_void_entry(discount_fen=voucher.discount_fen, acquirer_id=voucher.acquirer_id)
        )
        voucher.discount_fen, voucher.acquirer_id = 0, ""
        self._move(voucher, Action.VOID)

    @precondition(lambda self: self._in(VoucherState.ISSUED))
    @rule(data=st.data(), revoke=st.booleans())
    def expire_or_revoke(self, data: st.DataObject, revoke: bool) -> None:
        voucher = data.draw(st.sampled_from(self._in(VoucherState.ISSUED)))
        self._move(voucher, Action.REVOKE if revoke else Action.EXPIRE)
        self._post((revoke_entry if revoke else expire_entry)(voucher.face_fen))

    @precondition(lambda self: self._in(VoucherState.REDEEMED))
    @rule(data=st.data())
    def redeem_again_is_refused(self, data: st.DataObject) -> None:
        voucher = data.draw(st.sampled_from(self._in(VoucherState.REDEEMED)))
        count = len(self.entries)
        with pytest.raises(Conflict) as refused:
            next_state(voucher.state, Action.REDEEM)
        assert refused.value.code == "already_redeemed"
        assert len(self.entries) == count

    @invariant()
    def every_entry_balances(self) -> None:
        for entry in self.entries:
            assert sum(p.amount_fen for p in entry.postings) == 0
            assert all(p.amount_fen != 0 for p in entry.postings)

    @invariant()
    def all_balances_sum_to_zero(self) -> None:
        assert sum(balances(self.entries).values()) == 0

    @invariant()
    def budget_never_goes_below_zero(self) -> None:
        assert self._budget() >= 0

    @invariant()
    def outstanding_is_the_face_of_live_vouchers(self) -> None:
        live = sum(v.face_fen for v in self._in(*LIVE))
        assert balances(self.entries).get(OUTSTANDING, 0) == live

    @invariant()
    def payable_is_the_discount_of_redemptions_not_undone(self) -> None:
        result = balances(self.entries)
        for acquirer_id in ACQUIRERS:
            owed = sum(
                v.discount_fen
                for v in self._in(VoucherState.REDEEMED, VoucherState.REFUNDED)
                if v.acquirer_id == acquirer_id
            )
            assert result.get(payable_account(acquirer_id), 0) == owed

    @invariant()
    def budget_outstanding_and_payable_add_up_to_the_funding(self) -> None:
        result = balances(self.entries)
        payable = sum(n for account, n in result.items() if account.startswith("payable:"))
        assert result.get(BUDGET, 0) + result.get(OUTSTANDING, 0) + payable == self.funded_fen
        assert result.get(FUNDING, 0) == -self.funded_fen


CampaignMoney.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_campaign_money_is_always_accounted_for = CampaignMoney.TestCase


def test_each_entry_moves_the_budget_counter_by_what_it_commits() -> None:
    """The committed counter follows the budget account, with the sign turned:
    taking budget commits it, giving it back releases it; funding commits nothing."""
    from lequan.domain.ledger import (
        EntryKind,
        committed_change_fen,
        expire_entry,
        fund_entry,
        issue_entry,
        redeem_entry,
        refund_void_entry,
        reverse_entry,
        revoke_entry,
    )

    assert committed_change_fen(fund_entry(1_000_000)) == 0
    assert committed_change_fen(issue_entry(9_000)) == 9_000
    # A 90-yuan voucher taking 60 off an order: the 30 unused go back to the budget.
    redeemed = redeem_entry(face_fen=9_000, discount_fen=6_000, acquirer_id="acq")
    assert committed_change_fen(redeemed) == -3_000
    assert (
        committed_change_fen(reverse_entry(face_fen=9_000, discount_fen=6_000, acquirer_id="acq"))
        == 3_000
    )
    restored = reverse_entry(
        face_fen=9_000, discount_fen=6_000, acquirer_id="acq", kind=EntryKind.REFUND_RESTORE
    )
    assert committed_change_fen(restored) == 3_000
    assert committed_change_fen(refund_void_entry(discount_fen=6_000, acquirer_id="acq")) == -6_000
    assert committed_change_fen(expire_entry(9_000)) == -9_000
    assert committed_change_fen(revoke_entry(9_000)) == -9_000
    # A voucher used whole gives nothing back.
    whole = redeem_entry(face_fen=9_000, discount_fen=9_000, acquirer_id="acq")
    assert committed_change_fen(whole) == 0


def test_a_trade_in_subsidy_is_owed_in_its_categorys_own_account() -> None:
    from lequan.domain.ledger import payable_account, refund_void_entry, reverse_entry

    redeem = redeem_entry(
        face_fen=200_000, discount_fen=119_980, acquirer_id="acq-jd", category="refrigerator"
    )
    assert balances([redeem]) == {
        "outstanding": -200_000,
        "payable:acq-jd:refrigerator": 119_980,
        "budget": 80_020,
    }
    undone = reverse_entry(
        face_fen=200_000, discount_fen=119_980, acquirer_id="acq-jd", category="refrigerator"
    )
    assert all(v == 0 for v in balances([redeem, undone]).values())
    void = refund_void_entry(discount_fen=119_980, acquirer_id="acq-jd", category="refrigerator")
    assert balances([redeem, void])["payable:acq-jd:refrigerator"] == 0
    assert payable_account("acq-jd").startswith("payable:acq-jd")
    assert payable_account("acq-jd", "tv") == "payable:acq-jd:tv"
