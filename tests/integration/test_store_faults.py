"""The claim writers under store faults: a row someone else holds locked.

A row lock is taken from outside lequan, by another connection, as an
operator's ad hoc query or a stuck job would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from lequan.adapters.sql.engine import create_engine
from lequan.ports import StoreUnavailable
from lequan.services.claim_answers import ClaimResult
from lequan.services.invariants import check_campaign
from tests.factories import World, dining_config, make_world
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    TEMPLATE,
    claim_one,
    claim_request,
    remaining,
    stored_vouchers,
    voucher_id,
    wait_until,
)

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
def test_a_locked_stock_row_stalls_its_campaign_not_the_others(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """One campaign's stock row held locked from outside: claims to another campaign
    are issued meanwhile; the locked campaign's claims answer 503 store_unavailable
    once the lock timeout passes (not when the caller gives up), with their stock
    handed back; after the lock is let go they are issued, nothing sold twice."""
    with make_world(
        database_url=fresh_postgres_url,
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
        with stock_row_locked(fresh_postgres_url, CAMPAIGN) as lock_waiters:

            def claim_locked_campaign() -> None:
                requests = [claim_request(u, f"k-{u}") for u in locked_users]
                stalled.extend(world.platform.claims.claim("wechat", requests))

            started = time.monotonic()
            stalled_call = threading.Thread(target=claim_locked_campaign)
            stalled_call.start()
            wait_until(lambda: lock_waiters() >= 1)
            assert lock_waiters() >= 1, "the locked campaign's writer was expected to wait"

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
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """The store's sessions carry the lock timeout: a write waiting on a row held
    from outside gives up and says so as the port's StoreUnavailable."""
    with make_world(
        database_url=fresh_postgres_url, tmp_path=tmp_path, store_lock_timeout_ms=100
    ) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        with (
            stock_row_locked(fresh_postgres_url, CAMPAIGN),
            pytest.raises(StoreUnavailable),
            world.rt.store.unit_of_work() as uow,
        ):
            uow.campaigns.take_stock((CAMPAIGN, "r1", "wechat", TEMPLATE), 1)


def test_sessions_carry_the_timeouts(fresh_postgres_url: str) -> None:
    engine = create_engine(fresh_postgres_url, lock_timeout_ms=1234, statement_timeout_ms=56789)
    try:
        with engine.connect() as connection:
            lock = connection.execute(sa.text("SHOW lock_timeout")).scalar_one()
            statement = connection.execute(sa.text("SHOW statement_timeout")).scalar_one()
    finally:
        engine.dispose()
    assert (lock, statement) == ("1234ms", "56789ms")
