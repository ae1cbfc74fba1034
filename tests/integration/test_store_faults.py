"""The claim writers under store faults: a row someone else holds locked, and a
COMMIT whose answer is lost.

A row lock is taken from outside lequan, by another connection, as an
operator's ad hoc query or a stuck job would. A lost COMMIT answer is made by
a fake of the store port wrapping the real store: its COMMIT reaches the
database, then the call raises as a dropped connection would.

The stalled campaign's test is ``serial`` (run alone): its refusal must come
from the lock timeout, well before the caller's own. The others wait for
nothing but a fence, with a generous deadline, and run beside other tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lequan.adapters.sql.engine import create_engine
from lequan.ports import Store, StoreUnavailable, UnitOfWork
from lequan.services.campaigns import pool_key
from lequan.services.claim_answers import ClaimResult
from lequan.services.gatekeeper import reap_stale
from lequan.services.invariants import check_campaign
from tests.factories import World, dining_config, make_world
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    TEMPLATE,
    claim_one,
    claim_request,
    remaining,
    stored_vouchers,
    voucher_id,
)
from tests.waiting import wait_until

OTHER = "sh-dining-other"


def books_hold(world: World, campaign: str, *, issued: int) -> None:
    check = check_campaign(world.rt, campaign)
    assert check.ok, check.problems
    assert check.issued == issued


# -- a row held locked from outside ---------------------------------------------------


@contextmanager
def stock_row_locked(database_url: str, campaign_id: str) -> Iterator[Callable[[], int]]:
    """Another connection holds one stock row of the campaign locked (FOR UPDATE) until
    the block ends; yields a probe: how many sessions wait for a lock now."""
    engine = create_engine(database_url)
    holder = engine.connect()
    watcher = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        holder.exec_driver_sql(
            "SELECT issued FROM stocks WHERE campaign_id = %s AND round_id = 'r1' "
            "AND channel_id = 'wechat' AND template_id = %s FOR UPDATE",
            (campaign_id, TEMPLATE),
        )

        def lock_waiters() -> int:
            count = watcher.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar_one()
            assert isinstance(count, int)
            return count

        yield lock_waiters
    finally:
        holder.rollback()
        holder.close()
        watcher.close()
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.serial
def test_a_locked_stock_row_stalls_its_campaign_not_the_others(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    """One campaign's stock row held locked from outside: claims to another campaign
    are issued meanwhile; the locked campaign's claims answer 503 store_unavailable
    once the lock timeout passes (not when the caller gives up), with their stock
    handed back; after the lock is let go they are issued, nothing sold twice."""
    with make_world(
        database_url=migrated_postgres_url,
        tmp_path=tmp_path,
        store_lock_timeout_ms=1500,
        claim_commit_timeout_s=4,
    ) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        world.open_campaign(
            dining_config(id=OTHER, stock={"wechat": {TEMPLATE: 10}}), merchants=False
        )
        locked_users = [world.register(n) for n in range(1, 4)]
        free_users = [world.register(n) for n in range(4, 7)]

        stalled: list[ClaimResult] = []
        with stock_row_locked(migrated_postgres_url, CAMPAIGN) as lock_waiters:

            def claim_locked_campaign() -> None:
                requests = [claim_request(u, f"k-{u}") for u in locked_users]
                stalled.extend(world.platform.claims.claim("wechat", requests))

            started = time.monotonic()
            stalled_call = threading.Thread(target=claim_locked_campaign)
            stalled_call.start()
            wait_until(
                lambda: lock_waiters() >= 1, what="the locked campaign's writer waits on the lock"
            )

            free = world.platform.claims.claim(
                "wechat", [claim_request(u, f"k-{u}", campaign=OTHER) for u in free_users]
            )
            assert [r.outcome for r in free] == ["issued"] * 3, free

            stalled_call.join(timeout=30)
            stalled_s = time.monotonic() - started
        assert not stalled_call.is_alive()
        # Refused by the lock timeout, a retryable 503, well before the caller's wait.
        assert [r.outcome for r in stalled] == ["store_unavailable"] * 3, stalled
        assert all(r.answer.status_code == 503 for r in stalled)
        assert stalled_s < world.rt.settings.claim_commit_timeout_s
        assert remaining(world) == 10  # handed back

        retried = [claim_one(world, u, f"k-{u}") for u in locked_users]
        assert [r.outcome for r in retried] == ["issued"] * 3, retried
        assert remaining(world) == 7
        books_hold(world, CAMPAIGN, issued=3)
        books_hold(world, OTHER, issued=3)
        assert sorted(s.id for s in stored_vouchers(world)) == sorted(
            voucher_id(r) for r in retried
        )


@pytest.mark.postgres
def test_a_statement_past_the_lock_timeout_is_store_unavailable(
    migrated_postgres_url: str, tmp_path: Path
) -> None:
    """The store's sessions carry the lock timeout: a write waiting on a row held
    from outside gives up and says so as the port's StoreUnavailable."""
    with make_world(
        database_url=migrated_postgres_url, tmp_path=tmp_path, store_lock_timeout_ms=100
    ) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        with (
            stock_row_locked(migrated_postgres_url, CAMPAIGN),
            pytest.raises(StoreUnavailable),
            world.rt.store.unit_of_work() as uow,
        ):
            uow.campaigns.take_stock((CAMPAIGN, "r1", "wechat", TEMPLATE), 1)


# -- a COMMIT whose answer is lost ----------------------------------------------------


