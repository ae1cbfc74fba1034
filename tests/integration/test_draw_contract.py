"""One contract for a round's draw (the fair start) on every exact gate: the memory
gate, one Redis and a Redis Cluster take the same entries, serve them in the same
order (by score, then ticket) with the gate's own rules, and answer alike.

The last tests are about how the Redis gate does it across processes: a drawer
that dies in the middle of a chunk, and many drawers at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from lequan.adapters.redis_gate import RedisGate
from lequan.adapters.redis_scripts import ScriptCall
from lequan.domain.fair_start import order, score
from lequan.ports import (
    ClaimGate,
    DrawEntry,
    DrawResult,
    EntryOutcome,
    ReserveOutcome,
)
from tests.integration.test_gate_contract import EXACT_GATES, claim, make_gate

SEED = bytes(range(32))
DRAW = "camp-1:r1"
POOL = "pool-a"
ENTERED = EntryOutcome.ENTERED


@pytest.fixture(params=EXACT_GATES)
def gate(request: pytest.FixtureRequest) -> Iterator[ClaimGate]:
    chosen = make_gate(request, request.param)
    yield chosen
    chosen.close()


def ticket(n: int) -> str:
    return f"{n:032x}"


def entry(
    n: int,
    *,
    person: str | None = None,
    owner: str = "proc-a",
    pool: str = POOL,
    limit: int = 1,
    campaign_limit: int = 0,
) -> DrawEntry:
    t = ticket(n)
    request = claim(person or f"p{n}", pool=pool, limit=limit, campaign_limit=campaign_limit)
    return DrawEntry(ticket=t, score=score(SEED, t), request=request, owner=owner)


def draw_all(gate: ClaimGate, *, chunk_size: int = 3, pending_max: int = 1000) -> int:
    """Call ``draw`` until the draw is served; how many calls said they finished it."""
    finished = 0
    for _ in range(10_000):
        progress = gate.draw(DRAW, chunk_size=chunk_size, pending_max=pending_max, lock_ttl_s=5)
        finished += progress.finished_now
        if progress.done:
            return finished
    raise AssertionError("the draw never finished")


def test_entries_are_served_in_the_order_the_seed_gives_them(gate: ClaimGate) -> None:
    gate.reset_pool(POOL, stock={"t1": 4}, claimed={})
    entries = [entry(n) for n in range(10)]
    assert gate.enter(DRAW, entries, entries_max=100) == [ENTERED] * 10
    assert draw_all(gate) == 1
    expected = order(SEED, [e.ticket for e in entries])
    drawn = gate.drawn(DRAW, start=0, limit=100)
    assert [d.ticket for d in drawn] == expected
    assert [d.rank for d in drawn] == list(range(1, 11))
    # The first four in the order get the four vouchers, whoever entered first.
    outcomes = [d.result.outcome for d in drawn]
    assert outcomes == [ReserveOutcome.OK] * 4 + [ReserveOutcome.SOLD_OUT] * 6
    assert all(d.result.claim_seq == 1 for d in drawn[:4])
    assert gate.remaining(POOL, "t1") == 0
    by_ticket = dict(
        zip(
            [e.ticket for e in entries],
            gate.draw_results(DRAW, [e.ticket for e in entries]),
            strict=True,
        )
    )
    assert {t for t, got in by_ticket.items() if got and got.outcome is ReserveOutcome.OK} == set(
        expected[:4]
    )


def test_a_draw_keeps_the_gates_rules(gate: ClaimGate) -> None:
    """The campaign's limit across pools and the template's stock, as ``reserve`` keeps them."""
    gate.reset_pool(POOL, stock={"t1": 5}, claimed={"p-held": 1})
    gate.reset_pool("pool-b", stock={"t1": 5}, claimed={})
    gate.reset_campaign("camp-1", claimed={})
    entries = [
        entry(1, person="p-held"),  # claimed in the pool already
        entry(2, person="p-twice", campaign_limit=1),
        entry(3, person="p-twice", pool="pool-b", campaign_limit=1),
    ]
    assert gate.enter(DRAW, entries, entries_max=100) == [ENTERED] * 3
    draw_all(gate)
    got = {d.ticket: d.result.outcome for d in gate.drawn(DRAW, start=0, limit=10)}
    assert got[ticket(1)] is ReserveOutcome.ALREADY_CLAIMED
    twice = sorted([ticket(2), ticket(3)], key=lambda t: (score(SEED, t), t))
    assert got[twice[0]] is ReserveOutcome.OK  # the one the order serves first
    assert got[twice[1]] is ReserveOutcome.CAMPAIGN_LIMIT


def test_entries_are_refused_once_the_draw_begins(gate: ClaimGate) -> None:
    gate.reset_pool(POOL, stock={"t1": 1}, claimed={})
    assert gate.enter(DRAW, [entry(1)], entries_max=100) == [ENTERED]
    progress = gate.draw(DRAW, chunk_size=10, pending_max=10, lock_ttl_s=5)
    assert progress.closed
    assert gate.enter(DRAW, [entry(2)], entries_max=100) == [EntryOutcome.CLOSED]
    assert progress.entries == 1


def test_a_ticket_is_one_entry_and_a_person_has_at_most_their_limit(gate: ClaimGate) -> None:
    first = entry(1, person="p1", limit=2)
    again = entry(1, person="p1", limit=2)
    elsewhere = entry(1, person="p1", limit=2, owner="proc-b")
    second = entry(2, person="p1", limit=2)
    third = entry(3, person="p1", limit=2)
    assert gate.enter(DRAW, [first, again, elsewhere, second, third], entries_max=100) == [
        ENTERED,
        EntryOutcome.REJOINED,
        EntryOutcome.HELD_ELSEWHERE,
        ENTERED,
        EntryOutcome.FULL,
    ]
    assert gate.enter(DRAW, [entry(4), entry(5)], entries_max=3) == [
        ENTERED,
        EntryOutcome.OVER,
    ]


def test_results_are_there_once_served_and_not_before(gate: ClaimGate) -> None:
    gate.reset_pool(POOL, stock={"t1": 10}, claimed={})
    entries = [entry(n) for n in range(6)]
    gate.enter(DRAW, entries, entries_max=100)
    assert gate.draw_results(DRAW, [e.ticket for e in entries]) == [None] * 6
    progress = gate.draw(DRAW, chunk_size=2, pending_max=100, lock_ttl_s=5)
    assert (progress.served, progress.entries, progress.done) == (2, 6, False)
    first_two = order(SEED, [e.ticket for e in entries])[:2]
    assert progress.last == (score(SEED, first_two[1]), first_two[1])
    results = dict(
        zip(
            [e.ticket for e in entries],
            gate.draw_results(DRAW, [e.ticket for e in entries]),
            strict=True,
        )
    )
    served = {t for t, got in results.items() if got is not None}
    assert served == set(first_two)
    got = results[first_two[0]]
    assert isinstance(got, DrawResult)
    assert got.outcome is ReserveOutcome.OK
    assert 0 <= got.age_s < 60
    assert gate.draw_results("camp-1:other", [first_two[0]]) == [None]


def test_the_draw_waits_while_its_winners_are_not_committed(gate: ClaimGate) -> None:
    """No chunk is served while ``pending_max`` reservations of its pools are pending."""
    gate.reset_pool(POOL, stock={"t1": 10}, claimed={})
    entries = [entry(n) for n in range(6)]
    gate.enter(DRAW, entries, entries_max=100)
    assert gate.draw(DRAW, chunk_size=2, pending_max=2, lock_ttl_s=5).served == 2
    assert gate.draw(DRAW, chunk_size=2, pending_max=2, lock_ttl_s=5).served == 2  # waits
    won = [d for d in gate.drawn(DRAW, start=0, limit=10)]
    gate.settle([(d.request, d.result.claim_seq) for d in won])  # committed
    assert gate.draw(DRAW, chunk_size=2, pending_max=2, lock_ttl_s=5).served == 4


def test_exactly_one_call_finishes_a_draw_even_an_empty_one(gate: ClaimGate) -> None:
    assert draw_all(gate) == 1
    again = gate.draw(DRAW, chunk_size=3, pending_max=10, lock_ttl_s=5)
    assert again.done
    assert not again.finished_now
    assert gate.drawn(DRAW, start=0, limit=10) == []


def test_a_forgotten_draw_holds_nothing(gate: ClaimGate) -> None:
    gate.reset_pool(POOL, stock={"t1": 1}, claimed={})
    gate.enter(DRAW, [entry(1)], entries_max=100)
    draw_all(gate)
    gate.forget_draw(DRAW)
    assert gate.draw_results(DRAW, [ticket(1)]) == [None]
    assert gate.drawn(DRAW, start=0, limit=10) == []


def test_the_draw_is_paged_by_rank(gate: ClaimGate) -> None:
    gate.reset_pool(POOL, stock={"t1": 50}, claimed={})
    gate.enter(DRAW, [entry(n) for n in range(25)], entries_max=100)
    draw_all(gate, chunk_size=7)
    pages = [gate.drawn(DRAW, start=start, limit=10) for start in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [d.rank for p in pages for d in p] == list(range(1, 26))


# -- how the Redis gate does it -------------------------------------------------------------


@pytest.mark.redis
def test_a_chunk_whose_drawer_died_is_answered_interrupted(
    redis_url: str, redis_prefix: str
) -> None:
    """The drawer marked a chunk and reserved it, then died before recording it: the
    next drawer answers that chunk ``interrupted`` and serves the rest in order. What
    the dead drawer reserved stays pending, for the reaper (never sold twice)."""
    gate = RedisGate.from_url(redis_url, key_prefix=redis_prefix)
    try:
        gate.reset_pool(POOL, stock={"t1": 10}, claimed={})
        entries = [entry(n) for n in range(6)]
        gate.enter(DRAW, entries, entries_max=100)
        # The dead drawer's turn, step by step as ``RedisDraws.draw`` takes it.
        draws = gate._draws
        keys = draws._keys(DRAW)
        assert gate._client.set(keys["lock"], "dead", nx=True, px=200)
        state = (keys["state"], keys["entries"])
        draws._run(
            [ScriptCall(draws._open_turn, (*state, keys["results"], keys["lock"]), ("dead",))]
        )
        [marked] = draws._run(
            [ScriptCall(draws._mark, (*state, keys["entry"], keys["lock"]), ("dead", 2))]
        )
        chunk = [marked[n].decode() for n in range(1, len(marked), 3)]
        gate.reserve([e.request for e in entries if e.ticket in chunk])  # then it died
        time.sleep(0.3)  # its lock runs out
        draw_all(gate, chunk_size=2)
        drawn = gate.drawn(DRAW, start=0, limit=10)
        assert [d.ticket for d in drawn] == order(SEED, [e.ticket for e in entries])
        assert [d.result.outcome for d in drawn[:2]] == [None, None]
        assert [d.result.outcome for d in drawn[2:]] == [ReserveOutcome.OK] * 4
        stale = gate.stale(POOL, older_than_s=0, limit=100)
        assert len(stale) == 6  # the dead drawer's two are there, for the reaper
    finally:
        gate.close()


@pytest.mark.redis
def test_many_drawers_at_once_serve_each_entry_once_in_order(
    redis_url: str, redis_prefix: str
) -> None:
    gates = [RedisGate.from_url(redis_url, key_prefix=redis_prefix) for _ in range(4)]
    try:
        gates[0].reset_pool(POOL, stock={"t1": 40}, claimed={})
        entries = [entry(n, owner=f"proc-{n % 4}") for n in range(200)]
        for n, g in enumerate(gates):
            assert set(g.enter(DRAW, entries[n::4], entries_max=1000)) == {ENTERED}
        finished: Counter[int] = Counter()

        def drive(g: ClaimGate, n: int) -> None:
            finished[n] = draw_all(g, chunk_size=5)

        threads = [threading.Thread(target=drive, args=(g, n)) for n, g in enumerate(gates)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(finished.values()) == 1
        drawn = gates[1].drawn(DRAW, start=0, limit=1000)
        assert [d.ticket for d in drawn] == order(SEED, [e.ticket for e in entries])
        won = [d.result.outcome is ReserveOutcome.OK for d in drawn]
        assert won == [True] * 40 + [False] * 160
        assert gates[2].remaining(POOL, "t1") == 0
    finally:
        for g in gates:
            g.close()
