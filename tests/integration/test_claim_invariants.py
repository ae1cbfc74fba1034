"""The flash sale under real concurrency, on both stacks: no oversell, one voucher
per person per round per channel, an ``issued`` answer only for a committed
voucher, the budget never overdrawn, and a gate that can be lost and rebuilt.

Every test runs on (a) a SQLite file with the in-process gate and (b) a fresh
PostgreSQL database with the Redis gate (failing, not skipping, in CI when a
server is down). Concurrency is real: OS threads calling
``platform.claims.claim`` at once, released together by a barrier.

Store failures are made outside lequan, never by patching it: the ledger's
entries table is renamed away by another connection (the store loses a
table the writer needs while every read of the claim path still works),
then renamed back.

The races, and the tests whose claims must commit within a short reservation
ttl or wait out a fence or a held lock, are marked ``serial``: ``make test``
runs them alone, after the others (a busy machine turned their commits into
timeouts). The rest run beside other tests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from lequan.adapters.sql import tables
from lequan.adapters.sql.engine import create_engine
from lequan.ports import (
    ClaimGate,
    DrawEntry,
    DrawnEntry,
    DrawProgress,
    DrawResult,
    EntryOutcome,
    PendingReservation,
    ReserveOutcome,
    ReserveRequest,
    ReserveResult,
)
from lequan.services import campaigns
from lequan.services.campaigns import pool_key
from lequan.services.claim_answers import ClaimResult
from lequan.services.claiming import ClaimRequest
from lequan.services.gatekeeper import ReapReport, reap_stale
from lequan.services.idempotency import Idempotency, request_hash
from lequan.services.invariants import CampaignCheck, check_campaign
from tests.factories import CHANNELS, World, dining_config, make_world
from tests.integration.conftest import Stack
from tests.waiting import wait_until

CAMPAIGN = "sh-dining-2024"
TEMPLATE = "d300-90"
FACE_FEN = 9000  # the face of d300-90: what one voucher commits of the budget
BIG = "d500-150"

T = TypeVar("T")
REGISTERING_AT_ONCE = 8


# -- helpers ------------------------------------------------------------------------


def register_many(world: World, numbers: Sequence[int], channel: str = "wechat") -> list[str]:
    """Register people n as users "u<n>"; their channel user ids, in order.

    Done before the campaign opens: a registration also computes the person's
    verdict for every open campaign, which costs a campaign parse each. A few at
    a time, as people sign up: each registration is a transaction of its own,
    and a crowd's registrations one after another were most of its test's time
    waiting for the store's commits.
    """
    with ThreadPoolExecutor(max_workers=REGISTERING_AT_ONCE) as pool:
        return list(pool.map(partial(world.register, channel=channel), numbers))


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


# What a person's app retries with the same key: the claim's fate was not decided.
RETRYABLE = frozenset(
    {"commit_timeout", "gate_rebuilding", "idempotency_in_flight", "claim_pending"}
)


def until_decided(
    world: World, users: Sequence[str], results: list[ClaimResult], key_prefix: str
) -> list[ClaimResult]:
    """Each retryable answer retried with the same key, as a person's app would, until
    it is decided; the tiny reservation ttls of these tests make ``commit_timeout``
    a real outcome on a loaded machine."""
    decided = list(results)
    for attempt in range(50):
        pending = [i for i, r in enumerate(decided) if r.outcome in RETRYABLE]
        if not pending:
            return decided
        time.sleep(0.05 * attempt)
        for i in pending:
            decided[i] = claim_one(world, users[i], f"{key_prefix}-{users[i]}")
    raise AssertionError(f"still undecided: {Counter(r.outcome for r in decided)}")


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
        person: str | None = uow.people.account_person(channel, user)
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
def table_gone(database_url: str, table: str) -> Iterator[None]:
    """The store loses a table (another connection renames it away, then back)."""
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {table}_offline")
        try:
            yield
        finally:
            with engine.begin() as connection:
                connection.exec_driver_sql(f"ALTER TABLE {table}_offline RENAME TO {table}")
    finally:
        engine.dispose()


@contextmanager
def writers_held(database_url: str, *, for_s: float) -> Iterator[None]:
    """Another connection holds up every claim writer for ``for_s`` seconds: SQLite's
    write lock, or the campaign row's lock on PostgreSQL (the budget update waits)."""
    engine = create_engine(database_url)
    connection = engine.connect()
    try:
        if engine.dialect.name == "sqlite":  # our engine begins writers IMMEDIATE
            connection.exec_driver_sql("SELECT 1")
        else:
            connection.exec_driver_sql(
                "SELECT id FROM campaigns WHERE id = %s FOR UPDATE", (CAMPAIGN,)
            )
        releaser = threading.Timer(for_s, connection.rollback)
        releaser.start()
        try:
            yield
        finally:
            releaser.join(for_s + 10)
    finally:
        connection.close()
        engine.dispose()


