"""One contract for every ClaimGate: the memory gate and the Redis gate answer alike.

A flash sale is only fair if no voucher is sold twice and no person takes
more than the rules allow, whichever gate the deployment runs; so every test
here runs against both, the Redis one on a real server (failing, not
skipping, in CI when the server is down). The few tests at the end are about
how the Redis gate does it: round trips per batch, its key layout, scripts
the server forgot.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.cluster import RedisCluster

from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.redis_gate import RedisGate
from lequan.ports import ClaimGate, ReserveOutcome, ReserveRequest, ReserveResult

OK = ReserveOutcome.OK
SOLD_OUT = ReserveOutcome.SOLD_OUT
ALREADY_CLAIMED = ReserveOutcome.ALREADY_CLAIMED
CAMPAIGN_LIMIT = ReserveOutcome.CAMPAIGN_LIMIT
UNKNOWN_STOCK = ReserveOutcome.UNKNOWN_STOCK

THREAD_JOIN_TIMEOUT_S = 60.0


EXACT_GATES = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis_cluster", marks=pytest.mark.redis),
]
BUCKETED_GATES = [
    pytest.param("redis_buckets", marks=pytest.mark.redis),
    pytest.param("redis_cluster_buckets", marks=pytest.mark.redis),
]
BUCKETS = 4


def make_gate(request: pytest.FixtureRequest, kind: str) -> ClaimGate:
    buckets = BUCKETS if kind.endswith("_buckets") else 1
    if kind == "memory":
        return MemoryGate()
    if kind.startswith("redis_cluster"):
        host, port = request.getfixturevalue("redis_cluster")
        return RedisGate(
            RedisCluster(host=host, port=port, max_connections=1024),
            key_prefix=f"lqtest:{uuid.uuid4().hex[:12]}:",
            buckets=buckets,
        )
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return RedisGate.from_url(url, key_prefix=prefix, buckets=buckets)


@pytest.fixture(params=EXACT_GATES)
def gate(request: pytest.FixtureRequest) -> Iterator[ClaimGate]:
    """Gates whose every answer, ``remaining`` included, is the memory gate's."""
    chosen = make_gate(request, request.param)
    yield chosen
    chosen.close()


@pytest.fixture(params=[*EXACT_GATES, *BUCKETED_GATES])
def any_gate(request: pytest.FixtureRequest) -> Iterator[ClaimGate]:
    """Every gate, bucketed ones too: the same outcomes, ``remaining`` per bucket."""
    chosen = make_gate(request, request.param)
    yield chosen
    chosen.close()


def is_bucketed(gate: ClaimGate) -> bool:
    return isinstance(gate, RedisGate) and gate.buckets > 1


def claim(
    person: str,
    *,
    pool: str = "pool-a",
    template: str = "t1",
    limit: int = 1,
    campaign: str = "camp-1",
    campaign_limit: int = 0,
) -> ReserveRequest:
    return ReserveRequest(
        pool=pool,
        template_id=template,
        person_id=person,
        limit=limit,
        campaign_id=campaign,
        campaign_limit=campaign_limit,
    )


def one_per_campaign(person: str, *, pool: str = "pool-a") -> ReserveRequest:
    """A claim under camp-1's campaign-wide limit of one."""
    return claim(person, pool=pool, campaign="camp-1", campaign_limit=1)


def ok(seq: int, remaining: int) -> ReserveResult:
    return ReserveResult(OK, claim_seq=seq, remaining=remaining)


def refused(outcome: ReserveOutcome, remaining: int) -> ReserveResult:
    return ReserveResult(outcome, claim_seq=0, remaining=remaining)


# --- the rules, one at a time -------------------------------------------------------


def test_reserve_takes_one_and_reports_seq_and_remaining(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 3}, claimed={})

    assert gate.reserve([claim("ann")]) == [ok(seq=1, remaining=2)]
    assert gate.remaining("pool-a", "t1") == 2


def test_sold_out_once_the_stock_is_gone(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 1, "t0": 0}, claimed={})

    assert gate.reserve([claim("ann"), claim("bob"), claim("cy", template="t0")]) == [
        ok(seq=1, remaining=0),
        refused(SOLD_OUT, 0),
        refused(SOLD_OUT, 0),
    ]
    # Sold out is not unknown: the gate still holds the template, at zero.
    assert gate.remaining("pool-a", "t1") == 0
    assert gate.remaining("pool-a", "t0") == 0


def test_one_claim_per_person_per_pool_whatever_the_template(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5, "t2": 5}, claimed={})

    assert gate.reserve([claim("ann", template="t1")]) == [ok(seq=1, remaining=4)]
    assert gate.reserve([claim("ann", template="t2")]) == [refused(ALREADY_CLAIMED, 5)]
    assert gate.remaining("pool-a", "t2") == 5


def test_a_limit_of_two_gives_seq_one_then_two_then_refuses(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 10}, claimed={})

    answers = [gate.reserve([claim("ann", limit=2)])[0] for _ in range(3)]

    assert answers == [ok(seq=1, remaining=9), ok(seq=2, remaining=8), refused(ALREADY_CLAIMED, 8)]


