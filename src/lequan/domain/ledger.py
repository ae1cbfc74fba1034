"""Double-entry postings for a campaign's money, in integer fen.

Accounts of one campaign:

- ``funding``        the issuer's money before it is given to the campaign (goes negative);
- ``budget``         money still free to commit to new vouchers (never below zero);
- ``outstanding``    the face value of vouchers issued and not yet used, expired or revoked;
- ``payable:<acq>``  the discounts redeemed through an acquirer, owed until settlement;
- ``payable:<acq>:<category>``  a trade-in subsidy, owed to the acquirer as above and
  kept apart by product category (the figure reconciled with central, per category);
- ``held:<acq>[:<category>]``  a payable a risk rule held (``domain/redemption_risk.py``):
  owed to nobody until an analyst releases it (back to its payable) or claws it
  back (to the budget), before settlement.

Every entry sums to zero. With these postings, at every commit and per
campaign: budget + outstanding + Σ payable + Σ held = the funded amount, and
outstanding = Σ face of vouchers issued or locked.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Account",
    "Entry",
    "EntryKind",
    "Posting",
    "balances",
    "clawback_entry",
    "committed_change_fen",
    "expire_entry",
    "fund_entry",
    "held_account",
    "hold_entry",
    "issue_entry",
    "payable_account",
    "redeem_entry",
    "refund_void_entry",
    "release_entry",
    "reverse_entry",
    "revoke_entry",
]


class Account(enum.StrEnum):
    FUNDING = "funding"
    BUDGET = "budget"
    OUTSTANDING = "outstanding"


def payable_account(acquirer_id: str, category: str | None = None) -> str:
    """What an acquirer is owed: for a trade-in subsidy, in the product category's own
    account (acquirer ids have no ``:``, so ``payable:<acq>`` prefixes both)."""
    assert ":" not in acquirer_id, acquirer_id
    return f"payable:{acquirer_id}" if category is None else f"payable:{acquirer_id}:{category}"


def held_account(payable: str) -> str:
    """Where a payable a risk rule holds waits: ``payable:<acq>[:<cat>]`` becomes
    ``held:<acq>[:<cat>]``."""
    assert payable.startswith("payable:"), payable
    return "held:" + payable.removeprefix("payable:")


class EntryKind(enum.StrEnum):
    FUND = "fund"
    ISSUE = "issue"
    REDEEM = "redeem"
    REVERSE = "reverse"
    REFUND_RESTORE = "refund_restore"
    REFUND_VOID = "refund_void"
    EXPIRE = "expire"
    REVOKE = "revoke"
    HOLD = "hold"
    RELEASE = "release"
    CLAWBACK = "clawback"


@dataclass(frozen=True, slots=True)
class Posting:
    account: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One balanced journal entry; zero-amount lines are dropped."""

    kind: EntryKind
    postings: tuple[Posting, ...]

    def __post_init__(self) -> None:
        assert sum(p.amount_fen for p in self.postings) == 0, self
        assert all(p.amount_fen != 0 for p in self.postings), self


def _entry(kind: EntryKind, *lines: tuple[str, int]) -> Entry:
    return Entry(kind, tuple(Posting(a, n) for a, n in lines if n != 0))


def fund_entry(budget_fen: int) -> Entry:
    assert budget_fen >= 0
    return _entry(EntryKind.FUND, (Account.FUNDING, -budget_fen), (Account.BUDGET, budget_fen))


def issue_entry(face_total_fen: int) -> Entry:
    """Commit the face value of newly issued vouchers (one entry per claim batch)."""
    assert face_total_fen > 0
    return _entry(
        EntryKind.ISSUE, (Account.BUDGET, -face_total_fen), (Account.OUTSTANDING, face_total_fen)
    )


def redeem_entry(
    *, face_fen: int, discount_fen: int, acquirer_id: str, category: str | None = None
) -> Entry:
    """The discount becomes payable (a trade-in subsidy by its product ``category``);
    what the voucher did not use returns to the budget."""
    assert 0 < discount_fen <= face_fen
    return _entry(
        EntryKind.REDEEM,
        (Account.OUTSTANDING, -face_fen),
        (payable_account(acquirer_id, category), discount_fen),
        (Account.BUDGET, face_fen - discount_fen),
    )


def reverse_entry(
    *,
    face_fen: int,
    discount_fen: int,
    acquirer_id: str,
    category: str | None = None,
    kind: EntryKind = EntryKind.REVERSE,
) -> Entry:
    """Undo a redemption exactly (reversal, or a refund that gives the voucher back)."""
    assert kind in (EntryKind.REVERSE, EntryKind.REFUND_RESTORE)
    redeem = redeem_entry(
        face_fen=face_fen, discount_fen=discount_fen, acquirer_id=acquirer_id, category=category
    )
    return Entry(kind, tuple(Posting(p.account, -p.amount_fen) for p in redeem.postings))


def refund_void_entry(*, discount_fen: int, acquirer_id: str, category: str | None = None) -> Entry:
    """A refunded voucher that is not given back: the discount returns to the budget."""
    assert discount_fen > 0
    return _entry(
        EntryKind.REFUND_VOID,
        (payable_account(acquirer_id, category), -discount_fen),
        (Account.BUDGET, discount_fen),
    )


def hold_entry(*, amount_fen: int, payable: str) -> Entry:
    """A redemption's payable held by a risk rule: out of what is owed, into ``held``."""
    assert amount_fen > 0
    return _entry(EntryKind.HOLD, (payable, -amount_fen), (held_account(payable), amount_fen))


def release_entry(*, amount_fen: int, payable: str) -> Entry:
    """A held payable released (an analyst approved, or a refund takes it back): owed
    again, exactly as before the hold."""
    assert amount_fen > 0
    return _entry(EntryKind.RELEASE, (held_account(payable), -amount_fen), (payable, amount_fen))


def clawback_entry(*, amount_fen: int, payable: str, held: bool) -> Entry:
    """A redemption's payable clawed back before settlement (an analyst rejected it):
    from the held account (or the payable itself, when it was not held) to the budget,
    as a refund that voids the voucher gives a discount back."""
    assert amount_fen > 0
    source = held_account(payable) if held else payable
    return _entry(EntryKind.CLAWBACK, (source, -amount_fen), (Account.BUDGET, amount_fen))


def expire_entry(face_fen: int) -> Entry:
    assert face_fen > 0
    return _entry(EntryKind.EXPIRE, (Account.OUTSTANDING, -face_fen), (Account.BUDGET, face_fen))


def revoke_entry(face_fen: int) -> Entry:
    assert face_fen > 0
    return _entry(EntryKind.REVOKE, (Account.OUTSTANDING, -face_fen), (Account.BUDGET, face_fen))


def committed_change_fen(entry: Entry) -> int:
    """How much of the campaign's budget an entry commits; negative when it gives back.

    The campaign's budget counter (committed fen) moves by exactly this, in
    the entry's own transaction, so the counter always equals the funded
    amount minus the ``budget`` account. Funding sets the budget itself and
    commits nothing.
    """
    if entry.kind is EntryKind.FUND:
        return 0
    return -sum(p.amount_fen for p in entry.postings if p.account == Account.BUDGET)


def balances(entries: Iterable[Entry]) -> dict[str, int]:
    """The balance of every account after ``entries``."""
    result: dict[str, int] = {}
    for entry in entries:
        for posting in entry.postings:
            result[posting.account] = result.get(posting.account, 0) + posting.amount_fen
    return result