def claim_writes_fail(database_url: str) -> AbstractContextManager[None]:
    """The store loses a table only the claim writer uses (the ledger's entries, posted
    with every batch): every read of the claim path still works."""
    return table_gone(database_url, "ledger_entries")


# -- the flash sale -----------------------------------------------------------------


@pytest.mark.serial
def test_a_crowd_four_times_the_stock_gets_exactly_the_stock(stack: Stack, tmp_path: Path) -> None:
    """200 claimers released at once, racing for 50 vouchers."""
    claimers, stock = 200, 50
    with stack.world(tmp_path) as world:
        users = register_many(world, range(claimers))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))

        results = concurrently([partial(claim_one, world, u, f"k-{u}") for u in users])

        outcomes = Counter(r.outcome for r in results)
        assert outcomes == {"issued": stock, "sold_out": claimers - stock}
        assert {r.answer.status_code for r in results if r.outcome == "sold_out"} == {409}
        acknowledged = sorted(voucher_id(r) for r in results if r.outcome == "issued")
        assert len(set(acknowledged)) == stock
        stored = stored_vouchers(world)
        # Every "issued" answer is a committed voucher, and nothing else was committed.
        assert sorted(s.id for s in stored) == acknowledged
        # Nobody twice.
        assert len({s.person_id for s in stored}) == stock
        winners = {u for u, r in zip(users, results, strict=True) if r.outcome == "issued"}
        assert {person_of(world, u) for u in winners} == {s.person_id for s in stored}
        check = assert_books(world)
        assert check.issued == stock
        assert check.committed_fen == stock * FACE_FEN
        assert remaining(world) == 0


@pytest.mark.serial
def test_one_person_50_concurrent_claims_gets_one(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 1000}}))
        user = world.register(7)

        results = concurrently([partial(claim_one, world, user, f"same-{n}") for n in range(50)])

        # The others hear "already claimed" once the store holds the voucher, and
        # "retry shortly" while it is being committed.
        outcomes = Counter(r.outcome for r in results)
        assert outcomes["issued"] == 1, outcomes
        assert set(outcomes) <= {"issued", "already_claimed", "claim_pending"}, outcomes
        assert claim_one(world, user, "same-again").outcome == "already_claimed"
        [winner] = [r for r in results if r.outcome == "issued"]
        stored = stored_vouchers(world)
        assert [s.id for s in stored] == [voucher_id(winner)]
        assert remaining(world) == 999
        assert assert_books(world).issued == 1


@pytest.mark.serial
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

        for i, channel in enumerate(("wechat", "alipay")):
            outcomes = Counter(r.outcome for r in results[i * 10 : i * 10 + 10])
            assert outcomes["issued"] == 1, (channel, outcomes)
            assert set(outcomes) <= {"issued", "already_claimed", "claim_pending"}, outcomes
        stored = stored_vouchers(world)
        assert sorted(s.channel_id for s in stored) == ["alipay", "wechat"]
        assert len({s.person_id for s in stored}) == 1
        # Not registered in UnionPay: refused before the gate, nothing taken there.
        refused = claim_one(world, user, "unionpay-1", channel="unionpay")
        assert refused.outcome == "not_registered"
        assert remaining(world, "unionpay") == 50
        assert assert_books(world).issued == 2