def test_campaign_limit_counts_claims_across_pools(gate: ClaimGate) -> None:
    for pool in ("pool-a", "pool-b", "pool-c"):
        gate.reset_pool(pool, stock={"t1": 5}, claimed={})
    gate.reset_campaign("camp-1", claimed={})

    assert gate.reserve([one_per_campaign("ann", pool="pool-a")]) == [ok(seq=1, remaining=4)]
    assert gate.reserve([one_per_campaign("ann", pool="pool-b")]) == [refused(CAMPAIGN_LIMIT, 5)]
    assert gate.reserve([one_per_campaign("bob", pool="pool-b")]) == [ok(seq=1, remaining=4)]


def test_campaign_limit_of_two_allows_two_pools_then_refuses(gate: ClaimGate) -> None:
    for pool in ("pool-a", "pool-b", "pool-c"):
        gate.reset_pool(pool, stock={"t1": 5}, claimed={})

    answers = [
        gate.reserve([claim("ann", pool=pool, campaign="camp-2", campaign_limit=2)])[0]
        for pool in ("pool-a", "pool-b", "pool-c")
    ]

    assert answers == [ok(1, 4), ok(1, 4), refused(CAMPAIGN_LIMIT, 5)]


def test_unknown_stock_for_a_pool_or_template_the_gate_does_not_hold(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})

    assert gate.reserve([claim("ann", pool="nowhere"), claim("ann", template="t9")]) == [
        refused(UNKNOWN_STOCK, 0),
        refused(UNKNOWN_STOCK, 0),
    ]
    assert gate.remaining("nowhere", "t1") is None
    assert gate.remaining("pool-a", "t9") is None


def test_unknown_stock_comes_first_and_costs_no_campaign_claim(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    gate.reset_campaign("camp-1", claimed={"bob": 1})

    # bob is at his campaign limit, but the gate cannot sell what it does not hold.
    assert gate.reserve([one_per_campaign("bob", pool="nowhere")]) == [refused(UNKNOWN_STOCK, 0)]
    # ann's failed attempt on an unknown pool must not use up her one campaign claim.
    assert gate.reserve([one_per_campaign("ann", pool="nowhere")]) == [refused(UNKNOWN_STOCK, 0)]
    assert gate.reserve([one_per_campaign("ann")]) == [ok(1, 4)]


def test_refusals_by_the_pool_give_the_campaign_claim_back(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 0}, claimed={})
    gate.reset_pool("pool-b", stock={"t1": 5}, claimed={"ann": 1})
    gate.reset_pool("pool-c", stock={"t1": 5}, claimed={})

    def limited(pool: str) -> ReserveRequest:
        return claim("ann", pool=pool, campaign="camp-9", campaign_limit=1)

    assert gate.reserve([limited("pool-a")]) == [refused(SOLD_OUT, 0)]
    assert gate.reserve([limited("pool-b")]) == [refused(ALREADY_CLAIMED, 5)]
    assert gate.reserve([limited("pool-c")]) == [ok(1, 4)]


def test_the_same_person_twice_in_one_batch_gets_one(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5, "t2": 5}, claimed={})

    assert gate.reserve([claim("ann"), claim("ann", template="t2"), claim("ann")]) == [
        ok(1, 4),
        refused(ALREADY_CLAIMED, 5),
        refused(ALREADY_CLAIMED, 4),
    ]
    assert gate.remaining("pool-a", "t1") == 4


def test_a_refusal_earlier_in_the_batch_does_not_hold_the_campaign_claim(
    gate: ClaimGate,
) -> None:
    # Each request is answered as if it came alone, in order: ann's sold-out
    # attempt comes first and must not keep her from the second pool.
    gate.reset_pool("pool-a", stock={"t1": 0}, claimed={})
    gate.reset_pool("pool-b", stock={"t1": 5}, claimed={})

    batch = [
        claim("ann", pool="pool-a", campaign="camp-1", campaign_limit=1),
        claim("ann", pool="pool-b", campaign="camp-1", campaign_limit=1),
        claim("ann", pool="pool-b", campaign="camp-1", campaign_limit=1, limit=2),
    ]

    assert gate.reserve(batch) == [refused(SOLD_OUT, 0), ok(1, 4), refused(CAMPAIGN_LIMIT, 4)]


def test_a_mixed_batch_is_answered_in_input_order(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 2, "t2": 1}, claimed={})
    gate.reset_pool("pool-b", stock={"t1": 1}, claimed={"dan": 1})
    gate.reset_pool("pool-c", stock={"t1": 3}, claimed={})
    gate.reset_campaign("camp-x", claimed={"eve": 1})

    batch = [
        claim("ann", pool="pool-a"),
        claim("bob", pool="pool-b", campaign="camp-x", campaign_limit=1),
        claim("cy", pool="pool-a", template="t2"),
        claim("dan", pool="pool-b"),
        claim("eve", pool="pool-c", campaign="camp-x", campaign_limit=1),
        claim("fay", pool="pool-b"),
        claim("ann", pool="pool-c", campaign="camp-y", campaign_limit=1),
        claim("gus", pool="pool-z"),
        claim("hal", pool="pool-a", template="t2"),
        claim("ann", pool="pool-c", campaign="camp-y", campaign_limit=1, limit=5),
        claim("ivy", pool="pool-a", limit=3),
    ]

    assert gate.reserve(batch) == [
        ok(1, 1),
        ok(1, 0),
        ok(1, 0),
        refused(ALREADY_CLAIMED, 0),
        refused(CAMPAIGN_LIMIT, 3),
        refused(SOLD_OUT, 0),
        ok(1, 2),
        refused(UNKNOWN_STOCK, 0),
        refused(SOLD_OUT, 0),
        refused(CAMPAIGN_LIMIT, 2),
        ok(1, 0),
    ]


