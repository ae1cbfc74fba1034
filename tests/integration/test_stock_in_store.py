"""The store keeps every claim within its stock, whatever the gate believed.

The gate is a cache: a Redis failover to a replica that had not received the
last decrements, a snapshot restored, or two processes each keeping a gate
of their own, and it hands out a stock it already gave. Each claim's
transaction counts its voucher out of ``stocks.issued`` by a conditional
update (a CHECK holds it within ``initial``), so the store sells a stock
once: exactly what was left is issued, the rest hear ``sold_out``, and the
books balance. On both stacks, under real concurrency (threads, and two
platforms writing to one store).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa

from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.sql import migrate
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.engine import create_engine
from lequan.bootstrap import build_runtime, start_platform
from lequan.config import Settings
from lequan.services.campaigns import pool_key
from lequan.services.claim_answers import ClaimResult
from lequan.services.invariants import check_campaign
from tests.factories import World, dining_config, make_world
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    TEMPLATE,
    assert_books,
    claim_one,
    claim_request,
    concurrently,
    register_many,
    stored_vouchers,
    until_decided,
    voucher_id,
)

POOL = pool_key(CAMPAIGN, "r1", "wechat")


def counted(world: World) -> int:
    """What the store counted out of the wechat stock of the template."""
    with world.rt.store.unit_of_work(readonly=True) as uow:
        issued: int = uow.campaigns.stock_issued(CAMPAIGN)[("r1", "wechat", TEMPLATE)]
    return issued


def test_a_gate_that_forgot_its_decrements_sells_only_what_is_left(
    stack: Stack, tmp_path: Path
) -> None:
    stock, early, late = 30, 20, 40
    with stack.world(tmp_path) as world:
        users = register_many(world, range(early + late))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        first = until_decided(
            world,
            users[:early],
            concurrently([partial(claim_one, world, u, f"a-{u}") for u in users[:early]]),
            "a",
        )
        assert Counter(r.outcome for r in first) == {"issued": early}
        assert counted(world) == early

        # The gate goes back to before the sale: full stock, nobody counted.
        world.rt.gate.reset_pool(POOL, stock={TEMPLATE: stock}, claimed={})

        rest = until_decided(
            world,
            users[early:],
            concurrently([partial(claim_one, world, u, f"b-{u}") for u in users[early:]]),
            "b",
        )
        # Exactly what was left, not what the gate believed.
        assert Counter(r.outcome for r in rest) == {
            "issued": stock - early,
            "sold_out": late - (stock - early),
        }
        assert {r.answer.status_code for r in rest if r.outcome == "sold_out"} == {409}
        stored = stored_vouchers(world)
        assert len(stored) == stock
        assert sorted(s.id for s in stored) == sorted(
            voucher_id(r) for r in first + rest if r.outcome == "issued"
        )
        # The early winners, forgotten by the gate, still get nothing more.
        again = concurrently([partial(claim_one, world, u, f"c-{u}") for u in users[:early]])
        assert {r.outcome for r in again} <= {"sold_out", "already_claimed"}
        assert len(stored_vouchers(world)) == stock
        assert counted(world) == stock
        check = assert_books(world)
        assert check.issued == stock


@contextmanager
def second_platform(world: World, stack: Stack, tmp_path: Path) -> Iterator[World]:
    """Another process on the same store with a gate of its own (in memory), as a
    misconfigured deployment or a split Redis would have it."""
    settings = Settings(
        data_dir=tmp_path / "second",
        database_url=stack.database_url,
        sweep_interval_s=3600,
    )
    (tmp_path / "second").mkdir()
    rt = build_runtime(settings, clock=world.clock, keyring=world.rt.keyring, gate=MemoryGate())
    platform = start_platform(rt, sweep=False)
    try:
        yield World(platform=platform, clock=world.clock, secrets=world.secrets)
    finally:
        platform.close()


def test_two_processes_with_gates_of_their_own_sell_the_stock_once(
    stack: Stack, tmp_path: Path
) -> None:
    stock, each = 25, 40
    with stack.world(tmp_path) as world:
        users = register_many(world, range(2 * each))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        with second_platform(world, stack, tmp_path) as other:
            # Each gate believes the whole stock is its own.
            assert world.rt.gate.remaining(POOL, TEMPLATE) == stock
            assert other.rt.gate.remaining(POOL, TEMPLATE) == stock

            def claim_through(place: World, user: str) -> ClaimResult:
                [result] = place.platform.claims.claim("wechat", [claim_request(user, f"k-{user}")])
                return result

            calls = [partial(claim_through, world, u) for u in users[:each]]
            calls += [partial(claim_through, other, u) for u in users[each:]]
            results = concurrently(calls)

        outcomes = Counter(r.outcome for r in results)
        assert outcomes == {"issued": stock, "sold_out": 2 * each - stock}, outcomes
        stored = stored_vouchers(world)
        assert len(stored) == stock
        assert len({s.person_id for s in stored}) == stock
        assert sorted(s.id for s in stored) == sorted(
            voucher_id(r) for r in results if r.outcome == "issued"
        )
        assert counted(world) == stock
        assert assert_books(world).issued == stock


def test_a_claim_refused_by_the_store_raises_the_sold_out_flag(
    stack: Stack, tmp_path: Path
) -> None:
    """After the store refused a stock, the next claims are refused from memory:
    the gate is not asked and hands nothing out again."""
    stock = 5
    with stack.world(tmp_path, campaign_cache_ttl_s=60) as world:
        users = register_many(world, range(stock + 3))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        for u in users[:stock]:
            assert claim_one(world, u, f"a-{u}").outcome == "issued"
        world.rt.gate.reset_pool(POOL, stock={TEMPLATE: stock}, claimed={})

        refused = claim_one(world, users[stock], "b")
        assert refused.outcome == "sold_out"
        assert (POOL, TEMPLATE) in world.platform.campaigns.sold_out
        # Handed back to the gate when refused, and never asked for again.
        assert world.rt.gate.remaining(POOL, TEMPLATE) == stock
        assert claim_one(world, users[stock + 1], "c").outcome == "sold_out"
        assert world.rt.gate.remaining(POOL, TEMPLATE) == stock
        assert len(stored_vouchers(world)) == stock


def test_a_counter_that_disagrees_with_the_vouchers_is_reported(
    database_url: str, tmp_path: Path
) -> None:
    with make_world(database_url=database_url, tmp_path=tmp_path) as world:
        users = register_many(world, range(2))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        for u in users:
            assert claim_one(world, u, f"k-{u}").outcome == "issued"
        assert check_campaign(world.rt, CAMPAIGN).ok
        s = t.stocks.c
        with world.rt.store.unit_of_work() as uow:  # an edit by hand, within the CHECK
            uow.connection.execute(
                sa.update(t.stocks)
                .where(s.round_id == "r1", s.channel_id == "wechat", s.template_id == TEMPLATE)
                .values(issued=3)
            )
            uow.commit()
        check = check_campaign(world.rt, CAMPAIGN)
        assert check.problems == [
            f"stock counter ('r1', 'wechat', '{TEMPLATE}'): 3 counted, 2 vouchers"
        ]


def test_the_stock_row_refuses_a_count_past_its_initial(database_url: str, tmp_path: Path) -> None:
    """The CHECK itself, for a writer that skipped the conditional update."""
    with make_world(database_url=database_url, tmp_path=tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 3}}))
        s = t.stocks.c
        where = (s.campaign_id == CAMPAIGN, s.channel_id == "wechat", s.template_id == TEMPLATE)
        with world.rt.store.unit_of_work() as uow, pytest.raises(sa.exc.IntegrityError):
            uow.connection.execute(sa.update(t.stocks).where(*where).values(issued=4))
        with world.rt.store.unit_of_work() as uow, pytest.raises(sa.exc.IntegrityError):
            uow.connection.execute(sa.update(t.stocks).where(*where).values(issued=-1))
        assert counted(world) == 0


@contextmanager
def at_0004_with_vouchers(database_url: str, tmp_path: Path, issued: int) -> Iterator[sa.Engine]:
    """A store where ``issued`` vouchers of a stock of 10 were claimed, taken back to
    the schema from before the stock counter."""
    with make_world(database_url=database_url, tmp_path=tmp_path) as world:
        users = register_many(world, range(issued))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        for u in users:
            assert claim_one(world, u, f"k-{u}").outcome == "issued"
    engine = create_engine(database_url)
    try:
        migrate.downgrade(engine, "0004")
        yield engine
    finally:
        engine.dispose()


def test_upgrading_counts_the_vouchers_already_issued(
    empty_database_url: str, tmp_path: Path
) -> None:
    with at_0004_with_vouchers(empty_database_url, tmp_path, issued=4) as engine:
        migrate.upgrade(engine)
        s = t.stocks.c
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(s.channel_id, s.template_id, s.issued).where(s.issued > 0)
            ).all()
        assert [tuple(r) for r in rows] == [("wechat", TEMPLATE, 4)]


def test_upgrading_an_oversold_store_stops_and_names_the_pool(
    empty_database_url: str, tmp_path: Path
) -> None:
    with at_0004_with_vouchers(empty_database_url, tmp_path, issued=3) as engine:
        with engine.begin() as connection:  # an oversell from before the counter
            connection.exec_driver_sql(
                "UPDATE stocks SET initial = 2 WHERE channel_id = 'wechat' "
                f"AND template_id = '{TEMPLATE}'"
            )
        with pytest.raises(RuntimeError, match=f"{CAMPAIGN}/r1/wechat/{TEMPLATE}: 3 issued of 2"):
            migrate.upgrade(engine)
        assert migrate.current_revision(engine) == "0004"