@pytest.mark.serial
def test_concurrent_batches_over_three_channels_sell_exactly_the_stock(
    stack: Stack, tmp_path: Path
) -> None:
    """8 threads x batches of 50 (2-3 per channel, the same people), two templates per pool."""
    stock = {TEMPLATE: 20, BIG: 10}
    with stack.world(tmp_path) as world:
        for channel in CHANNELS:
            register_many(world, range(50), channel)
        world.open_campaign(dining_config(stock={c: dict(stock) for c in CHANNELS}))

        def batch(thread: int) -> tuple[str, list[str], list[ClaimResult]]:
            channel = CHANNELS[thread % 3]
            # Every batch of a channel is the same 50 people, under other keys.
            users = [f"u{n}" for n in range(50)]
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
            assert {r.outcome for r in results} <= {
                "issued",
                "sold_out",
                "already_claimed",
                "claim_pending",
            }
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


@pytest.mark.serial
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


@pytest.mark.serial
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


# A small reservation ttl keeps the fence of a shared gate's rebuild short here.
FENCED: dict[str, Any] = {"claim_reservation_ttl_s": 0.5}


@pytest.mark.serial
def test_lost_gate_is_rebuilt_from_the_store(stack: Stack, tmp_path: Path) -> None:
    stock = 40
    # A ttl of 0: a local flag raised while the gate was empty would be
    # forgiven on the next claim instead of campaign_cache_ttl_s later.
    with stack.world(tmp_path, campaign_cache_ttl_s=0, **FENCED) as world:
        users = register_many(world, range(85))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        early, late = users[:25], users[25:]
        first = concurrently([partial(claim_one, world, u, f"a-{u}") for u in early])
        first = until_decided(world, early, first, "a")
        assert Counter(r.outcome for r in first) == {"issued": 25}
        assert remaining(world) == stock - 25

        stack.lose_gate(world)
        assert remaining(world) is None
        # While the gate knows nothing it refuses, retryably: never a voucher it
        # cannot count, and never a "sold out" that is not true.
        blind = claim_one(world, late[0], "blind")
        assert blind.outcome == "gate_rebuilding"
        assert blind.answer.status_code == 503

        # The claim asked for the rebuild; the gatekeeper does it (after the fence).
        wait_until(lambda: remaining(world) == stock - 25, what="the gate rebuilt from the store")

        again = concurrently([partial(claim_one, world, u, f"b-{u}") for u in early])
        again = until_decided(world, early, again, "b")
        assert Counter(r.outcome for r in again) == {"already_claimed": 25}
        rest = concurrently([partial(claim_one, world, u, f"c-{u}") for u in late])
        rest = until_decided(world, late, rest, "c")
        assert Counter(r.outcome for r in rest) == {"issued": 15, "sold_out": 45}
        stored = stored_vouchers(world)
        assert len(stored) == stock
        assert len({s.person_id for s in stored}) == stock
        assert sorted(s.id for s in stored) == sorted(
            voucher_id(r) for r in first + rest if r.outcome == "issued"
        )
        assert remaining(world) == 0
        assert assert_books(world).issued == stock