# --- release and reset ----------------------------------------------------------------


def test_release_restores_the_stock_and_lets_the_person_claim_again(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 1}, claimed={})
    gate.reset_pool("pool-b", stock={"t1": 1}, claimed={})
    taken = claim("ann", campaign="camp-1", campaign_limit=1)
    assert gate.reserve([taken]) == [ok(1, 0)]

    gate.release([(taken, 1)])

    assert gate.remaining("pool-a", "t1") == 1
    assert gate.reserve([claim("ann", pool="pool-b", campaign="camp-1", campaign_limit=1)]) == [
        ok(1, 0)
    ]
    assert gate.reserve([taken]) == [refused(CAMPAIGN_LIMIT, 1)]


def test_release_of_many_pools_in_one_batch(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 3}, claimed={})
    gate.reset_pool("pool-b", stock={"t1": 3}, claimed={})
    batch = [claim("ann"), claim("bob"), claim("ann", pool="pool-b")]
    results = gate.reserve(batch)
    assert [r.outcome for r in results] == [OK, OK, OK]

    gate.release(
        [(request, result.claim_seq) for request, result in zip(batch, results, strict=True)]
    )

    assert gate.remaining("pool-a", "t1") == 3
    assert gate.remaining("pool-b", "t1") == 3
    assert gate.reserve(batch) == [ok(1, 2), ok(1, 1), ok(1, 2)]


def test_releasing_what_was_never_reserved_does_not_corrupt_the_counts(
    gate: ClaimGate,
) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    stranger = claim("zed", campaign="camp-1", campaign_limit=1)

    gate.release([(stranger, 1), (claim("zed", pool="nowhere"), 1)])

    # zed holds no claim in the pool, so nothing came back to the stock, and
    # zed's counts did not go below zero: one claim is still all zed gets.
    assert gate.remaining("pool-a", "t1") == 5
    assert gate.remaining("nowhere", "t1") is None
    assert gate.reserve([stranger]) == [ok(1, 4)]
    assert gate.reserve([stranger]) == [refused(CAMPAIGN_LIMIT, 4)]
    assert gate.reserve([claim("zed")]) == [refused(ALREADY_CLAIMED, 4)]


def test_a_release_after_a_reset_gives_back_nothing_the_reset_already_counted(
    gate: ClaimGate,
) -> None:
    # The store never saw ann's failed commit, so the reset rebuilt the pool
    # without it; the late release must not add her voucher a second time.
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    taken = claim("ann")
    assert gate.reserve([taken]) == [ok(1, 4)]
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})

    gate.release([(taken, 1)])

    assert gate.remaining("pool-a", "t1") == 5


def test_a_reservation_is_pending_until_settled_or_released_once(any_gate: ClaimGate) -> None:
    gate = any_gate
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    ann, bob = claim("ann", campaign_limit=1), claim("bob", campaign_limit=1)
    assert [r.outcome for r in gate.reserve([ann, bob])] == [OK, OK]
    assert sorted(gate.stale("pool-a", older_than_s=0, limit=10)) == [
        ("t1", "ann", 1),
        ("t1", "bob", 1),
    ]
    # Pending for less than an hour: nobody's reservation is stale yet.
    assert gate.stale("pool-a", older_than_s=3600, limit=10) == []

    gate.settle([(ann, 1)])
    gate.release([(ann, 1)])  # committed: a late release gives nothing back
    gate.release([(bob, 1)])
    gate.release([(bob, 1)])  # and a second release of bob's nothing more

    assert gate.stale("pool-a", older_than_s=0, limit=10) == []
    assert gate.remaining("pool-a", "t1") == 4
    # ann's voucher is committed, so her counts stay; bob's came back whole, once.
    assert [r.outcome for r in gate.reserve([ann, bob])] == [CAMPAIGN_LIMIT, OK]
    assert gate.remaining("pool-a", "t1") == 3


def test_pending_of_finds_the_reservations_of_these_people_with_their_age(
    any_gate: ClaimGate,
) -> None:
    gate = any_gate
    for pool in ("pool-a", "pool-b"):
        gate.reset_pool(pool, stock={"t1": 5, "t2": 5}, claimed={})
    ann, ann_t2 = claim("ann", limit=2), claim("ann", template="t2", limit=2)
    ann_b, bob = claim("ann", pool="pool-b"), claim("bob")
    assert [r.outcome for r in gate.reserve([ann, ann_t2, ann_b, bob])] == [OK] * 4
    gate.settle([(ann, 1)])  # committed: no longer pending

    found = gate.pending_of(["pool-a", "pool-b"], ["ann", "carl"])

    assert sorted((p.pool, p.template_id, p.person_id, p.claim_seq) for p in found) == [
        ("pool-a", "t2", "ann", 2),
        ("pool-b", "t1", "ann", 1),
    ]
    assert all(0 <= p.age_s < 60 for p in found)
    gate.release([(ann_t2, 2)])
    assert [p.pool for p in gate.pending_of(["pool-a", "pool-b"], ["ann"])] == ["pool-b"]
    assert gate.pending_of(["pool-a"], ["carl"]) == []