class _UnitOfWork:
    """The real unit of work, whose COMMIT the fake store may make fail."""

    def __init__(self, store: LostCommits, real: UnitOfWork) -> None:
        self._store = store
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def commit(self) -> None:
        self._store.commit(self._real)


class LostCommits:
    """The store port over the real store, with COMMITs that fail in flight: the next
    ``lose`` COMMITs raise ``StoreUnavailable`` as a dropped connection does, after
    reaching the database (``committed``) or before it; while ``unreadable``, every
    unit of work fails to begin."""

    def __init__(self, real: Store) -> None:
        self.real = real
        self.lose = 0
        self.committed = True
        self.unreadable = False
        self.unreadable_after_loss = False

    def commit(self, uow: UnitOfWork) -> None:
        if self.lose == 0:
            uow.commit()
            return
        self.lose -= 1
        if self.committed:
            uow.commit()
        else:
            uow.rollback()
        self.unreadable = self.unreadable_after_loss
        raise StoreUnavailable("OperationalError")

    @contextmanager
    def _unit_of_work(self, readonly: bool) -> Iterator[UnitOfWork]:
        if self.unreadable:
            raise StoreUnavailable("OperationalError")
        with self.real.unit_of_work(readonly=readonly) as uow:
            yield _UnitOfWork(self, uow)

    def unit_of_work(self, *, readonly: bool = False) -> AbstractContextManager[UnitOfWork]:
        return self._unit_of_work(readonly)

    def ping(self) -> None:
        self.real.ping()

    def schema_revisions(self) -> tuple[str | None, str | None]:
        return self.real.schema_revisions()

    def upgrade(self) -> None:
        self.real.upgrade()

    def dispose(self) -> None:
        self.real.dispose()


@contextmanager
def lost_commits(world: World) -> Iterator[LostCommits]:
    fake = LostCommits(world.rt.store)
    world.rt.store = fake
    try:
        yield fake
    finally:
        world.rt.store = fake.real


def test_a_commit_whose_answer_was_lost_is_read_back_and_issued(
    stack: Stack, tmp_path: Path
) -> None:
    """The connection drops during COMMIT, after the database committed: the writer
    reads whether the vouchers are there instead of guessing. The claim is issued
    and its reservation settled, never handed back to be sold again."""
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)
        with lost_commits(world) as store:
            store.lose = 1
            result = claim_one(world, user, "k-1")
            assert store.lose == 0, "the COMMIT was expected to be lost"

        assert result.outcome == "issued", result
        [stored] = stored_vouchers(world)
        assert stored.id == voucher_id(result)
        assert remaining(world) == 9  # kept: the voucher is committed
        again = claim_one(world, user, "k-1")
        assert again.outcome == "replayed"
        assert voucher_id(again) == stored.id
        others = [claim_one(world, world.register(n), f"k-{n}") for n in range(2, 11)]
        assert [r.outcome for r in others] == ["issued"] * 9
        assert claim_one(world, world.register(11), "k-11").outcome == "sold_out"
        books_hold(world, CAMPAIGN, issued=10)


def test_a_commit_that_failed_in_flight_and_did_not_commit_hands_the_stock_back(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)
        with lost_commits(world) as store:
            store.lose, store.committed = 1, False
            result = claim_one(world, user, "k-1")

        assert result.outcome == "store_unavailable", result
        assert stored_vouchers(world) == []
        assert remaining(world) == 10
        retried = claim_one(world, user, "k-1")
        assert retried.outcome == "issued", retried
        assert remaining(world) == 9
        books_hold(world, CAMPAIGN, issued=1)


def test_a_lost_commit_the_store_cannot_be_asked_about_stays_pending_until_reaped(
    stack: Stack, tmp_path: Path
) -> None:
    """After the lost COMMIT the store cannot be read until the fence has passed: the
    claim hears commit_timeout (retry with the same key), the reservation stays
    pending in the gate, and the GateKeeper settles it once the store answers."""
    with stack.world(tmp_path, claim_reservation_ttl_s=1, claim_commit_timeout_s=30) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)
        with lost_commits(world) as store:
            store.lose, store.unreadable_after_loss = 1, True
            result = claim_one(world, user, "k-1")
            store.unreadable = False

        assert result.outcome == "commit_timeout", result
        assert remaining(world) == 9  # neither handed back nor settled: pending
        pool = pool_key(CAMPAIGN, "r1", "wechat")

        def reaped() -> bool:
            reap_stale(world.rt)  # the platform's GateKeeper may have been first
            return not world.rt.gate.stale(pool, older_than_s=0, limit=10)

        wait_until(
            reaped,
            what="the stale reservation is settled",
            timeout_s=10 * world.rt.settings.gate_fence_s,
        )
        assert remaining(world) == 9  # settled: the voucher is in the store
        again = claim_one(world, user, "k-1")
        assert again.outcome == "replayed", again
        books_hold(world, CAMPAIGN, issued=1)


def test_sessions_carry_the_timeouts(migrated_postgres_url: str) -> None:
    engine = create_engine(migrated_postgres_url, lock_timeout_ms=1234, statement_timeout_ms=56789)
    try:
        with engine.connect() as connection:
            lock = connection.execute(sa.text("SHOW lock_timeout")).scalar_one()
            statement = connection.execute(sa.text("SHOW statement_timeout")).scalar_one()
    finally:
        engine.dispose()
    assert (lock, statement) == ("1234ms", "56789ms")