@pytest.mark.serial
def test_shared_gate_lost_mid_crowd_is_rebuilt_without_oversell(
    shared_stack: Stack, tmp_path: Path
) -> None:
    """Redis flushed while claims are in flight: the reservations it granted
    still commit, so the rebuild waits out the fence before reading the store.
    (An in-process gate is lost only with its process, and its claims with it.)"""
    stack = shared_stack
    stock = 60
    # A long batch wait keeps reservations in flight when the gate is lost.
    with stack.world(tmp_path, claim_batch_wait_ms=300, **FENCED) as world:
        users = register_many(world, range(100))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: stock}}))
        done = threading.Event()
        answers: list[ClaimResult] = []
        lock = threading.Lock()

        def claimer(offset: int) -> None:
            for attempt in range(400):
                if done.is_set():
                    return
                user = users[(offset * 37 + attempt) % len(users)]
                result = claim_one(world, user, f"k-{user}")  # a person retries with one key
                with lock:
                    answers.append(result)
                time.sleep(0.01)

        threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: sum(1 for a in answers if a.outcome == "issued") >= 10,
            what="ten vouchers issued before the gate is lost",
        )
        stack.lose_gate(world)
        wait_until(
            lambda: len(stored_vouchers(world)) >= stock,
            what="the whole stock stored after the gate was rebuilt",
            timeout_s=60,
        )
        done.set()
        for thread in threads:
            thread.join(60)

        stored = stored_vouchers(world)
        assert len(stored) == stock  # nothing oversold across the loss
        assert len({s.person_id for s in stored}) == stock
        acknowledged = {voucher_id(a) for a in answers if a.outcome in ("issued", "replayed")}
        assert acknowledged <= {s.id for s in stored}
        outcomes = Counter(a.outcome for a in answers)
        assert outcomes["gate_rebuilding"] > 0, outcomes  # the loss was seen, and said so
        assert set(outcomes) <= {
            "issued",
            "replayed",
            "sold_out",
            "already_claimed",
            "claim_pending",
            "gate_rebuilding",
            "commit_timeout",
            "idempotency_in_flight",
        }, outcomes
        assert world.rt.gate.remaining(pool_key(CAMPAIGN, "r1", "wechat"), TEMPLATE) == 0
        assert assert_books(world).issued == stock


# -- the durability rule -------------------------------------------------------------