def test_recount_lowers_campaign_counts_nothing_accounts_for_unless_taken_lately(
    any_gate: ClaimGate,
) -> None:
    """What a batch that broke between its steps leaves: counts with nothing behind them."""
    gate = any_gate
    for pool in ("pool-a", "pool-b"):
        gate.reset_pool(pool, stock={"t1": 5}, claimed={})
    gate.reset_campaign("camp-1", claimed={"ann": 1, "bob": 2})
    [taken] = gate.reserve([one_per_campaign("carl")])  # taken just now
    assert taken.outcome is OK

    left = gate.recount("camp-1", {"ann": 0, "bob": 1, "carl": 0, "dan": 0}, quiet_s=3600)

    assert left == {"carl"}  # maybe a claim between its steps: left alone
    assert [
        r.outcome
        for r in gate.reserve(
            [
                one_per_campaign("ann", pool="pool-b"),
                claim("bob", pool="pool-b", campaign_limit=2),
                one_per_campaign("carl", pool="pool-b"),
            ]
        )
    ] == [OK, OK, CAMPAIGN_LIMIT]
    # Never raised: a count at or under what the caller accounts for stays.
    assert gate.recount("camp-1", {"ann": 5, "bob": 0}, quiet_s=3600) == {"bob"}
    assert gate.recount("camp-1", {"carl": 1}, quiet_s=3600) == set()
    assert gate.recount("camp-1", {"carl": 0}, quiet_s=0) == set()
    [again] = gate.reserve([one_per_campaign("carl", pool="pool-b")])
    assert again.outcome is OK


def test_loaded_until_forgotten_then_unknown(any_gate: ClaimGate) -> None:
    gate = any_gate
    assert not gate.loaded("camp-1", ["pool-a"])
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    assert not gate.loaded("camp-1", ["pool-a"])  # the campaign's counts are not there yet
    gate.reset_campaign("camp-1", claimed={})
    assert gate.loaded("camp-1", ["pool-a"])
    assert not gate.loaded("camp-1", ["pool-a", "pool-b"])

    gate.forget("camp-1", ["pool-a"])

    assert not gate.loaded("camp-1", ["pool-a"])
    assert gate.remaining("pool-a", "t1") is None
    assert gate.reserve([claim("ann")]) == [refused(UNKNOWN_STOCK, 0)]


def test_one_rebuilder_at_a_time_on_a_shared_gate(any_gate: ClaimGate) -> None:
    gate = any_gate
    token = gate.begin_rebuild("camp-1", ttl_s=30)
    assert token is not None
    if gate.shared:
        assert gate.begin_rebuild("camp-1", ttl_s=30) is None
        gate.end_rebuild("camp-1", "not-the-token")  # only the holder lets go
        assert gate.begin_rebuild("camp-1", ttl_s=30) is None
    gate.end_rebuild("camp-1", token)
    again = gate.begin_rebuild("camp-1", ttl_s=30)
    assert again is not None
    gate.end_rebuild("camp-1", again)


@pytest.fixture(params=BUCKETED_GATES)
def bucketed_gate(request: pytest.FixtureRequest) -> Iterator[RedisGate]:
    chosen = make_gate(request, request.param)
    assert isinstance(chosen, RedisGate)
    yield chosen
    chosen.close()


def people_in_bucket(gate: RedisGate, bucket: int, count: int) -> list[str]:
    found: list[str] = []
    n = 0
    while len(found) < count:
        if gate.bucket_of(f"person-{n}") == bucket:
            found.append(f"person-{n}")
        n += 1
    return found


def test_a_dry_bucket_borrows_so_every_unit_is_sold(bucketed_gate: RedisGate) -> None:
    gate = bucketed_gate
    gate.reset_pool("pool-a", stock={"t1": 10}, claimed={})  # 3, 3, 2, 2 per bucket
    crowd = people_in_bucket(gate, 3, 11)  # all of them at home in one bucket

    answers = gate.reserve([claim(p) for p in crowd[:6]])
    answers += [gate.reserve([claim(p)])[0] for p in crowd[6:]]

    assert [a.outcome for a in answers] == [OK] * 10 + [SOLD_OUT]
    assert all(a.claim_seq == 1 for a in answers[:10])
    assert gate.remaining("pool-a", "t1") == 0
    # Borrowed units count as the borrower's: each person got one, and gives it back whole.
    assert gate.reserve([claim(crowd[0])]) == [refused(ALREADY_CLAIMED, 0)]
    gate.release([(claim(crowd[0]), 1)])
    assert gate.remaining("pool-a", "t1") == 1
    assert gate.reserve([claim(crowd[10])])[0].outcome is OK


