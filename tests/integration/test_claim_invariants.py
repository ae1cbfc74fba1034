"""The flash sale under real concurrency, on both stacks: no oversell, one voucher
per person per round per channel, an ``issued`` answer only for a committed
voucher, the budget never overdrawn, and a gate that can be lost and rebuilt.

Every test runs on (a) a SQLite file with the in-process gate and (b) a fresh
PostgreSQL database with the Redis gate (failing, not skipping, in CI when a
server is down). Concurrency is real: OS threads calling
``platform.claims.claim`` at once, released together by a barrier.

Store failures are made outside lequan, never by patching it: the vouchers
table is renamed away by another connection (the store loses the table the
writer needs while every read of the claim path still works), then renamed
back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa

from lequan.adapters.sql import tables
from lequan.adapters.sql.engine import create_engine
from lequan.services import campaigns
from lequan.services.campaigns import pool_key
from lequan.services.claiming import ClaimRequest, ClaimResult
from lequan.services.idempotency import Idempotency, request_hash
from lequan.services.invariants import CampaignCheck, check_campaign
from tests.factories import CHANNELS, World, dining_config
from tests.integration.conftest import Stack

CAMPAIGN = "sh-dining-2024"
TEMPLATE = "d300-90"
FACE_FEN = 9000  # the face of d300-90: what one voucher commits of the budget
BIG = "d500-150"

T = TypeVar("T")


# -- helpers ------------------------------------------------------------------------


def register_many(world: World, numbers: Sequence[int], channel: str = "wechat") -> list[str]:
    """Register people n as users "u<n>"; their channel user ids, in order.

    Done before the campaign opens: a registration also computes the person's
    verdict for every open campaign, which costs a campaign parse each.
    """
    return [world.register(n, channel=channel) for n in numbers]


def claim_request(
    user: str,
    key: str,
    *,
    channel: str = "wechat",
    round_id: str = "r1",
    template: str = TEMPLATE,
    campaign: str = CAMPAIGN,
) -> ClaimRequest:
    return ClaimRequest(
        channel_user_id=user,
        campaign_id=campaign,
        round_id=round_id,
        template_id=template,
        location_region="310104",
        key=Idempotency(channel, key, request_hash(channel, user, campaign, round_id, template)),
    )


def claim_one(
    world: World,
    user: str,
    key: str,
    *,
    channel: str = "wechat",
    round_id: str = "r1",
    template: str = TEMPLATE,
) -> ClaimResult:
    [result] = world.platform.claims.claim(
        channel,
        [claim_request(user, key, channel=channel, round_id=round_id, template=template)],
    )
    return result


def concurrently(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run every call in its own thread, all released at once; results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=60)
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(run, call) for call in calls]
        return [future.result(timeout=120) for future in futures]


def voucher_id(result: ClaimResult) -> str:
    assert result.answer.status_code == 201, result
    vid = result.answer.body["voucher"]["voucher_id"]
    assert isinstance(vid, str)
    return vid


@dataclass(frozen=True)
class Stored:
    id: str
    person_id: str
    channel_id: str
    round_id: str
    template_id: str


def stored_vouchers(world: World, campaign: str = CAMPAIGN) -> list[Stored]:
    v = tables.vouchers.c
    with world.rt.store.unit_of_work() as uow:
        rows = uow.connection.execute(
            sa.select(v.id, v.person_id, v.channel_id, v.round_id, v.template_id).where(
                v.campaign_id == campaign
            )
        ).all()
    return [Stored(*row) for row in rows]


def person_of(world: World, user: str, channel: str = "wechat") -> str:
    with world.rt.store.unit_of_work() as uow:
        person: str | None = uow.account_person(channel, user)
    assert person is not None
    return person


def remaining(world: World, channel: str = "wechat", template: str = TEMPLATE) -> int | None:
    left: int | None = world.rt.gate.remaining(pool_key(CAMPAIGN, "r1", channel), template)
    return left


def assert_books(world: World, campaign: str = CAMPAIGN) -> CampaignCheck:
    """The campaign's invariants hold (no oversell, ledger balanced, budget kept)."""
    check = check_campaign(world.rt, campaign)
    assert check.ok, check.problems
    return check