@pytest.mark.serial
def test_failed_commit_answers_503_and_hands_the_stock_back(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        ok_user = world.register(1)
        unlucky = [world.register(n) for n in range(2, 5)]
        assert claim_one(world, ok_user, "k-ok").outcome == "issued"
        assert remaining(world) == 9

        with claim_writes_fail(stack.database_url):
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


@pytest.mark.serial
def test_a_transaction_that_outlives_the_reservation_ttl_is_rolled_back_not_committed(
    stack: Stack, tmp_path: Path
) -> None:
    """The fence's second half: a reservation is committed within its ttl or not at all.
    Here the writer is held up past the ttl after it took the claim; it rolls back
    rather than COMMIT, answers 503 commit_timeout and hands the stock back, so a
    gate rebuilt after the fence can never count the voucher twice."""
    with stack.world(tmp_path, claim_reservation_ttl_s=0.5, claim_commit_timeout_s=30) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        user = world.register(1)
        with writers_held(stack.database_url, for_s=1.5):
            late = claim_one(world, user, "k-late")

        assert late.outcome == "commit_timeout", late
        assert late.answer.status_code == 503
        assert stored_vouchers(world) == []
        assert remaining(world) == 5  # handed back
        check = assert_books(world)
        assert check.issued == 0
        assert check.committed_fen == 0
        # Nothing of the refusal was kept: the same key asks again and gets the voucher.
        again = claim_one(world, user, "k-late")
        assert again.outcome == "issued", again
        assert [s.id for s in stored_vouchers(world)] == [voucher_id(again)]
        assert remaining(world) == 4


@pytest.mark.serial
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

        wait_until(lambda: stored_vouchers(world), what="the late commit stored the voucher")
        [stored] = stored_vouchers(world)

        retry = claim_one(world, user, "k-slow")
        assert retry.outcome == "replayed"
        assert voucher_id(retry) == stored.id
        assert remaining(world) == 9
        assert assert_books(world).issued == 1


@pytest.mark.serial
def test_commit_timeout_then_failed_commit_hands_the_stock_back(
    stack: Stack, tmp_path: Path
) -> None:
    """ARCHITECTURE: "A claim reserved in the gate whose commit fails or never
    happens is released." Here the waiter gave up (commit_timeout) before the
    writer tried; the writer's commit then fails, and the writer releases."""
    with stack.world(tmp_path, claim_batch_wait_ms=400, claim_commit_timeout_s=0.1) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        user = world.register(1)

        with claim_writes_fail(stack.database_url):
            slow = claim_one(world, user, "k-slow")
            require(slow.outcome == "commit_timeout", f"expected commit_timeout first, got {slow}")
            # The writer tries ~0.4 s after the claim was queued, fails, and hands
            # the stock back before anyone retried.
            wait_until(
                lambda: remaining(world) == 10, what="the failed commit handed the stock back"
            )
        require(not stored_vouchers(world), "the commit was expected to fail")
        # The retry is a fresh attempt (it too outlives the 0.1 s wait here):
        # it is committed once, and the person is not locked out.
        retry = claim_one(world, user, "k-slow")
        assert retry.outcome in {"issued", "commit_timeout"}, retry
        wait_until(lambda: stored_vouchers(world), what="the retry's commit stored the voucher")
        [stored] = stored_vouchers(world)
        assert remaining(world) == 9
        final = claim_one(world, user, "k-slow")
        assert final.outcome == "replayed"
        assert voucher_id(final) == stored.id


@pytest.mark.serial
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
        wait_until(lambda: stored_vouchers(world), what="the pending commit stored the voucher")
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


# -- reservations that outlive their process or their ttl ------------------------------


class GateInFront:
    """A ClaimGate passing every call to a real one; tests override a step."""

    def __init__(self, inner: ClaimGate) -> None:
        self.inner = inner

    @property
    def shared(self) -> bool:
        return self.inner.shared

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        return self.inner.reserve(requests)

    def settle(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        self.inner.settle(reservations)

    def release(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        self.inner.release(reservations)

    def stale(self, pool: str, *, older_than_s: float, limit: int) -> list[tuple[str, str, int]]:
        return self.inner.stale(pool, older_than_s=older_than_s, limit=limit)

    def pending_of(
        self, pools: Sequence[str], person_ids: Sequence[str]
    ) -> list[PendingReservation]:
        return self.inner.pending_of(pools, person_ids)

    def recount(self, campaign_id: str, counts: Mapping[str, int], *, quiet_s: float) -> set[str]:
        return self.inner.recount(campaign_id, counts, quiet_s=quiet_s)

    def remaining(self, pool: str, template_id: str) -> int | None:
        return self.inner.remaining(pool, template_id)

    def loaded(self, campaign_id: str, pools: Sequence[str]) -> bool:
        return self.inner.loaded(campaign_id, pools)

    def begin_rebuild(self, campaign_id: str, *, ttl_s: float) -> str | None:
        return self.inner.begin_rebuild(campaign_id, ttl_s=ttl_s)

    def end_rebuild(self, campaign_id: str, token: str) -> None:
        self.inner.end_rebuild(campaign_id, token)

    def forget(self, campaign_id: str, pools: Sequence[str]) -> None:
        self.inner.forget(campaign_id, pools)

    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        self.inner.reset_pool(pool, stock=stock, claimed=claimed)

    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        self.inner.reset_campaign(campaign_id, claimed=claimed)

    def enter(
        self, draw: str, entries: Sequence[DrawEntry], *, entries_max: int
    ) -> list[EntryOutcome]:
        return self.inner.enter(draw, entries, entries_max=entries_max)

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        return self.inner.draw(
            draw, chunk_size=chunk_size, pending_max=pending_max, lock_ttl_s=lock_ttl_s
        )

    def draw_results(self, draw: str, tickets: Sequence[str]) -> list[DrawResult | None]:
        return self.inner.draw_results(draw, tickets)

    def drawn(self, draw: str, *, start: int, limit: int) -> list[DrawnEntry]:
        return self.inner.drawn(draw, start=start, limit=limit)

    def forget_draw(self, draw: str) -> None:
        self.inner.forget_draw(draw)

    def close(self) -> None:
        self.inner.close()


class DiesBeforeSettling(GateInFront):
    """While ``dying``, the process is killed between COMMIT and telling the gate."""

    dying = True

    def settle(self, reservations: Sequence[tuple[ReserveRequest, int]]) -> None:
        if not self.dying:
            self.inner.settle(reservations)


class SlowToAnswer(GateInFront):
    """The gate's answer arrives after the reservation's ttl has run out."""

    delay_s = 0.0

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        answers = self.inner.reserve(requests)
        time.sleep(self.delay_s)
        return answers


@pytest.mark.serial
def test_reservations_left_by_a_dead_process_are_settled_or_released(
    stack: Stack, tmp_path: Path
) -> None:
    gate = DiesBeforeSettling(stack.new_gate())
    with make_world(
        database_url=stack.database_url, tmp_path=tmp_path, gate=gate, **FENCED
    ) as world:
        users = register_many(world, range(5))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        committed = [claim_one(world, u, f"k-{u}") for u in users[:2]]
        assert [r.outcome for r in committed] == ["issued", "issued"]
        # Three reservations of a process that died before committing them.
        row = world.platform.campaigns.get(CAMPAIGN)
        assert row is not None
        orphans = [
            ReserveRequest(
                pool=pool_key(CAMPAIGN, "r1", "wechat"),
                template_id=TEMPLATE,
                person_id=person_of(world, u),
                limit=row.config.limits.per_person_per_round_per_channel,
                campaign_id=CAMPAIGN,
                campaign_limit=row.config.limits.per_person_per_campaign,
            )
            for u in users[2:]
        ]
        assert all(a.outcome is ReserveOutcome.OK for a in world.rt.gate.reserve(orphans))
        assert remaining(world) == 5

        # Another, healthy process reaps (this one's own reaper is stopped, so the
        # counts below are that process's). Younger than the fence, the
        # reservations may still commit somewhere: left alone.
        world.platform.gatekeeper.stop()
        gate.dying = False
        assert reap_stale(world.rt) == ReapReport(settled=0, released=0)
        time.sleep(world.rt.settings.gate_fence_s + 0.2)
        assert reap_stale(world.rt) == ReapReport(settled=2, released=3)
        assert reap_stale(world.rt) == ReapReport(settled=0, released=0)

        # The committed two keep their vouchers; the stock of the other three is sold again.
        assert remaining(world) == 8
        again = [claim_one(world, u, f"k2-{u}") for u in users]
        assert [r.outcome for r in again] == ["already_claimed"] * 2 + ["issued"] * 3
        assert assert_books(world).issued == 5


@pytest.mark.serial
def test_a_reservation_older_than_its_ttl_is_never_committed(stack: Stack, tmp_path: Path) -> None:
    gate = SlowToAnswer(stack.new_gate())
    with make_world(
        database_url=stack.database_url, tmp_path=tmp_path, gate=gate, **FENCED
    ) as world:
        user = world.register(1)
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        gate.delay_s = world.rt.settings.claim_reservation_ttl_s + 0.1

        late = claim_one(world, user, "k-late")

        assert late.outcome == "commit_timeout"
        assert late.answer.status_code == 503
        assert not stored_vouchers(world)
        assert remaining(world) == 10  # handed back
        gate.delay_s = 0
        assert claim_one(world, user, "k-late").outcome == "issued"
        assert assert_books(world).issued == 1


def test_a_claim_the_store_refuses_does_not_sink_its_batch(stack: Stack, tmp_path: Path) -> None:
    """The gate forgot a committed claim (it drifted); the store's unique claim slot
    refuses the second voucher, and only that claim of the batch is refused."""
    with stack.world(tmp_path) as world:
        users = register_many(world, range(5))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))
        first = claim_one(world, users[0], "k-first")
        assert first.outcome == "issued"
        world.rt.gate.reset_pool(
            pool_key(CAMPAIGN, "r1", "wechat"), stock={TEMPLATE: 9}, claimed={}
        )

        results = world.platform.claims.claim("wechat", [claim_request(u, f"k-{u}") for u in users])

        assert [r.outcome for r in results] == ["already_claimed"] + ["issued"] * 4
        stored = stored_vouchers(world)
        assert len(stored) == 5
        assert len({s.person_id for s in stored}) == 5
        # The refused claim's reservation went back to the gate.
        assert remaining(world) == 5


def test_a_store_the_claim_path_cannot_read_answers_503_and_takes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    """The claimants query fails in the driver (its table is gone): every claim of
    the batch hears store_unavailable, a retryable 503, and the stock is untouched."""
    with stack.world(tmp_path) as world:
        users = register_many(world, range(3))
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 10}}))

        with table_gone(stack.database_url, "person_accounts"):
            results = world.platform.claims.claim(
                "wechat", [claim_request(u, f"k-{u}") for u in users]
            )

        assert [r.outcome for r in results] == ["store_unavailable"] * 3
        assert all(r.answer.status_code == 503 for r in results)
        assert remaining(world) == 10
        assert not stored_vouchers(world)
        # Once the store is back, the same keys go through.
        again = world.platform.claims.claim("wechat", [claim_request(u, f"k-{u}") for u in users])
        assert [r.outcome for r in again] == ["issued"] * 3