def test_a_bucketed_pool_spreads_over_slots_and_a_person_stays_home(
    bucketed_gate: RedisGate,
) -> None:
    gate = bucketed_gate
    keys = [gate._bucket_keys("pool-a", b) for b in range(gate.buckets)]
    slots = {redis.crc.key_slot(key.encode()) for bucket_keys in keys for key in bucket_keys}
    assert len(slots) == gate.buckets
    for bucket_keys in keys:
        assert len({redis.crc.key_slot(key.encode()) for key in bucket_keys}) == 1
    # A person's claims, whatever bucket the stock came from, are journalled
    # and counted in their home bucket alone.
    gate.reset_pool("pool-a", stock={"t1": 1}, claimed={})  # one unit, in bucket 0
    ann = next(p for p in (f"ann-{n}" for n in range(100)) if gate.bucket_of(p) != 0)
    assert gate.reserve([claim(ann)])[0].outcome is OK  # borrowed from bucket 0
    where = [
        bool(gate.stale("pool-a", older_than_s=0, limit=10)),
        *(
            gate._client.hexists(gate._bucket_keys("pool-a", b)[1], ann)
            for b in range(gate.buckets)
        ),
    ]
    home = gate.bucket_of(ann)
    assert where == [True, *(b == home for b in range(gate.buckets))]


def test_concurrent_crowd_on_few_units_sells_each_once_without_false_sold_out(
    any_gate: ClaimGate,
) -> None:
    gate = any_gate
    stock = 7  # fewer units than buckets x2: most buckets run dry and borrow
    gate.reset_pool("flash", stock={"t1": stock}, claimed={})
    answers: list[ReserveResult] = []

    def claimer(n: int) -> Callable[[], None]:
        def work() -> None:
            answers.extend(gate.reserve([claim(f"p{n}-{k}", pool="flash") for k in range(3)]))

        return work

    run_together([claimer(n) for n in range(20)])

    outcomes = Counter(a.outcome for a in answers)
    assert outcomes == {OK: stock, SOLD_OUT: 60 - stock}
    assert gate.remaining("flash", "t1") == 0


