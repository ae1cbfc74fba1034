"""Redemption under real concurrency and through every path of the voucher's
life, on both stacks: one voucher pays for one order, every move of money is
a balanced ledger entry, and every redemption, reversal and refund leaves
exactly one outbox event for the central platform.

Every test runs on (a) a SQLite file with the in-process gate and (b) a fresh
PostgreSQL database with the Redis gate (failing, not skipping, in CI when a
server is down). After every scenario ``check_campaign`` must be ok and the
outbox must hold one event per redemption, reversal and refund.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
import sqlalchemy as sa

from lequan.adapters.sql import tables
from lequan.domain.campaigns import CampaignConfig
from lequan.domain.errors import LequanError
from lequan.domain.vouchers import VoucherState
from lequan.rows import RedemptionRow, VoucherRow
from lequan.services import admin, redemption
from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Idempotency, request_hash
from lequan.services.invariants import CampaignCheck, check_campaign
from lequan.services.sweeper import sweep
from tests.factories import ACQUIRER, T0, World, dining_config
from tests.integration.conftest import Stack

CAMPAIGN = "sh-dining-2024"
TEMPLATE = "d300-90"  # spend 300 yuan, get 90 off: face = discount = 9000 fen
FACE_FEN = 9000
MERCHANT = "m-cafe-001"  # a restaurant (5812), in store, enrolled in the dining campaign
ORDER_FEN = 35000
PAYABLE = f"payable:{ACQUIRER}"

TRADE_IN = "sh-tradein-test"
TRADE_IN_TEMPLATE = "p15"
TRADE_IN_CAP_FEN = 200_000  # 15% of the price, at most 2,000 yuan
TRADE_IN_MERCHANT = "m-appliance-001"

T = TypeVar("T")


# -- helpers ------------------------------------------------------------------------


def concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run every call in its own thread, all released at once; results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=60)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=120) for future in futures]


def claim(world: World, user: str, *, campaign: str = CAMPAIGN, template: str = TEMPLATE) -> str:
    """A voucher for ``user`` in WeChat, round r1; its id."""
    key = Idempotency("wechat", f"k-{campaign}-{user}", request_hash(user, campaign, template))
    [result] = world.platform.claims.claim(
        "wechat", [ClaimRequest(user, campaign, "r1", template, "310104", key)]
    )
    assert result.outcome == "issued", result
    vid = result.answer.body["voucher"]["voucher_id"]
    assert isinstance(vid, str)
    return vid


@contextmanager
def dining(stack: Stack, tmp_path: Path, people: int, **config: Any) -> Iterator[World]:
    """A live dining campaign with ``people`` registered users u0, u1, ..."""
    with stack.world(tmp_path) as world:
        for n in range(people):
            world.register(n)
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 100}}, **config))
        yield world


def order(
    user: str,
    order_id: str,
    *,
    amount_fen: int = ORDER_FEN,
    merchant: str = MERCHANT,
    mode: Literal["online", "in_store"] = "in_store",
) -> redemption.RedeemOrder:
    return redemption.RedeemOrder(
        acquirer_id=ACQUIRER,
        merchant_id=merchant,
        channel_id="wechat",
        channel_user_id=user,
        order_id=order_id,
        order_amount_fen=amount_fen,
        mode=mode,
    )


def redeem(world: World, vid: str, o: redemption.RedeemOrder, *, lock: bool = False) -> str:
    """Redeem (or lock) and return the redemption id; raises what the service raises."""
    row, _state = redemption.redeem(world.rt, voucher_id=vid, order=o, lock=lock)
    assert isinstance(row, RedemptionRow)
    return row.id


def refused(call: Callable[[], object]) -> str:
    """The error code ``call`` is refused with (it must be refused)."""
    with pytest.raises(LequanError) as caught:
        call()
    return caught.value.code


def attempt(call: Callable[[], T]) -> T | str:
    """The call's result, or the code of the LequanError it raised."""
    try:
        return call()
    except LequanError as error:
        return error.code


def voucher(world: World, vid: str) -> VoucherRow:
    with world.rt.store.unit_of_work() as uow:
        row: VoucherRow | None = uow.vouchers.get_voucher(vid)
    assert row is not None
    return row