# -- the commit queue's bound: wait for room, then 429 with nothing reserved ----------


@pytest.mark.serial
def test_a_claim_waits_for_room_in_the_commit_queue_and_is_issued(
    stack: Stack, tmp_path: Path
) -> None:
    """Backpressure is a short wait, not a refusal: with the queue full (one place,
    the writer held up), the second claim waits for the first to be committed and
    is then issued; nobody is told to come back."""
    with stack.world(
        tmp_path, claim_queue_max=1, claim_queue_wait_ms=10_000, claim_commit_timeout_s=30
    ) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        first, second = register_many(world, [1, 2])
        with writers_held(stack.database_url, for_s=1.0), ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(claim_one, world, first, "k-first")
            wait_until(
                lambda: world.platform.claims.committer.waiting >= 1,
                what="the first claim in the commit queue",
            )
            assert world.platform.claims.committer.waiting == 1  # the one place is taken
            late = claim_one(world, second, "k-second")
            assert waiting.result(30).outcome == "issued"
        assert late.outcome == "issued", late
        assert remaining(world) == 3
        assert assert_books(world).issued == 2
        assert world.platform.claims.committer.waiting == 0


@pytest.mark.serial
def test_a_claim_beyond_the_commit_queue_is_429_with_nothing_reserved(
    stack: Stack, tmp_path: Path
) -> None:
    """Past the wait, ``overloaded`` (429, retry after 1 s): refused before the gate,
    so no stock is held for it, nothing is stored, and the same key later succeeds."""
    with stack.world(
        tmp_path, claim_queue_max=1, claim_queue_wait_ms=0, claim_commit_timeout_s=30
    ) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        first, second = register_many(world, [1, 2])
        with writers_held(stack.database_url, for_s=1.5), ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(claim_one, world, first, "k-first")
            wait_until(
                lambda: world.platform.claims.committer.waiting >= 1,
                what="the first claim in the commit queue",
            )
            refused = claim_one(world, second, "k-second")
            assert refused.outcome == "overloaded", refused
            assert refused.answer.status_code == 429
            assert remaining(world) == 4  # the first claim's reservation only
            assert waiting.result(30).outcome == "issued"
        assert [s.person_id for s in stored_vouchers(world)] == [person_of(world, first)]
        again = claim_one(world, second, "k-second")
        assert again.outcome == "issued", again
        assert remaining(world) == 3
        assert assert_books(world).issued == 2