def require(condition: bool, message: str) -> None:
    """A precondition of a known-bug test: failing it is a real failure, not the bug."""
    if not condition:
        pytest.fail(message)


@contextmanager
def vouchers_table_gone(database_url: str) -> Iterator[None]:
    """The store loses the vouchers table (another connection renames it away)."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE vouchers RENAME TO vouchers_offline")
        try:
            yield
        finally:
            with engine.begin() as connection:
                connection.exec_driver_sql("ALTER TABLE vouchers_offline RENAME TO vouchers")
    finally:
        engine.dispose()


# -- the flash sale -----------------------------------------------------------------


def test_400_claimers_for_100_vouchers_exactly_100_issued(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        users = register_many(world, range(400))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 100}}))

        results = concurrently([partial(claim_one, world, u, f"k-{u}") for u in users])

        outcomes = Counter(r.outcome for r in results)
        assert outcomes == {"issued": 100, "sold_out": 300}
        assert {r.answer.status_code for r in results if r.outcome == "sold_out"} == {409}
        acknowledged = sorted(voucher_id(r) for r in results if r.outcome == "issued")
        assert len(set(acknowledged)) == 100
        stored = stored_vouchers(world)
        # Every "issued" answer is a committed voucher, and nothing else was committed.
        assert sorted(s.id for s in stored) == acknowledged
        # Nobody twice.
        assert len({s.person_id for s in stored}) == 100
        winners = {u for u, r in zip(users, results, strict=True) if r.outcome == "issued"}
        assert {person_of(world, u) for u in winners} == {s.person_id for s in stored}
        check = assert_books(world)
        assert check.issued == 100
        assert check.committed_fen == 100 * FACE_FEN
        assert remaining(world) == 0


def test_one_person_50_concurrent_claims_gets_one(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 1000}}))
        user = world.register(7)

        results = concurrently([partial(claim_one, world, user, f"same-{n}") for n in range(50)])

        assert Counter(r.outcome for r in results) == {"issued": 1, "already_claimed": 49}
        [winner] = [r for r in results if r.outcome == "issued"]
        stored = stored_vouchers(world)
        assert [s.id for s in stored] == [voucher_id(winner)]
        assert remaining(world) == 999
        assert assert_books(world).issued == 1


def test_same_person_gets_one_voucher_per_channel(stack: Stack, tmp_path: Path) -> None:
    """The limit is per round per channel: one in WeChat and one in Alipay, never two in one."""
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={c: {TEMPLATE: 50} for c in CHANNELS}))
        user = world.register(3, channel="wechat")
        assert world.register(3, channel="alipay") == user  # the same person, two accounts

        results = concurrently(
            [
                partial(claim_one, world, user, f"{c}-{n}", channel=c)
                for c in ("wechat", "alipay")
                for n in range(10)
            ]
        )

        by_channel = {
            c: Counter(r.outcome for r in results[i * 10 : i * 10 + 10])
            for i, c in enumerate(("wechat", "alipay"))
        }
        assert by_channel == {
            "wechat": {"issued": 1, "already_claimed": 9},
            "alipay": {"issued": 1, "already_claimed": 9},
        }
        stored = stored_vouchers(world)
        assert sorted(s.channel_id for s in stored) == ["alipay", "wechat"]
        assert len({s.person_id for s in stored}) == 1
        # Not registered in UnionPay: refused before the gate, nothing taken there.
        refused = claim_one(world, user, "unionpay-1", channel="unionpay")
        assert refused.outcome == "not_registered"
        assert remaining(world, "unionpay") == 50
        assert assert_books(world).issued == 2


def test_concurrent_batches_over_three_channels_sell_exactly_the_stock(
    stack: Stack, tmp_path: Path
) -> None:
    """8 threads x batches of 100 (2-3 per channel, the same people), two templates per pool."""
    stock = {TEMPLATE: 40, BIG: 20}
    with stack.world(tmp_path) as world:
        for channel in CHANNELS:
            register_many(world, range(100), channel)
        world.open_campaign(dining_config(stock={c: dict(stock) for c in CHANNELS}))

        def batch(thread: int) -> tuple[str, list[str], list[ClaimResult]]:
            channel = CHANNELS[thread % 3]
            # Every batch of a channel is the same 100 people, under other keys.
            users = [f"u{n}" for n in range(100)]
            requests = [
                claim_request(
                    u,
                    f"b{thread}-{u}",
                    channel=channel,
                    template=TEMPLATE if int(u[1:]) % 2 == 0 else BIG,
                )
                for u in users
            ]
            return channel, users, world.platform.claims.claim(channel, requests)

        batches = concurrently([partial(batch, t) for t in range(8)])

        acknowledged: list[str] = []
        for _channel, users, results in batches:
            assert len(results) == len(users)
            assert {r.outcome for r in results} <= {"issued", "sold_out", "already_claimed"}
            acknowledged += [voucher_id(r) for r in results if r.outcome == "issued"]
        stored = stored_vouchers(world)
        assert sorted(s.id for s in stored) == sorted(acknowledged)
        issued = Counter((s.channel_id, s.template_id) for s in stored)
        assert issued == {(c, t): n for c in CHANNELS for t, n in stock.items()}
        per_person = Counter((s.channel_id, s.person_id) for s in stored)
        assert set(per_person.values()) == {1}
        for channel in CHANNELS:
            for template in stock:
                assert remaining(world, channel, template) == 0
        assert assert_books(world).issued == 3 * sum(stock.values())


# -- idempotency ----------------------------------------------------------------------


def test_retry_replays_the_same_voucher_and_creates_nothing(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 100}}))
        first_user, racing_user = world.register(1), world.register(2)

        first = claim_one(world, first_user, "k-first")
        again = claim_one(world, first_user, "k-first")
        assert first.outcome == "issued"
        assert not first.replayed
        assert again.outcome == "replayed"
        assert again.replayed
        assert again.answer == first.answer
        assert len(stored_vouchers(world)) == 1
        assert remaining(world) == 99
        # The same key for another request is refused, not replayed.
        other = claim_one(world, first_user, "k-first", template=BIG)
        assert other.outcome == "idempotency_mismatch"
        assert other.answer.status_code == 422

        # 20 concurrent retries of one key: one effect, every other answer a replay
        # of it or "still in progress" (the key is held before the stored answer
        # is looked up, so no retry can slip between the two and be refused).
        results = concurrently(
            [partial(claim_one, world, racing_user, "k-race") for _ in range(20)]
        )
        outcomes = Counter(r.outcome for r in results)
        assert outcomes["issued"] == 1, outcomes
        assert set(outcomes) <= {
            "issued",
            "replayed",
            "idempotency_in_flight",
        }, outcomes
        [winner] = [r for r in results if r.outcome == "issued"]
        for r in results:
            if r.outcome == "replayed":
                assert r.answer == winner.answer
            if r.outcome == "idempotency_in_flight":
                assert r.answer.status_code == 409
        racer = person_of(world, racing_user)
        assert [s.id for s in stored_vouchers(world) if s.person_id == racer] == [
            voucher_id(winner)
        ]
        assert claim_one(world, racing_user, "k-race").answer == winner.answer
        assert len(stored_vouchers(world)) == 2
        assert remaining(world) == 98
        assert assert_books(world).issued == 2


# -- budget ---------------------------------------------------------------------------


def test_budget_covers_exactly_n_vouchers(stack: Stack, tmp_path: Path) -> None:
    n, stock, claimers = 20, 200, 60
    with stack.world(tmp_path) as world:
        users = register_many(world, range(claimers))
        world.open_campaign(
            dining_config(stock={"wechat": {TEMPLATE: stock}}, budget_fen=n * FACE_FEN)
        )

        results = concurrently([partial(claim_one, world, u, f"k-{u}") for u in users])

        assert Counter(r.outcome for r in results) == {
            "issued": n,
            "budget_exhausted": claimers - n,
        }
        acknowledged = sorted(voucher_id(r) for r in results if r.outcome == "issued")
        assert sorted(s.id for s in stored_vouchers(world)) == acknowledged
        check = assert_books(world)
        assert check.committed_fen == check.budget_fen == n * FACE_FEN
        assert check.balances.get("budget", 0) == 0
        # The refused claims handed their reservations back.
        assert remaining(world) == stock - n
        # Later claims are refused too, and still take nothing.
        late = claim_one(world, world.register(500), "k-late")
        assert late.outcome == "budget_exhausted"
        assert remaining(world) == stock - n


# -- the gate is a cache ----------------------------------------------------------------


def test_lost_gate_is_rebuilt_from_the_store(stack: Stack, tmp_path: Path) -> None:
    stock = 40
    # A ttl of 0: the local sold-out flag raised while the gate was empty is
    # forgiven on the next claim instead of campaign_cache_ttl_s later.
    with stack.world(tmp_path, campaign_cache_ttl_s=0) as world:
        users = register_many(world, range(85))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        early, late = users[:25], users[25:]
        first = concurrently([partial(claim_one, world, u, f"a-{u}") for u in early])
        assert Counter(r.outcome for r in first) == {"issued": 25}
        assert remaining(world) == stock - 25

        stack.lose_gate(world)
        assert remaining(world) is None
        # While the gate knows nothing it refuses: never a voucher it cannot count.
        blind = claim_one(world, late[0], "blind")
        assert blind.outcome == "sold_out"

        campaigns.rebuild_gate(world.rt, CAMPAIGN)
        assert remaining(world) == stock - 25

        again = concurrently([partial(claim_one, world, u, f"b-{u}") for u in early])
        assert Counter(r.outcome for r in again) == {"already_claimed": 25}
        rest = concurrently([partial(claim_one, world, u, f"c-{u}") for u in late])
        assert Counter(r.outcome for r in rest) == {"issued": 15, "sold_out": 45}
        stored = stored_vouchers(world)
        assert len(stored) == stock
        assert len({s.person_id for s in stored}) == stock
        assert sorted(s.id for s in stored) == sorted(
            voucher_id(r) for r in first + rest if r.outcome == "issued"
        )
        assert remaining(world) == 0
        assert assert_books(world).issued == stock


# -- the durability rule -------------------------------------------------------------


def test_failed_commit_answers_503_and_hands_the_stock_back(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        ok_user = world.register(1)
        unlucky = [world.register(n) for n in range(2, 5)]
        assert claim_one(world, ok_user, "k-ok").outcome == "issued"
        assert remaining(world) == 9

        with vouchers_table_gone(stack.database_url):
            failed = concurrently([partial(claim_one, world, u, f"k-{u}") for u in unlucky])
            # Every reservation was handed back, while the table was still gone.
            assert remaining(world) == 9

        for result in failed:
            # A refusal the client retries later (503), never "issued".
            assert result.outcome == "store_unavailable", result
            assert result.answer.status_code == 503
            assert not result.replayed
            assert "voucher" not in result.answer.body
        assert [s.person_id for s in stored_vouchers(world)] == [person_of(world, ok_user)]
        check = assert_books(world)
        assert check.committed_fen == FACE_FEN  # the failed transaction took no budget
        assert check.issued == 1

        # The refusal was not stored: the same key simply asks again, and succeeds.
        retried = [claim_one(world, u, f"k-{u}") for u in unlucky]
        assert [r.outcome for r in retried] == ["issued"] * 3
        assert remaining(world) == 6
        assert sorted(
            s.id for s in stored_vouchers(world) if s.person_id != person_of(world, ok_user)
        ) == sorted(voucher_id(r) for r in retried)
        assert assert_books(world).issued == 4


def test_commit_timeout_holds_the_stock_and_the_retry_replays(stack: Stack, tmp_path: Path) -> None:
    """A commit slower than claim_commit_timeout_s: 503 commit_timeout, stock held.

    The writer still holds the claim (it waits claim_batch_wait_ms for more),
    so the stock must not be handed back: the commit may yet happen, and
    does. The retry with the same key then replays the voucher.
    """
    with stack.world(tmp_path, claim_batch_wait_ms=400, claim_commit_timeout_s=0.1) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)

        slow = claim_one(world, user, "k-slow")
        assert slow.outcome == "commit_timeout"
        assert slow.answer.status_code == 503
        assert remaining(world) == 9  # held: the writer has it

        deadline = time.monotonic() + 10
        while not stored_vouchers(world) and time.monotonic() < deadline:
            time.sleep(0.05)
        [stored] = stored_vouchers(world)

        retry = claim_one(world, user, "k-slow")
        assert retry.outcome == "replayed"
        assert voucher_id(retry) == stored.id
        assert remaining(world) == 9
        assert assert_books(world).issued == 1


def test_commit_timeout_then_failed_commit_hands_the_stock_back(
    stack: Stack, tmp_path: Path
) -> None:
    """ARCHITECTURE: "A claim reserved in the gate whose commit fails or never
    happens is released." Here the waiter gave up (commit_timeout) before the
    writer tried; the writer's commit then fails, and the writer releases."""
    with stack.world(tmp_path, claim_batch_wait_ms=400, claim_commit_timeout_s=0.1) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)

        with vouchers_table_gone(stack.database_url):
            slow = claim_one(world, user, "k-slow")
            # The writer tries ~0.4 s after the claim was queued, and fails.
            time.sleep(1.0)
        require(slow.outcome == "commit_timeout", f"expected commit_timeout first, got {slow}")
        require(not stored_vouchers(world), "the commit was expected to fail")

        # The failed commit handed its stock back before anyone retried.
        assert remaining(world) == 10
        # The retry is a fresh attempt (it too outlives the 0.1 s wait here):
        # it is committed once, and the person is not locked out.
        retry = claim_one(world, user, "k-slow")
        assert retry.outcome in {"issued", "commit_timeout"}, retry
        deadline = time.monotonic() + 10
        while not stored_vouchers(world) and time.monotonic() < deadline:
            time.sleep(0.05)
        [stored] = stored_vouchers(world)
        assert remaining(world) == 9
        final = claim_one(world, user, "k-slow")
        assert final.outcome == "replayed"
        assert voucher_id(final) == stored.id