def redemption_row(world: World, rid: str) -> RedemptionRow:
    with world.rt.store.unit_of_work() as uow:
        row: RedemptionRow | None = uow.vouchers.get_redemption(rid)
    assert row is not None
    return row


def redemptions_of(world: World, vid: str) -> list[RedemptionRow]:
    r = tables.redemptions.c
    with world.rt.store.unit_of_work() as uow:
        ids = uow.connection.execute(sa.select(r.id).where(r.voucher_id == vid)).scalars().all()
    return [redemption_row(world, rid) for rid in ids]


def assert_books(
    world: World,
    *,
    completed: int = 0,
    reversed_: int = 0,
    refunded: int = 0,
    campaign: str = CAMPAIGN,
) -> CampaignCheck:
    """Invariants hold, and the outbox holds one event per redemption, reversal, refund."""
    check = check_campaign(world.rt, campaign)
    assert check.ok, check.problems
    assert sum(check.balances.values()) == 0
    with world.rt.store.unit_of_work() as uow:
        topics: dict[str, int] = uow.ledger.outbox_topics()
    expected = {
        "redemption.completed": completed,
        "redemption.reversed": reversed_,
        "redemption.refunded": refunded,
    }
    assert topics == {topic: n for topic, n in expected.items() if n}
    return check


# -- concurrency --------------------------------------------------------------------


def test_50_concurrent_redemptions_of_one_voucher_one_wins(stack: Stack, tmp_path: Path) -> None:
    """Exactly one succeeds; the 49 others are told ``already_redeemed``.

    Only that code is accepted: the voucher row is locked (FOR UPDATE on
    PostgreSQL; SQLite serialises writers with BEGIN IMMEDIATE) before its
    state is read, so every loser reads the winner's ``redeemed``. The
    conditional update's ``voucher_busy`` cannot be reached with that lock.
    """
    with dining(stack, tmp_path, people=1) as world:
        vid = claim(world, "u0")
        before = check_campaign(world.rt, CAMPAIGN)

        results = concurrently(
            [
                partial(attempt, partial(redeem, world, vid, order("u0", f"o-{n}")))
                for n in range(50)
            ]
        )

        codes = Counter(r for r in results if r in ("already_redeemed", "voucher_busy"))
        winners = [r for r in results if r not in codes]
        assert len(winners) == 1, Counter(results)
        assert codes == {"already_redeemed": 49}
        [row] = redemptions_of(world, vid)
        assert row.id == winners[0]
        assert row.status == "redeemed"
        assert row.discount_fen == FACE_FEN
        assert row.pay_fen == ORDER_FEN - FACE_FEN
        assert voucher(world, vid).state is VoucherState.REDEEMED
        check = assert_books(world, completed=1)
        assert check.balances[PAYABLE] == FACE_FEN
        assert check.balances.get("outstanding", 0) == 0
        assert check.committed_fen == before.committed_fen  # threshold: nothing unused


def test_concurrent_lock_and_redeem_one_wins(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1) as world:
        vid = claim(world, "u0")

        results = concurrently(
            [
                partial(
                    attempt, partial(redeem, world, vid, order("u0", f"o-{n}"), lock=n % 2 == 0)
                )
                for n in range(30)
            ]
        )

        losers = Counter(r for r in results if r in ("already_redeemed", "voucher_locked"))
        [winner] = [r for r in results if r not in losers]
        assert isinstance(winner, str)
        won = redemption_row(world, winner)
        # Losers read the winner's state: locked if a lock won, redeemed if a redemption did.
        assert losers == {"voucher_locked" if won.status == "locked" else "already_redeemed": 29}
        assert [r.id for r in redemptions_of(world, vid)] == [winner]
        if won.status == "locked":
            assert voucher(world, vid).state is VoucherState.LOCKED
            assert_books(world, completed=0)
            redemption.confirm(world.rt, winner, acquirer_id=ACQUIRER)
        assert voucher(world, vid).state is VoucherState.REDEEMED
        assert assert_books(world, completed=1).balances[PAYABLE] == FACE_FEN


# -- two-phase: lock, then confirm / void / time out ----------------------------------