def test_more_claims_than_the_commit_queue_holds_are_refused_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    """A batch larger than the whole queue can never fit: 429 at once, not after
    the wait; nothing reserved."""
    with stack.world(tmp_path, claim_queue_max=2, claim_queue_wait_ms=10_000) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        users = register_many(world, [1, 2, 3])
        started = time.monotonic()
        results = world.platform.claims.claim("wechat", [claim_request(u, f"k-{u}") for u in users])
        assert [r.outcome for r in results] == ["overloaded"] * 3
        assert time.monotonic() - started < 9  # not the 10 s wait
        assert remaining(world) == 5
        assert stored_vouchers(world) == []
        # Within the bound, the same keys go through.
        assert [
            r.outcome
            for r in world.platform.claims.claim(
                "wechat", [claim_request(u, f"k-{u}") for u in users[:2]]
            )
        ] == ["issued", "issued"]


def test_one_key_twice_in_a_batch_makes_one_voucher_and_is_let_go(
    stack: Stack, tmp_path: Path
) -> None:
    """A channel that puts the same key in one batch twice gets one voucher and a
    409 for the second item; the key is let go after, so the retry replays."""
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        [user] = register_many(world, [1])
        first, second = world.platform.claims.claim(
            "wechat", [claim_request(user, "k-dup"), claim_request(user, "k-dup")]
        )
        assert first.outcome == "issued", first
        assert second.outcome == "idempotency_in_flight", second
        assert second.answer.status_code == 409
        assert remaining(world) == 4
        again = claim_one(world, user, "k-dup")
        assert again.outcome == "replayed"
        assert again.answer == first.answer
        assert [s.id for s in stored_vouchers(world)] == [voucher_id(first)]
        assert world.platform.claims.committer.waiting == 0


