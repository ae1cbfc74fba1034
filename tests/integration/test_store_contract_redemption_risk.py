"""The store contract, continued: redemption-time risk (migration 0014) on SQLite,
PostgreSQL and the in-memory store alike.

What the redemption rules rely on: a remembered redemption round-trips, is completed
once (a lock confirmed) and refunded once with how soon; a merchant's recent
redemptions and quick refunds are counted since an instant; the recent redemptions
come newest first within their limit; a redemption is flagged by one review only,
however many sweeps race for it; a hold moves conditionally and the campaign's held
total follows it; SKU prices are set again by a second import.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from lequan.ports import DuplicateKey, Store
from lequan.rows import PayableHoldRow, RecentRedemption, RedemptionFactRow, SkuPriceRow
from tests.integration.test_store_contract import (
    T0,
    THREAD_JOIN_TIMEOUT_S,
    committed,
    in_own_transaction,
)


def fact(
    n: int,
    *,
    merchant: str = "m-1",
    person: str | None = None,
    at_s: int | None = 0,
    payer: str | None = "pay-00000001",
) -> RedemptionFactRow:
    return RedemptionFactRow(
        redemption_id=f"r{n:04d}",
        campaign_id="sh-dining-2024",
        merchant_id=merchant,
        person_id=person or f"p{n}",
        voucher_id=f"v{n:04d}",
        payer_id=payer,
        terminal_id="t-1" if payer else None,
        order_amount_fen=30_001,
        created_at=T0,
        redeemed_at=None if at_s is None else T0 + timedelta(seconds=at_s),
    )


def remember(store: Store, *rows: RedemptionFactRow) -> None:
    with store.unit_of_work() as uow:
        with uow.pipeline():
            uow.redemption_risk.add_facts(list(rows))
        uow.commit()


def test_a_remembered_redemption_round_trips(store: Store) -> None:
    remember(store, fact(1), fact(2, payer=None))
    with committed(store) as uow:
        assert uow.redemption_risk.get_fact("r0001") == fact(1)
        assert uow.redemption_risk.get_fact("r0002") == fact(2, payer=None)
        assert uow.redemption_risk.get_fact("r9999") is None
    with pytest.raises(DuplicateKey):
        remember(store, fact(1))


def test_a_lock_is_completed_once(store: Store) -> None:
    remember(store, fact(1, at_s=None), fact(2))
    done = in_own_transaction(
        store, lambda uow: uow.redemption_risk.complete_fact("r0001", now=T0 + timedelta(hours=1))
    )
    assert done == fact(1, at_s=3600)
    assert (
        in_own_transaction(store, lambda uow: uow.redemption_risk.complete_fact("r0001", now=T0))
        is None
    )
    # A one-step redemption is complete from the start; none remembered: nothing.
    assert (
        in_own_transaction(store, lambda uow: uow.redemption_risk.complete_fact("r0002", now=T0))
        is None
    )
    assert (
        in_own_transaction(store, lambda uow: uow.redemption_risk.complete_fact("r9", now=T0))
        is None
    )


def test_refunds_are_counted_by_how_soon(store: Store) -> None:
    remember(
        store,
        fact(1, at_s=0),
        fact(2, at_s=10),
        fact(3, at_s=20),
        fact(4, at_s=30, merchant="m-2"),
        fact(5, at_s=None),
    )

    def refund(n: int, after_s: int) -> bool:
        return bool(
            in_own_transaction(
                store,
                lambda uow: uow.redemption_risk.refund_fact(
                    f"r{n:04d}", now=T0 + timedelta(seconds=100), refund_after_s=after_s
                ),
            )
        )

    assert refund(1, 100)
    assert refund(2, 90)
    assert refund(4, 70)
    assert not refund(1, 100)  # once
    assert not refund(5, 1)  # a lock is not refunded
    assert not refund(9, 1)
    with committed(store) as uow:
        figures = uow.redemption_risk.merchant_refunds
        assert figures("m-1", since=T0, within_s=90) == (3, 1)
        assert figures("m-1", since=T0, within_s=100) == (3, 2)
        assert figures("m-1", since=T0 + timedelta(seconds=10), within_s=600) == (2, 1)
        assert figures("m-2", since=T0, within_s=600) == (1, 1)
        assert figures("m-3", since=T0, within_s=600) == (0, 0)
        payer = uow.redemption_risk.payer_refunds
        # Every fact here is paid by pay-00000001 but r0005, which was never completed.
        assert payer("pay-00000001", since=T0, within_s=90) == 2
        assert payer("pay-00000001", since=T0, within_s=100) == 3
        assert payer("pay-00000001", since=T0 + timedelta(seconds=10), within_s=600) == 2
        assert payer("pay-00000002", since=T0, within_s=600) == 0
        assert uow.redemption_risk.get_fact("r0001") == replace(
            fact(1), refunded_at=T0 + timedelta(seconds=100), refund_after_s=100
        )


def test_recent_redemptions_newest_first_within_the_limit(store: Store) -> None:
    remember(
        store,
        fact(1, at_s=0, person="a"),
        fact(2, at_s=20, person="b", merchant="m-2"),
        fact(3, at_s=10, person="c"),
        fact(4, at_s=None, person="d"),
    )
    in_own_transaction(store, lambda uow: uow.redemption_risk.flag_facts([("r0003", "rv1")]))
    with committed(store) as uow:
        assert uow.redemption_risk.recent(since=T0, limit=10) == [
            RecentRedemption("r0002", "b", "m-2", False),
            RecentRedemption("r0003", "c", "m-1", True),
            RecentRedemption("r0001", "a", "m-1", False),
        ]
        assert [r.redemption_id for r in uow.redemption_risk.recent(since=T0, limit=2)] == [
            "r0002",
            "r0003",
        ]
        later = uow.redemption_risk.recent(since=T0 + timedelta(seconds=10), limit=10)
        assert [r.redemption_id for r in later] == ["r0002", "r0003"]


def test_a_payers_redemptions_newest_first_within_the_limit(store: Store) -> None:
    other = "pay-00000002"
    remember(
        store,
        fact(1, at_s=0),
        fact(2, at_s=20, payer=other),
        fact(3, at_s=10, merchant="m-2"),
        fact(4, at_s=None),
        fact(5, at_s=30, payer=None),
        fact(6, at_s=5),
    )
    in_own_transaction(store, lambda uow: uow.redemption_risk.flag_facts([("r0006", "rv1")]))
    with committed(store) as uow:
        mine = uow.redemption_risk.payer_redemptions
        assert mine("pay-00000001", since=T0, limit=10) == [
            RecentRedemption("r0003", "p3", "m-2", False),
            RecentRedemption("r0006", "p6", "m-1", True),
            RecentRedemption("r0001", "p1", "m-1", False),
        ]
        assert [r.redemption_id for r in mine("pay-00000001", since=T0, limit=1)] == ["r0003"]
        late = mine("pay-00000001", since=T0 + timedelta(seconds=6), limit=10)
        assert [r.redemption_id for r in late] == ["r0003"]
        assert [r.redemption_id for r in mine(other, since=T0, limit=10)] == ["r0002"]
        assert mine("pay-unknown", since=T0, limit=10) == []


def test_a_redemption_is_flagged_by_one_review(store: Store) -> None:
    remember(store, fact(1), fact(2))
    first = in_own_transaction(
        store, lambda uow: uow.redemption_risk.flag_facts([("r0001", "rv1"), ("r9999", "rv2")])
    )
    assert first == {"r0001"}
    again = in_own_transaction(
        store, lambda uow: uow.redemption_risk.flag_facts([("r0001", "rv3"), ("r0002", "rv3")])
    )
    assert again == {"r0002"}
    with committed(store) as uow:
        got = uow.redemption_risk.get_fact("r0001")
        assert got is not None
        assert got.review_id == "rv1"


def test_sweeps_racing_flag_each_redemption_once(store: Store) -> None:
    remember(store, *[fact(n) for n in range(1, 21)])
    flags = [(f"r{n:04d}", "") for n in range(1, 21)]
    won: list[set[str]] = []
    barrier = threading.Barrier(2)

    def sweep(review_id: str) -> None:
        barrier.wait(timeout=THREAD_JOIN_TIMEOUT_S)
        for _ in range(5):
            try:
                won.append(
                    in_own_transaction(
                        store,
                        lambda uow: uow.redemption_risk.flag_facts(
                            [(r, review_id) for r, _ in flags]
                        ),
                    )
                )
                return
            except Exception:  # SQLite's busy writer, retried as a sweep would be
                continue

    threads = [threading.Thread(target=sweep, args=(f"rv{n}",)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_TIMEOUT_S)
    assert len(won) == 2
    assert won[0] | won[1] == {r for r, _ in flags}
    assert not won[0] & won[1]


def hold(status: str = "held", amount_fen: int = 9000) -> PayableHoldRow:
    return PayableHoldRow(
        redemption_id="r0001",
        campaign_id="sh-dining-2024",
        payable="payable:acq-1",
        amount_fen=amount_fen,
        status=status,
        review_id="rv1",
        created_at=T0,
        updated_at=T0,
    )


def test_a_hold_moves_once_and_the_campaign_total_follows(store: Store) -> None:
    def add(row: PayableHoldRow) -> None:
        with store.unit_of_work() as uow:
            with uow.pipeline():
                uow.redemption_risk.add_holds([row])
            uow.commit()

    add(hold())
    with pytest.raises(DuplicateKey):
        add(hold())
    with committed(store) as uow:
        assert uow.redemption_risk.get_hold("r0001") == hold()
        assert uow.redemption_risk.get_hold("r0002") is None
        assert uow.redemption_risk.held_fen("sh-dining-2024") == 9000
        assert uow.redemption_risk.held_fen("other") == 0
    later = T0 + timedelta(minutes=5)
    assert in_own_transaction(
        store,
        lambda uow: uow.redemption_risk.move_hold(
            "r0001", expected="held", status="released", now=later, review_id="rv2"
        ),
    )
    assert not in_own_transaction(
        store,
        lambda uow: uow.redemption_risk.move_hold(
            "r0001", expected="held", status="clawed_back", now=later
        ),
    )
    assert not in_own_transaction(
        store,
        lambda uow: uow.redemption_risk.move_hold(
            "r0002", expected="held", status="released", now=later
        ),
    )
    with committed(store) as uow:
        moved = uow.redemption_risk.get_hold("r0001")
        assert moved is not None
        assert (moved.status, moved.review_id, moved.updated_at) == ("released", "rv2", later)
        assert uow.redemption_risk.held_fen("sh-dining-2024") == 0


def test_sku_prices_are_set_again_by_a_second_import(store: Store) -> None:
    def price(sku: str, fen: int, by: str = "alice") -> SkuPriceRow:
        return SkuPriceRow(sku=sku, baseline_price_fen=fen, updated_by=by, updated_at=T0)

    in_own_transaction(
        store,
        lambda uow: uow.redemption_risk.upsert_sku_prices([price("A-1", 100), price("B-2", 200)]),
    )
    in_own_transaction(
        store,
        lambda uow: uow.redemption_risk.upsert_sku_prices([price("B-2", 250, "bob")]),
    )
    with committed(store) as uow:
        assert uow.redemption_risk.sku_prices(["A-1", "B-2", "C-3"]) == {"A-1": 100, "B-2": 250}
        assert uow.redemption_risk.sku_prices([]) == {}
        listed = uow.redemption_risk.list_sku_prices(after=None, limit=10)
        assert [(p.sku, p.baseline_price_fen, p.updated_by) for p in listed] == [
            ("A-1", 100, "alice"),
            ("B-2", 250, "bob"),
        ]
        assert [p.sku for p in uow.redemption_risk.list_sku_prices(after="A-1", limit=10)] == [
            "B-2"
        ]
        assert len(uow.redemption_risk.list_sku_prices(after=None, limit=1)) == 1