def test_retry_while_the_commit_is_pending_is_not_refused_already_claimed(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.world(tmp_path, claim_batch_wait_ms=400, claim_commit_timeout_s=0.1) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)

        slow = claim_one(world, user, "k-slow")
        retry = claim_one(world, user, "k-slow")  # as told, at once
        require(slow.outcome == "commit_timeout", f"expected commit_timeout, got {slow}")
        require(not stored_vouchers(world), "the commit was expected to be still pending")
        deadline = time.monotonic() + 10
        while not stored_vouchers(world) and time.monotonic() < deadline:
            time.sleep(0.05)
        final = claim_one(world, user, "k-slow")
        require(final.outcome == "replayed", f"the key's effect was expected, got {final}")

        # The same key, the same request: one effect, and no answer that denies it.
        assert retry.outcome in {"idempotency_in_flight", "commit_timeout", "replayed"}, retry


# -- rounds and lifecycle ------------------------------------------------------------


def test_round_times_and_pause(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        config = dining_config(stock={"wechat": {TEMPLATE: 10}})
        world.open_campaign(config)
        r1, r2 = config.rounds[0], config.rounds[1]
        first, second = world.register(1), world.register(2)

        world.clock.set(r1.release_at - timedelta(seconds=1))
        early = claim_one(world, first, "k-early")
        assert early.outcome == "not_started"
        assert early.answer.status_code == 409
        assert early.answer.body["details"]["release_at"] == r1.release_at.isoformat()

        world.clock.set(r1.release_at)
        campaigns.change_status(world.rt, CAMPAIGN, "pause", actor="bob")
        paused = claim_one(world, first, "k-paused")
        assert paused.outcome == "campaign_paused"
        campaigns.change_status(world.rt, CAMPAIGN, "resume", actor="alice")
        assert claim_one(world, first, "k-resumed").outcome == "issued"

        world.clock.set(r1.ends_at)
        late = claim_one(world, second, "k-late")
        assert late.outcome == "round_ended"
        assert claim_one(world, second, "k-r2-early", round_id="r2").outcome == "not_started"

        world.clock.set(r2.release_at)
        # A new round: the same person may claim again.
        assert claim_one(world, first, "k-r2", round_id="r2").outcome == "issued"
        assert claim_one(world, second, "k-r2b", round_id="r2").outcome == "issued"
        stored = stored_vouchers(world)
        assert Counter(s.round_id for s in stored) == {"r1": 1, "r2": 2}
        assert remaining(world) == 9
        assert assert_books(world).issued == 3