def test_a_stored_voucher_keeps_the_instants_its_answer_gave(stack: Stack, tmp_path: Path) -> None:
    """The voucher row is written in bulk (``COPY`` on PostgreSQL, its instants as
    text): what the store holds is to the microsecond what the person was told."""
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        [user] = register_many(world, [1])
        world.clock.set(world.clock.now() + timedelta(seconds=7, microseconds=123_457))
        result = claim_one(world, user, "k-time")
        told = result.answer.body["voucher"]
        with world.rt.store.unit_of_work(readonly=True) as uow:
            row = uow.vouchers.get_voucher(told["voucher_id"])
        assert row is not None
        require(world.clock.now().microsecond != 0, "the instant has microseconds to keep")
        assert row.issued_at == world.clock.now()
        assert row.issued_at.isoformat() == told["issued_at"]
        assert row.valid_from.isoformat() == told["valid_from"]
        assert row.valid_until.isoformat() == told["valid_until"]


def test_claims_waiting_for_room_hear_at_once_when_the_platform_stops(
    stack: Stack, tmp_path: Path
) -> None:
    """A claim waiting for room in the commit queue is told ``store_unavailable`` when
    the platform shuts down, not after its whole wait; nothing is reserved for it."""
    with stack.world(tmp_path, claim_queue_max=1, claim_queue_wait_ms=10_000) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        [user] = register_many(world, [1])
        committer = world.platform.claims.committer
        committer.make_room(1, wait_s=0)  # the queue is full
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(claim_one, world, user, "k-wait")
            # Nothing shows a caller inside make_room's wait (``waiting`` counts the
            # place taken above), so a moment for the claim to get there. A claim
            # still on its way is refused by the closed queue with the same answer:
            # a slow machine weakens this test, it cannot fail it.
            time.sleep(0.2)
            stopped_at = time.monotonic()
            committer.close()
            result = waiting.result(30)
        assert time.monotonic() - stopped_at < 5  # not the 10 s wait
        assert result.outcome == "store_unavailable", result
        assert result.answer.status_code == 503
        assert remaining(world) == 5
        assert stored_vouchers(world) == []
