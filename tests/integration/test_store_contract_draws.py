"""The store contract, continued: the rounds' fair starts, on SQLite, PostgreSQL and the
in-memory store alike.

What the fair start relies on: a round's draw (its sealed seed and commitment)
round-trips and is stored once; entries are written a chunk at a time, each rank
once (a second publisher's chunk is ``DuplicateKey``); the seed is revealed once,
with the count of entries won counted by the store; a voucher keeps its ticket.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from lequan.ports import ConstraintViolated, DuplicateKey, Store
from lequan.rows import DrawEntryRow, DrawRow
from tests.integration.test_store_contract import (
    CAMPAIGN,
    T0,
    claim,
    committed,
    in_own_transaction,
    voucher,
    with_campaign,
)

SEED_HEX = "ab" * 32


def draw(round_id: str = "r1", **updates: object) -> DrawRow:
    row = DrawRow(
        campaign_id=CAMPAIGN,
        round_id=round_id,
        window_s=2,
        commitment="c" * 64,
        seed_key_id="k1",
        seed_sealed=b"\x00sealed\xff",
        committed_at=T0 - timedelta(hours=1),
        seed_hex=None,
        published_at=None,
        entries=0,
        won=0,
    )
    return replace(row, **updates)  # type: ignore[arg-type]


def entry(rank: int, outcome: str = "won") -> DrawEntryRow:
    return DrawEntryRow(rank, f"{rank:032x}", "wechat", "d300-90", outcome)


@pytest.fixture
def drawn(store: Store) -> Store:
    with_campaign(store)
    in_own_transaction(store, lambda uow: uow.draws.add_draws([draw("r1"), draw("r2")]))
    return store


def test_a_draw_round_trips_and_is_stored_once(drawn: Store) -> None:
    with committed(drawn) as uow:
        assert uow.draws.get_draw(CAMPAIGN, "r1") == draw("r1")
        assert [d.round_id for d in uow.draws.draws_of(CAMPAIGN)] == ["r1", "r2"]
        assert uow.draws.get_draw(CAMPAIGN, "r9") is None
        assert uow.draws.draws_of("another") == []
    with pytest.raises(DuplicateKey):
        in_own_transaction(drawn, lambda uow: uow.draws.add_draws([draw("r1")]))
    with pytest.raises(ConstraintViolated):  # a round the campaign does not have
        in_own_transaction(drawn, lambda uow: uow.draws.add_draws([draw("r9")]))


def test_entries_are_written_in_chunks_each_rank_once(drawn: Store) -> None:
    in_own_transaction(
        drawn, lambda uow: uow.draws.add_entries(CAMPAIGN, "r1", [entry(1), entry(2)])
    )
    with committed(drawn) as uow:
        assert uow.draws.last_rank(CAMPAIGN, "r1") == 2
        assert uow.draws.last_rank(CAMPAIGN, "r2") == 0
    in_own_transaction(
        drawn,
        lambda uow: uow.draws.add_entries(CAMPAIGN, "r1", [entry(3, "sold_out")]),
    )
    with pytest.raises(DuplicateKey):  # another publisher wrote this chunk first
        in_own_transaction(drawn, lambda uow: uow.draws.add_entries(CAMPAIGN, "r1", [entry(2)]))
    with committed(drawn) as uow:
        assert uow.draws.entries(CAMPAIGN, "r1", after_rank=0, limit=10) == [
            entry(1),
            entry(2),
            entry(3, "sold_out"),
        ]
        assert uow.draws.entries(CAMPAIGN, "r1", after_rank=1, limit=1) == [entry(2)]


def test_the_seed_is_revealed_once_with_what_was_won(drawn: Store) -> None:
    in_own_transaction(
        drawn,
        lambda uow: uow.draws.add_entries(
            CAMPAIGN, "r1", [entry(1), entry(2), entry(3, "sold_out")]
        ),
    )
    with committed(drawn) as uow:
        assert [d.round_id for d in uow.draws.unpublished(10)] == ["r1", "r2"]
    assert in_own_transaction(
        drawn,
        lambda uow: uow.draws.reveal(CAMPAIGN, "r1", seed_hex=SEED_HEX, entries=3, now=T0),
    )
    assert not in_own_transaction(
        drawn,
        lambda uow: uow.draws.reveal(CAMPAIGN, "r1", seed_hex="cd" * 32, entries=3, now=T0),
    )
    with committed(drawn) as uow:
        row = uow.draws.get_draw(CAMPAIGN, "r1")
        assert row == draw("r1", seed_hex=SEED_HEX, published_at=T0, entries=3, won=2)
        assert [d.round_id for d in uow.draws.unpublished(10)] == ["r2"]


def test_a_voucher_keeps_the_ticket_of_its_draw(store: Store) -> None:
    with_campaign(store)
    drawn = replace(voucher(1, person="p1"), draw_ticket="0123456789abcdef0123456789abcdef")
    plain = voucher(2, person="p2")
    in_own_transaction(store, lambda uow: claim(uow, drawn, plain))
    with committed(store) as uow:
        found = uow.vouchers.get_vouchers([drawn.id, plain.id])
        assert found[drawn.id].draw_ticket == drawn.draw_ticket
        assert found[plain.id].draw_ticket is None