def test_reset_pool_replaces_stock_and_person_counts(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    assert gate.reserve([claim("ann"), claim("bob")]) == [ok(1, 4), ok(1, 3)]

    gate.reset_pool("pool-a", stock={"t2": 7}, claimed={"bob": 1, "cy": 0})

    assert gate.remaining("pool-a", "t1") is None
    assert gate.remaining("pool-a", "t2") == 7
    assert gate.reserve(
        [claim("ann", template="t2"), claim("bob", template="t2"), claim("cy", template="t2")]
    ) == [ok(1, 6), refused(ALREADY_CLAIMED, 6), ok(1, 5)]


def test_reset_pool_with_no_stock_forgets_the_pool(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    assert gate.reserve([claim("ann")]) == [ok(1, 4)]

    gate.reset_pool("pool-a", stock={}, claimed={})

    assert gate.remaining("pool-a", "t1") is None
    assert gate.reserve([claim("ann")]) == [refused(UNKNOWN_STOCK, 0)]
    gate.reset_pool("pool-a", stock={"t1": 1}, claimed={})
    assert gate.reserve([claim("ann")]) == [ok(1, 0)]


def test_reset_pool_of_many_people_is_written_in_chunks_and_read_whole(gate: ClaimGate) -> None:
    people = {f"person-{n}": 1 for n in range(25_000)}

    gate.reset_pool("pool-a", stock={"t1": 10}, claimed=people)

    assert gate.reserve([claim("person-0"), claim("person-24999"), claim("new")]) == [
        refused(ALREADY_CLAIMED, 10),
        refused(ALREADY_CLAIMED, 10),
        ok(1, 9),
    ]


def test_reset_refuses_negative_values_and_keeps_the_old_state(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})

    with pytest.raises(ValueError, match="must not be negative"):
        gate.reset_pool("pool-a", stock={"t1": -1}, claimed={})
    with pytest.raises(ValueError, match="must not be negative"):
        gate.reset_pool("pool-a", stock={"t1": 1}, claimed={"ann": -1})
    with pytest.raises(ValueError, match="must not be negative"):
        gate.reset_campaign("camp-1", claimed={"ann": -1})

    assert gate.remaining("pool-a", "t1") == 5


def test_reset_campaign_replaces_the_campaign_counts(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    gate.reset_pool("pool-b", stock={"t1": 5}, claimed={})
    assert gate.reserve([one_per_campaign("bob", pool="pool-b")]) == [ok(1, 4)]

    gate.reset_campaign("camp-1", claimed={"ann": 1})

    assert gate.reserve([one_per_campaign("ann"), one_per_campaign("bob")]) == [
        refused(CAMPAIGN_LIMIT, 5),
        ok(1, 4),
    ]

    gate.reset_campaign("camp-1", claimed={})

    assert gate.reserve([one_per_campaign("ann")]) == [ok(1, 3)]


def test_a_batch_beyond_the_limit_is_refused_before_any_work(gate: ClaimGate) -> None:
    gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    too_many = [claim(f"person-{n}") for n in range(10_001)]

    with pytest.raises(ValueError, match="batch_size_max"):
        gate.reserve(too_many)
    with pytest.raises(ValueError, match="batch_size_max"):
        gate.release([(request, 1) for request in too_many])

    assert gate.remaining("pool-a", "t1") == 5


# --- the rules against a model, on random histories -----------------------------------

POOL_LIMITS = {"pool-a": 1, "pool-b": 2}
POOL_TEMPLATES = {"pool-a": ("t1", "t2"), "pool-b": ("t1",)}
CAMPAIGN_LIMITS = {"camp-1": 1, "camp-2": 0, "camp-3": 2}
PEOPLE = ("ann", "bob", "cy")
TEMPLATES = ("t1", "t2", "t3")  # t2 is not stocked in pool-b, t3 nowhere


@dataclass
class RulesModel:
    """The claim rules in their plainest form, answering one request at a time."""

    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    pool_claimed: Counter[tuple[str, str]] = field(default_factory=Counter)
    campaign_claimed: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (pool, template, person) -> claim seqs reserved and not yet released
    pending: dict[tuple[str, str, str], set[int]] = field(default_factory=dict)

    def reserve(self, request: ReserveRequest) -> ReserveResult:
        where = (request.pool, request.template_id)
        in_pool = (request.pool, request.person_id)
        in_campaign = (request.campaign_id, request.person_id)
        if where not in self.stock:
            return refused(UNKNOWN_STOCK, 0)
        left = self.stock[where]
        limited = request.campaign_limit > 0
        if limited and self.campaign_claimed[in_campaign] >= request.campaign_limit:
            return refused(CAMPAIGN_LIMIT, left)
        if self.pool_claimed[in_pool] >= request.limit:
            return refused(ALREADY_CLAIMED, left)
        if left == 0:
            return refused(SOLD_OUT, 0)
        self.stock[where] = left - 1
        self.pool_claimed[in_pool] += 1
        if limited:
            self.campaign_claimed[in_campaign] += 1
        seq = self.pool_claimed[in_pool]
        slots = self.pending.setdefault(
            (request.pool, request.template_id, request.person_id), set()
        )
        if seq in slots:  # an earlier one was released while this one is pending
            seq = min(set(range(1, request.limit + 1)) - slots)
        slots.add(seq)
        return ok(seq, left - 1)

    def release(self, request: ReserveRequest, seq: int) -> None:
        """Give back one pending reservation (the state machine releases only those)."""
        self.pending[(request.pool, request.template_id, request.person_id)].discard(seq)
        where = (request.pool, request.template_id)
        in_pool = (request.pool, request.person_id)
        _take_one(self.pool_claimed, in_pool)
        if where in self.stock:
            self.stock[where] += 1
        if request.campaign_limit > 0:
            _take_one(self.campaign_claimed, (request.campaign_id, request.person_id))

    def reset_pool(self, pool: str, stock: dict[str, int], claimed: dict[str, int]) -> None:
        self.stock = {k: v for k, v in self.stock.items() if k[0] != pool}
        self.stock.update({(pool, template): left for template, left in stock.items()})
        for person in PEOPLE:
            self.pool_claimed[(pool, person)] = claimed.get(person, 0)
        self.pending = {k: v for k, v in self.pending.items() if k[0] != pool}


def _take_one(counts: Counter[tuple[str, str]], key: tuple[str, str]) -> None:
    if counts[key] > 0:
        counts[key] -= 1


requests_st = st.builds(
    lambda pool, template, person, campaign: claim(
        person,
        pool=pool,
        template=template,
        limit=POOL_LIMITS[pool],
        campaign=campaign,
        campaign_limit=CAMPAIGN_LIMITS[campaign],
    ),
    st.sampled_from(sorted(POOL_LIMITS)),
    st.sampled_from(TEMPLATES),
    st.sampled_from(PEOPLE),
    st.sampled_from(sorted(CAMPAIGN_LIMITS)),
)
stock_st = st.integers(min_value=0, max_value=3)


class GateAgainstModel(RuleBasedStateMachine):
    """Random batches of reserves, releases and resets: the gate answers as the model."""

    def __init__(self, gate: ClaimGate) -> None:
        super().__init__()
        self.gate = gate
        self.model = RulesModel()
        # reserved and neither settled nor released, with their claim_seq
        self.held: list[tuple[ReserveRequest, int]] = []
        self.exact = not is_bucketed(gate)

    @initialize(stock_a=stock_st, stock_b=stock_st)
    def start(self, stock_a: int, stock_b: int) -> None:
        for pool, left in (("pool-a", stock_a), ("pool-b", stock_b)):
            stock = dict.fromkeys(POOL_TEMPLATES[pool], left)
            self.gate.reset_pool(pool, stock=stock, claimed={})
            self.model.reset_pool(pool, stock, {})
        for campaign in CAMPAIGN_LIMITS:
            self.gate.reset_campaign(campaign, claimed={})

    @rule(batch=st.lists(requests_st, min_size=1, max_size=8))
    def reserve(self, batch: list[ReserveRequest]) -> None:
        expected = [self.model.reserve(request) for request in batch]
        if self.exact:
            assert self.gate.reserve(batch) == expected
        else:
            # A bucketed gate answers a batch's buckets side by side, so when the
            # last units go, which request of a batch gets them may differ from
            # input order; one at a time it answers as the model, but for
            # ``remaining``, which is the bucket's.
            got = [self.gate.reserve([request])[0] for request in batch]
            assert [(a.outcome, a.claim_seq) for a in got] == [
                (a.outcome, a.claim_seq) for a in expected
            ]
        self.held.extend(
            (r, answer.claim_seq)
            for r, answer in zip(batch, expected, strict=True)
            if answer.outcome is OK
        )

    @precondition(lambda self: bool(self.held))
    @rule(count=st.integers(min_value=1, max_value=3), twice=st.booleans())
    def release(self, count: int, twice: bool) -> None:
        released, self.held = self.held[:count], self.held[count:]
        self.gate.release(released)
        if twice:  # a repeated release gives back nothing more
            self.gate.release(released)
        for request, seq in released:
            self.model.release(request, seq)

    @precondition(lambda self: bool(self.held))
    @rule(count=st.integers(min_value=1, max_value=3))
    def settle_then_release(self, count: int) -> None:
        settled, self.held = self.held[:count], self.held[count:]
        self.gate.settle(settled)
        self.gate.release(settled)  # committed: a late release must not give it back
        for request, seq in settled:
            self.model.pending[(request.pool, request.template_id, request.person_id)].discard(seq)

    @rule(
        stock=stock_st,
        claimed=st.dictionaries(st.sampled_from(PEOPLE), st.integers(min_value=0, max_value=2)),
    )
    def reconcile_pool_b(self, stock: int, claimed: dict[str, int]) -> None:
        self.gate.reset_pool("pool-b", stock={"t1": stock}, claimed=claimed)
        self.model.reset_pool("pool-b", {"t1": stock}, claimed)
        self.held = [(r, seq) for r, seq in self.held if r.pool != "pool-b"]

    @invariant()
    def stock_agrees(self) -> None:
        for pool in POOL_LIMITS:
            for template in TEMPLATES:
                assert self.gate.remaining(pool, template) == self.model.stock.get((pool, template))


def test_random_histories_match_the_model(any_gate: ClaimGate) -> None:
    gate = any_gate

    class OnThisGate(GateAgainstModel):
        def __init__(self) -> None:
            super().__init__(gate)

    # Each Redis step is a few round trips; fewer, shorter histories keep it fast.
    light = isinstance(gate, RedisGate)
    run_state_machine_as_test(
        OnThisGate,
        settings=settings(
            max_examples=20 if light else 80,
            stateful_step_count=10 if light else 20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- real concurrency -------------------------------------------------------------------


def run_together(workers: list[Callable[[], None]]) -> None:
    """Start every worker on its own thread at the same instant and wait for all."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(worker: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=THREAD_JOIN_TIMEOUT_S)
            worker()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=THREAD_JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a claimer never finished"
    assert not errors, errors[0]


def test_400_claimers_for_100_vouchers_get_exactly_100(any_gate: ClaimGate) -> None:
    gate = any_gate
    gate.reset_pool("flash", stock={"t1": 100}, claimed={})
    answers: dict[str, ReserveResult] = {}

    def claimer(person: str) -> Callable[[], None]:
        def work() -> None:
            [answers[person]] = gate.reserve([claim(person, pool="flash")])

        return work

    run_together([claimer(f"person-{n}") for n in range(400)])

    assert Counter(answer.outcome for answer in answers.values()) == {OK: 100, SOLD_OUT: 300}
    winners = [answer for answer in answers.values() if answer.outcome is OK]
    assert all(answer.claim_seq == 1 for answer in winners)
    if not is_bucketed(gate):
        # Every voucher went to exactly one claimer: each count from 99 down to 0 was seen once.
        assert sorted(answer.remaining for answer in winners) == list(range(100))
    assert gate.remaining("flash", "t1") == 0


@pytest.mark.parametrize("pools", [("flash",), ("flash", "flash-2")])
def test_50_concurrent_claims_of_one_person_get_exactly_one(
    any_gate: ClaimGate, pools: tuple[str, ...]
) -> None:
    gate = any_gate
    for pool in pools:
        gate.reset_pool(pool, stock={"t1": 10}, claimed={})
    answers: list[ReserveResult] = []

    def claimer(pool: str) -> Callable[[], None]:
        def work() -> None:
            answers.extend(
                gate.reserve([claim("ann", pool=pool, campaign="camp-1", campaign_limit=1)])
            )

        return work

    run_together([claimer(pools[n % len(pools)]) for n in range(50)])

    outcomes = Counter(answer.outcome for answer in answers)
    assert outcomes[OK] == 1
    assert outcomes[OK] + outcomes[ALREADY_CLAIMED] + outcomes[CAMPAIGN_LIMIT] == 50
    assert sum(gate.remaining(pool, "t1") or 0 for pool in pools) == 10 * len(pools) - 1


def test_concurrent_batches_keep_every_limit_and_leave_no_stray_counts(
    any_gate: ClaimGate,
) -> None:
    gate = any_gate
    stock_each = 60
    pools = ("pool-a", "pool-b")
    for pool in pools:
        gate.reset_pool(pool, stock={"t1": stock_each}, claimed={})
    gate.reset_pool("pool-after", stock={"t1": 1_000}, claimed={})
    people = [f"person-{n}" for n in range(150)]
    taken: list[ReserveRequest] = []

    def channel(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)

        def work() -> None:
            for _ in range(5):
                batch = [
                    claim(
                        rng.choice(people),
                        pool=rng.choice(pools),
                        campaign="camp-1",
                        campaign_limit=1,
                    )
                    for _ in range(100)
                ]
                answers = gate.reserve(batch)
                taken.extend(r for r, a in zip(batch, answers, strict=True) if a.outcome is OK)

        return work

    run_together([channel(seed) for seed in range(8)])

    # No oversell: what was taken from each pool is exactly what its stock lost.
    for pool in pools:
        taken_here = sum(1 for request in taken if request.pool == pool)
        assert taken_here == stock_each - (gate.remaining(pool, "t1") or 0)
    # The campaign limit of 1 held across both pools.
    winners = Counter(request.person_id for request in taken)
    assert max(winners.values()) == 1
    # The refused claims gave their campaign counts back: exactly the winners are at the limit.
    answers = gate.reserve(
        [claim(p, pool="pool-after", campaign="camp-1", campaign_limit=1) for p in people]
    )
    at_limit = {p for p, a in zip(people, answers, strict=True) if a.outcome is CAMPAIGN_LIMIT}
    assert at_limit == set(winners)
    assert all(a.outcome is OK for p, a in zip(people, answers, strict=True) if p not in winners)


# --- how the Redis gate does it ------------------------------------------------------


class CountingConnection(redis.Connection):
    """A connection that counts its writes to the socket: one per round trip."""

    sends = 0

    def send_packed_command(self, command: object, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


@pytest.fixture
def counted_gate(redis_url: str, redis_prefix: str) -> Iterator[RedisGate]:
    client = redis.Redis.from_url(redis_url, connection_class=CountingConnection)
    yield RedisGate(client, key_prefix=redis_prefix)
    client.close()


@pytest.mark.redis
def test_a_batch_of_1000_costs_a_handful_of_round_trips(counted_gate: RedisGate) -> None:
    pools = [f"pool-{n}" for n in range(5)]
    for pool in pools:
        counted_gate.reset_pool(pool, stock={"t1": 150}, claimed={})
    batch = [
        claim(
            f"person-{n}",
            pool=pools[n % 5],
            campaign=f"camp-{n % 3}",
            campaign_limit=1 if n % 2 else 0,
        )
        for n in range(1_000)
    ]
    CountingConnection.sends = 0

    answers = counted_gate.reserve(batch)

    # Campaign check, pool reserve, and the give-back for the refusals (stock 750 < 1000).
    assert CountingConnection.sends == 3
    assert Counter(a.outcome for a in answers) == {OK: 750, SOLD_OUT: 250}

    CountingConnection.sends = 0
    counted_gate.release(
        [(r, a.claim_seq) for r, a in zip(batch, answers, strict=True) if a.outcome is OK]
    )
    # The pools give back what was pending, then the campaigns exactly those counts.
    assert CountingConnection.sends == 2
    assert all(counted_gate.remaining(pool, "t1") == 150 for pool in pools)


@pytest.mark.redis
def test_redis_gate_reloads_scripts_the_server_forgot(counted_gate: RedisGate) -> None:
    counted_gate.reset_pool("pool-a", stock={"t1": 5}, claimed={})
    # A restarted server knows no scripts. SCRIPT FLUSH would show it too, but it
    # would also pull the scripts from under every other suite sharing this server.
    counted_gate._pool_reserve.sha = "0" * 40

    assert counted_gate.reserve([claim("ann")]) == [ok(1, 4)]
    assert counted_gate.reserve([claim("bob")]) == [ok(1, 3)]


@pytest.mark.redis
def test_redis_keys_of_a_pool_share_a_slot_and_a_reset_leaves_nothing_behind(
    redis_url: str, redis_prefix: str
) -> None:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        gate = RedisGate(client, key_prefix=redis_prefix, reset_chunk_size=7)
        gate.reset_pool("pool-a", stock={"t1": 5}, claimed={f"p{n}": 1 for n in range(20)})
        gate.reset_campaign("camp-1", claimed={"ann": 1})

        keys = set(client.scan_iter(match=redis_prefix + "*"))

        assert keys == {
            f"{redis_prefix}{{p:pool-a}}:stock",
            f"{redis_prefix}{{p:pool-a}}:claimed",
            f"{redis_prefix}{{c:camp-1}}:claimed",
            f"{redis_prefix}{{c:camp-1}}:loaded",
        }
        assert all(client.ttl(key) == -1 for key in keys)  # the staged keys' expiry is gone
        assert client.hlen(f"{redis_prefix}{{p:pool-a}}:claimed") == 20
        assert len({redis.crc.key_slot(key.encode()) for key in keys if "pool-a" in key}) == 1


def test_redis_gate_refuses_a_prefix_that_would_break_hash_tags() -> None:
    with redis.Redis() as client, pytest.raises(ValueError, match="braces"):
        RedisGate(client, key_prefix="lq:{x}:")