def test_lock_then_confirm(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1) as world:
        vid = claim(world, "u0")
        rid = redeem(world, vid, order("u0", "o-1"), lock=True)
        assert voucher(world, vid).state is VoucherState.LOCKED
        assert redemption_row(world, rid).status == "locked"
        # Authorised, not captured: no money moved, nothing to tell the centre yet.
        check = assert_books(world)
        assert check.balances.get(PAYABLE, 0) == 0
        assert check.balances["outstanding"] == FACE_FEN
        # The person cannot spend it again meanwhile.
        assert refused(partial(redeem, world, vid, order("u0", "o-2"))) == "voucher_locked"

        moved, state = redemption.confirm(world.rt, rid, acquirer_id=ACQUIRER)
        assert (moved.status, state) == ("redeemed", VoucherState.REDEEMED)
        assert voucher(world, vid).state is VoucherState.REDEEMED
        assert refused(partial(redemption.confirm, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "redemption_state"
        )
        check = assert_books(world, completed=1)
        assert check.balances[PAYABLE] == FACE_FEN
        assert check.balances.get("outstanding", 0) == 0


def test_lock_void_then_redeem_again(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1) as world:
        vid = claim(world, "u0")
        rid = redeem(world, vid, order("u0", "o-1"), lock=True)

        moved, state = redemption.void(world.rt, rid, acquirer_id=ACQUIRER)
        assert (moved.status, state) == ("voided", VoucherState.ISSUED)
        assert voucher(world, vid).state is VoucherState.ISSUED
        assert voucher(world, vid).redemption_id is None
        assert refused(partial(redemption.void, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "redemption_state"
        )
        assert refused(partial(redemption.confirm, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "redemption_state"
        )
        assert_books(world)

        again = redeem(world, vid, order("u0", "o-2"))
        assert redemption_row(world, again).status == "redeemed"
        assert voucher(world, vid).state is VoucherState.REDEEMED
        assert assert_books(world, completed=1).balances[PAYABLE] == FACE_FEN


def test_lock_times_out_and_the_voucher_comes_back(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1) as world:
        timeout = timedelta(seconds=world.rt.settings.lock_timeout_s)
        vid = claim(world, "u0")
        rid = redeem(world, vid, order("u0", "o-1"), lock=True)

        world.clock.advance(timeout - timedelta(seconds=1))
        assert sweep(world.rt).locks_timed_out == 0
        assert voucher(world, vid).state is VoucherState.LOCKED

        world.clock.advance(timedelta(seconds=1))
        # Past the lock's end but not yet swept: confirm is refused all the same.
        assert refused(partial(redemption.confirm, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "lock_expired"
        )
        report = sweep(world.rt)
        assert (report.locks_timed_out, report.expired) == (1, 0)
        assert voucher(world, vid).state is VoucherState.ISSUED
        assert redemption_row(world, rid).status == "lock_expired"
        assert refused(partial(redemption.confirm, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "lock_expired"
        )
        assert refused(partial(redemption.void, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "lock_expired"
        )
        assert sweep(world.rt).locks_timed_out == 0
        assert_books(world)

        # Usable again.
        redeem(world, vid, order("u0", "o-2"))
        assert voucher(world, vid).state is VoucherState.REDEEMED
        assert assert_books(world, completed=1).balances[PAYABLE] == FACE_FEN


# -- reversal and refund --------------------------------------------------------------


def test_reverse_makes_the_voucher_usable_again(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1) as world:
        vid = claim(world, "u0")
        rid = redeem(world, vid, order("u0", "o-1"))
        assert assert_books(world, completed=1).balances[PAYABLE] == FACE_FEN

        moved, state = redemption.reverse(world.rt, rid, acquirer_id=ACQUIRER)
        assert (moved.status, state) == ("reversed", VoucherState.ISSUED)
        assert voucher(world, vid).state is VoucherState.ISSUED
        check = assert_books(world, completed=1, reversed_=1)
        assert check.balances.get(PAYABLE, 0) == 0
        assert check.balances["outstanding"] == FACE_FEN
        assert refused(partial(redemption.reverse, world.rt, rid, acquirer_id=ACQUIRER)) == (
            "redemption_state"
        )

        redeem(world, vid, order("u0", "o-2"))
        assert voucher(world, vid).state is VoucherState.REDEEMED
        assert assert_books(world, completed=2, reversed_=1).balances[PAYABLE] == FACE_FEN


def test_reverse_after_the_window_is_refused(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1) as world:
        vid = claim(world, "u0")
        rid = redeem(world, vid, order("u0", "o-1"))
        world.clock.advance(timedelta(seconds=world.rt.settings.reversal_window_s + 1))

        code = refused(partial(redemption.reverse, world.rt, rid, acquirer_id=ACQUIRER))
        assert code == "reversal_window_passed"
        assert redemption_row(world, rid).status == "redeemed"
        assert voucher(world, vid).state is VoucherState.REDEEMED
        assert assert_books(world, completed=1).balances[PAYABLE] == FACE_FEN


def test_refunds(stack: Stack, tmp_path: Path) -> None:
    """Whole refunds only; restored while valid, else void."""
    with dining(stack, tmp_path, people=3) as world:
        restored, partial_refund, late = (claim(world, f"u{n}") for n in range(3))
        r_restored = redeem(world, restored, order("u0", "o-0"))
        r_partial = redeem(world, partial_refund, order("u1", "o-1"))
        r_late = redeem(world, late, order("u2", "o-2"))
        before = assert_books(world, completed=3)
        assert before.balances[PAYABLE] == 3 * FACE_FEN

        # A partial refund is refused and changes nothing.
        code = refused(
            partial(
                redemption.refund,
                world.rt,
                r_partial,
                acquirer_id=ACQUIRER,
                refund_amount_fen=ORDER_FEN - 1,
            )
        )
        assert code == "partial_refund_unsupported"
        assert redemption_row(world, r_partial).status == "redeemed"
        assert voucher(world, partial_refund).state is VoucherState.REDEEMED
        after = assert_books(world, completed=3)
        assert (after.balances, after.committed_fen) == (before.balances, before.committed_fen)

        # Refunded while still valid: the voucher comes back (restore_if_valid).
        moved, state = redemption.refund(
            world.rt, r_restored, acquirer_id=ACQUIRER, refund_amount_fen=ORDER_FEN
        )
        assert (moved.status, state) == ("refunded", VoucherState.ISSUED)
        assert voucher(world, restored).state is VoucherState.ISSUED
        check = assert_books(world, completed=3, refunded=1)
        assert check.balances[PAYABLE] == 2 * FACE_FEN
        assert check.balances["outstanding"] == FACE_FEN
        assert check.committed_fen == before.committed_fen
        assert (
            refused(
                partial(
                    redemption.refund,
                    world.rt,
                    r_restored,
                    acquirer_id=ACQUIRER,
                    refund_amount_fen=ORDER_FEN,
                )
            )
            == "redemption_state"
        )

        # Refunded after the voucher's validity: void, and its discount returns.
        world.clock.set(voucher(world, late).valid_until)
        moved, state = redemption.refund(
            world.rt, r_late, acquirer_id=ACQUIRER, refund_amount_fen=ORDER_FEN
        )
        assert (moved.status, state) == ("refunded", VoucherState.VOID)
        assert voucher(world, late).state is VoucherState.VOID
        check = assert_books(world, completed=3, refunded=2)
        assert check.balances[PAYABLE] == FACE_FEN
        assert check.committed_fen == before.committed_fen - FACE_FEN
        # The restored voucher is past its validity too now: the sweep expires it.
        assert sweep(world.rt).expired == 1
        assert voucher(world, restored).state is VoucherState.EXPIRED
        check = assert_books(world, completed=3, refunded=2)
        assert check.committed_fen == before.committed_fen - 2 * FACE_FEN
        assert check.balances.get("outstanding", 0) == 0


def test_refund_with_always_void_policy(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=1, refund_policy="always_void") as world:
        vid = claim(world, "u0")
        rid = redeem(world, vid, order("u0", "o-1"))
        before = assert_books(world, completed=1)

        moved, state = redemption.refund(
            world.rt, rid, acquirer_id=ACQUIRER, refund_amount_fen=ORDER_FEN
        )
        assert (moved.status, state) == ("refunded", VoucherState.VOID)
        assert voucher(world, vid).state is VoucherState.VOID
        assert refused(partial(redeem, world, vid, order("u0", "o-2"))) == "voucher_void"
        check = assert_books(world, completed=1, refunded=1)
        assert check.balances.get(PAYABLE, 0) == 0
        assert check.committed_fen == before.committed_fen - FACE_FEN


# -- expiry ----------------------------------------------------------------------------


def test_expiry_returns_the_face_to_the_budget(stack: Stack, tmp_path: Path) -> None:
    with dining(stack, tmp_path, people=4) as world:
        untouched, spent, locked, late = (claim(world, f"u{n}") for n in range(4))
        redeem(world, spent, order("u1", "o-1"))
        redeem(world, locked, order("u2", "o-2"), lock=True)
        before = assert_books(world, completed=1)
        assert before.committed_fen == 4 * FACE_FEN

        world.clock.set(voucher(world, untouched).valid_until)
        # Past its validity but not yet swept: refused all the same.
        assert refused(partial(redeem, world, late, order("u3", "o-3"))) == "voucher_expired"
        assert refused(partial(redeem, world, late, order("u3", "o-4"), lock=True)) == (
            "voucher_expired"
        )
        assert voucher(world, late).state is VoucherState.ISSUED
        assert_books(world, completed=1)

        report = sweep(world.rt)
        # The lock timed out first, then its voucher expired with the two untouched ones.
        assert (report.locks_timed_out, report.expired) == (1, 3)
        for vid in (untouched, locked, late):
            assert voucher(world, vid).state is VoucherState.EXPIRED
        assert voucher(world, spent).state is VoucherState.REDEEMED
        check = assert_books(world, completed=1)
        assert check.committed_fen == before.committed_fen - 3 * FACE_FEN
        assert check.balances.get("outstanding", 0) == 0
        assert check.balances["budget"] == check.budget_fen - check.committed_fen
        assert check.vouchers_by_state == {"expired": 3, "redeemed": 1}
        assert refused(partial(redeem, world, late, order("u3", "o-5"))) == "voucher_expired"
        assert sweep(world.rt) == type(report)(expired=0, locks_timed_out=0)


# -- percentage (trade-in) --------------------------------------------------------------


def tradein_config(*, budget_fen: int, stock: int) -> CampaignConfig:
    return CampaignConfig.model_validate(
        {
            "id": TRADE_IN,
            "name": "以旧换新 家电 (test)",
            "issuer": "上海市商务委员会",
            "category": "appliances",
            "budget_fen": budget_fen,
            "channels": ["wechat"],
            "templates": [
                {
                    "id": TRADE_IN_TEMPLATE,
                    "kind": "percentage",
                    "basis_points": 1500,
                    "cap_fen": TRADE_IN_CAP_FEN,
                }
            ],
            "validity": {"days_from_issue": 30},
            "scope": {"mcc": ["5722"], "modes": ["in_store", "online"]},
            "eligibility": {"regions": ["310000"], "check": "location"},
            "rounds": [
                {
                    "id": "r1",
                    "release_at": T0,
                    "ends_at": T0 + timedelta(days=30),
                    "stock": {"wechat": {TRADE_IN_TEMPLATE: stock}},
                }
            ],
        }
    )


@contextmanager
def trade_in(stack: Stack, tmp_path: Path, *, people: int, budget_fen: int) -> Iterator[World]:
    with stack.world(tmp_path) as world:
        for n in range(people):
            world.register(n)
        world.open_campaign(tradein_config(budget_fen=budget_fen, stock=10), merchants=False)
        admin.import_merchants(
            world.rt,
            "merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns\n"
            f"{TRADE_IN_MERCHANT},徐汇家电城,5722,310104,in_store;online,{ACQUIRER},{TRADE_IN}\n",
            actor="alice",
        )
        yield world


def tradein_order(user: str, order_id: str, amount_fen: int) -> redemption.RedeemOrder:
    return order(user, order_id, amount_fen=amount_fen, merchant=TRADE_IN_MERCHANT)


def test_percentage_returns_the_unused_face_to_the_budget(stack: Stack, tmp_path: Path) -> None:
    budget = 10 * TRADE_IN_CAP_FEN
    with trade_in(stack, tmp_path, people=2, budget_fen=budget) as world:
        small = claim(world, "u0", campaign=TRADE_IN, template=TRADE_IN_TEMPLATE)
        big = claim(world, "u1", campaign=TRADE_IN, template=TRADE_IN_TEMPLATE)
        books = partial(assert_books, world, campaign=TRADE_IN)
        assert books().committed_fen == 2 * TRADE_IN_CAP_FEN

        # A 6,000-yuan fridge: 15% is 900 yuan, under the cap.
        [quote] = redemption.quote(world.rt, tradein_order("u0", "q", 600_000))
        assert (quote.voucher.id, quote.discount_fen, quote.pay_fen) == (small, 90_000, 510_000)
        r_small = redeem(world, small, tradein_order("u0", "o-0", 600_000))
        row = redemption_row(world, r_small)
        assert (row.discount_fen, row.pay_fen) == (90_000, 510_000)
        check = books(completed=1)
        # The 1,100 yuan the voucher did not use are free for others again.
        assert check.committed_fen == TRADE_IN_CAP_FEN + 90_000
        assert check.balances[PAYABLE] == 90_000
        assert check.balances["outstanding"] == TRADE_IN_CAP_FEN
        assert check.balances["budget"] == budget - check.committed_fen

        # A 20,000-yuan one: 15% would be 3,000 yuan; the cap gives 2,000.
        r_big = redeem(world, big, tradein_order("u1", "o-1", 2_000_000))
        assert redemption_row(world, r_big).discount_fen == TRADE_IN_CAP_FEN
        check = books(completed=2)
        assert check.committed_fen == TRADE_IN_CAP_FEN + 90_000
        assert check.balances[PAYABLE] == TRADE_IN_CAP_FEN + 90_000
        assert check.balances.get("outstanding", 0) == 0

        # Refunded while valid: the whole face is committed again for the voucher.
        redemption.refund(world.rt, r_small, acquirer_id=ACQUIRER, refund_amount_fen=600_000)
        assert voucher(world, small).state is VoucherState.ISSUED
        check = books(completed=2, refunded=1)
        assert check.committed_fen == 2 * TRADE_IN_CAP_FEN
        assert check.balances[PAYABLE] == TRADE_IN_CAP_FEN
        assert check.balances["outstanding"] == TRADE_IN_CAP_FEN


def test_refund_voids_when_the_budget_cannot_restore_the_voucher(
    stack: Stack, tmp_path: Path
) -> None:
    """The goods came back and the merchant refunded the buyer: the platform must
    take the refund. If the voucher cannot be given back (its unused face was
    committed to someone else's voucher since), it is voided instead of the
    refund being refused with budget_exhausted (which would leave the acquirer
    owed the discount of a refunded order)."""
    budget = TRADE_IN_CAP_FEN + 150_000  # one voucher, and 1,500 yuan to spare
    with trade_in(stack, tmp_path, people=2, budget_fen=budget) as world:
        books = partial(assert_books, world, campaign=TRADE_IN)
        first = claim(world, "u0", campaign=TRADE_IN, template=TRADE_IN_TEMPLATE)
        rid = redeem(world, first, tradein_order("u0", "o-0", 600_000))  # 900 yuan used
        # The 1,100 yuan returned let a second person claim.
        claim(world, "u1", campaign=TRADE_IN, template=TRADE_IN_TEMPLATE)
        assert books(completed=1).committed_fen == TRADE_IN_CAP_FEN + 90_000

        moved, state = redemption.refund(
            world.rt, rid, acquirer_id=ACQUIRER, refund_amount_fen=600_000
        )

        assert (moved.status, state) == ("refunded", VoucherState.VOID)
        assert voucher(world, first).state is VoucherState.VOID
        check = books(completed=1, refunded=1)
        assert check.balances.get(PAYABLE, 0) == 0
        assert check.committed_fen == TRADE_IN_CAP_FEN  # only the second voucher
        assert check.committed_fen <= check.budget_fen
