"""One-step redemptions batched by the writer, on both stacks, under real
concurrency: each voucher spent once, each request its own answer, the books
balanced, and a retry replaying the stored answer."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from lequan.adapters.sql import tables
from lequan.domain.errors import LequanError
from lequan.ports import UnstorableValue
from lequan.services.idempotency import Answer, Idempotency, request_hash
from lequan.services.invariants import check_campaign
from lequan.services.redemption import RedeemOrder
from lequan.services.redemption_batches import OneStep
from tests.factories import ACQUIRER, World, dining_config
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    TEMPLATE,
    claim_one,
    register_many,
    voucher_id,
)

Outcome = tuple[Answer, bool] | BaseException


def one_step(world: World, user: str, voucher: str, key: str, **order: object) -> OneStep:
    fields: dict[str, object] = {
        "acquirer_id": ACQUIRER,
        "merchant_id": "m-cafe-001",
        "channel_id": "wechat",
        "channel_user_id": user,
        "order_id": f"order-{key}",
        "order_amount_fen": 32000,
        "mode": "in_store",
        **order,
    }
    return OneStep(
        voucher_id=voucher,
        order=RedeemOrder(**fields),  # type: ignore[arg-type]  # a test's loose fields
        product=None,
        key=Idempotency(ACQUIRER, key, request_hash("redeem", key, voucher, user)),
    )


def outcome_of(future: Future[tuple[Answer, bool]]) -> Outcome:
    try:
        return future.result(timeout=60)
    except BaseException as error:
        return error


def code(outcome: Outcome) -> str:
    if isinstance(outcome, LequanError):
        return outcome.code
    assert not isinstance(outcome, BaseException), outcome
    answer, replayed = outcome
    return "replayed" if replayed else str(answer.body["status"])


def redeem_together(world: World, items: list[OneStep]) -> list[Outcome]:
    """Submit every item from its own thread at once; their outcomes, in order."""
    barrier = threading.Barrier(len(items))
    outcomes: list[Outcome | None] = [None] * len(items)

    def run(n: int) -> Callable[[], None]:
        def work() -> None:
            barrier.wait(timeout=30)
            try:
                outcomes[n] = outcome_of(world.platform.redemptions.submit(items[n]))
            except LequanError as error:  # refused at the door (in flight, overloaded)
                outcomes[n] = error

        return work

    threads = [threading.Thread(target=run(n)) for n in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def count_rows(world: World, table: sa.Table) -> int:
    with world.rt.store.unit_of_work(readonly=True) as uow:
        return int(
            uow.connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        )


def test_a_crowd_of_one_step_redemptions_spends_each_voucher_once(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.world(tmp_path, redeem_batch_wait_ms=20) as world:
        users = register_many(world, range(40))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 40}}))
        vouchers = [voucher_id(claim_one(world, u, f"c-{u}")) for u in users]
        # Each voucher twice (two tills, two keys), plus one stranger's attempt.
        items = [one_step(world, u, v, f"a-{u}") for u, v in zip(users, vouchers, strict=True)]
        items += [one_step(world, u, v, f"b-{u}") for u, v in zip(users, vouchers, strict=True)]
        items.append(one_step(world, users[1], vouchers[0], "stranger"))

        outcomes = redeem_together(world, items)

        codes = Counter(code(o) for o in outcomes)
        assert codes["redeemed"] == 40, codes
        assert codes["already_redeemed"] == 40, codes
        assert code(outcomes[-1]) in ("voucher_not_found", "already_redeemed")
        for n in range(40):  # of each voucher's two requests, exactly one spent it
            assert sorted([code(outcomes[n]), code(outcomes[40 + n])]) == [
                "already_redeemed",
                "redeemed",
            ]
        assert count_rows(world, tables.redemptions) == 40
        assert count_rows(world, tables.outbox) == 40
        check = check_campaign(world.rt, CAMPAIGN)
        assert check.ok, check.problems

        # A retry with a winning key replays its answer; nothing new is written.
        winner = next(i for i, o in enumerate(outcomes) if code(o) == "redeemed")
        again = items[winner]
        again = one_step(world, again.order.channel_user_id, again.voucher_id, again.key.key)
        retry = outcome_of(world.platform.redemptions.submit(again))
        first = outcomes[winner]
        assert not isinstance(retry, BaseException)
        assert not isinstance(first, BaseException)
        assert retry[1] is True
        assert retry[0].body == first[0].body
        assert count_rows(world, tables.redemptions) == 40


def test_a_refused_request_does_not_sink_its_batch(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path, redeem_batch_wait_ms=50) as world:
        users = register_many(world, range(6))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 6}}))
        vouchers = [voucher_id(claim_one(world, u, f"c-{u}")) for u in users]
        items = [
            one_step(world, users[0], vouchers[0], "ok-0"),
            one_step(world, users[1], vouchers[1], "small", order_amount_fen=100),  # below 300
            one_step(world, users[2], vouchers[2], "elsewhere", merchant_id="m-nowhere"),
            one_step(world, users[3], vouchers[3], "ok-3"),
            one_step(world, users[4], "v-no-such-voucher", "ghost"),
            one_step(world, users[5], vouchers[5], "ok-5"),
        ]

        outcomes = redeem_together(world, items)

        codes = [code(o) for o in outcomes]
        assert codes[0] == codes[3] == codes[5] == "redeemed"
        assert codes[2] == "merchant_not_found"
        assert codes[4] == "voucher_not_found"
        assert codes[1] not in ("redeemed", "replayed")
        assert count_rows(world, tables.redemptions) == 3
        check = check_campaign(world.rt, CAMPAIGN)
        assert check.ok, check.problems


def test_a_request_the_store_cannot_take_does_not_sink_its_batch(
    stack: Stack, tmp_path: Path
) -> None:
    """A NUL in a voucher id gets past no HTTP validation, but the writer is a
    service: PostgreSQL refuses the whole batch's query (DataError); the batch is
    retried one request at a time, so only that request fails."""
    with stack.world(tmp_path, redeem_batch_wait_ms=50) as world:
        users = register_many(world, range(3))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 3}}))
        vouchers = [voucher_id(claim_one(world, u, f"c-{u}")) for u in users]
        items = [
            one_step(world, users[0], vouchers[0], "ok-0"),
            one_step(world, users[1], "v\x00bad", "bad"),
            one_step(world, users[2], vouchers[2], "ok-2"),
        ]

        outcomes = redeem_together(world, items)

        assert code(outcomes[0]) == code(outcomes[2]) == "redeemed"
        assert isinstance(outcomes[1], (LequanError, UnstorableValue)), outcomes[1]
        assert count_rows(world, tables.redemptions) == 2
        check = check_campaign(world.rt, CAMPAIGN)
        assert check.ok, check.problems


def test_a_row_the_store_cannot_write_does_not_sink_a_large_batch(
    stack: Stack, tmp_path: Path
) -> None:
    """A batch of twelve, written in one statement per table on PostgreSQL: one
    redemption whose order id is longer than its column fails the write of the whole
    batch there (never cut to fit); the batch is retried one request at a time, so
    only that request fails."""
    with stack.world(tmp_path, redeem_batch_wait_ms=200) as world:
        users = register_many(world, range(12))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 12}}))
        vouchers = [voucher_id(claim_one(world, u, f"c-{u}")) for u in users]
        items = [
            one_step(world, user, voucher, f"r-{n}", **({"order_id": "o" * 65} if n == 4 else {}))
            for n, (user, voucher) in enumerate(zip(users, vouchers, strict=True))
        ]

        outcomes = redeem_together(world, items)

        assert [code(o) for n, o in enumerate(outcomes) if n != 4] == ["redeemed"] * 11
        postgres = world.rt.store.engine.dialect.name == "postgresql"
        if postgres:  # SQLite keeps a string of any length
            assert isinstance(outcomes[4], (LequanError, UnstorableValue)), outcomes[4]
        assert count_rows(world, tables.redemptions) == (11 if postgres else 12)
        check = check_campaign(world.rt, CAMPAIGN)
        assert check.ok, check.problems


def test_a_batch_reads_its_answers_vouchers_and_people_and_holds_the_vouchers(
    stack: Stack, tmp_path: Path
) -> None:
    """``redemption_reads`` (one pipeline on PostgreSQL) finds the batch's stored
    answers, vouchers (as ``get_voucher`` reads them) and people, nothing for
    unknowns, and keeps the vouchers locked until commit."""
    with stack.world(tmp_path) as world:
        users = register_many(world, range(3))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 3}}))
        vouchers = [voucher_id(claim_one(world, u, f"c-{u}")) for u in users]
        redeemed = outcome_of(
            world.platform.redemptions.submit(one_step(world, users[0], vouchers[0], "r-0"))
        )
        assert code(redeemed) == "redeemed"
        store = world.rt.store

        with store.unit_of_work() as uow:
            reads = uow.vouchers.redemption_reads(
                [(ACQUIRER, "r-0"), (ACQUIRER, "r-new"), ("acq-other", "r-0")],
                [*vouchers, "v-no-such-voucher"],
                [("wechat", u) for u in users] + [("wechat", "nobody"), ("alipay", users[0])],
            )
            # Only the acquirer's own key: another app's key of the same name is not its.
            assert set(reads.answers) == {(ACQUIRER, "r-0")}
            assert reads.answers[(ACQUIRER, "r-0")][1] == 201
            assert set(reads.vouchers) == set(vouchers)
            read = reads.vouchers[vouchers[0]]
            assert read == uow.vouchers.get_voucher(vouchers[0])
            assert read.valid_from.utcoffset() == read.issued_at.utcoffset() == timedelta(0)
            assert reads.vouchers[vouchers[0]].state.value == "redeemed"
            assert set(reads.persons) == {("wechat", u) for u in users}
            if stack.database_url.startswith("postgresql"):
                # The vouchers are held: another writer cannot take one until commit.
                with store.engine.connect() as other, pytest.raises(sa.exc.OperationalError):
                    other.exec_driver_sql(
                        "SELECT id FROM vouchers WHERE id = %(id)s FOR UPDATE NOWAIT",
                        {"id": vouchers[1]},
                    )
            uow.commit()
