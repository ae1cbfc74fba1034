"""One row per claim: a claim's idempotency key is on the voucher it issued, and a
retry's answer is rebuilt from that row, byte for byte what the first request
heard. Claims answered before migration 0002 keep their stored answers.

Both stacks (SQLite + in-process gate, PostgreSQL + Redis).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from lequan.adapters.sql import tables
from lequan.adapters.sql.engine import create_engine
from lequan.services.idempotency import Answer
from tests.factories import dining_config
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    TEMPLATE,
    claim_one,
    claim_request,
    register_many,
    remaining,
    stored_vouchers,
    voucher_id,
)


def _count(stack: Stack, table: sa.Table) -> int:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            )
    finally:
        engine.dispose()


def test_a_claim_writes_one_row_and_its_key_is_on_the_voucher(stack: Stack, tmp_path: Path) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        users = register_many(world, [1, 2, 3])
        answers_before = _count(stack, tables.idempotency_keys)
        results = world.platform.claims.claim("wechat", [claim_request(u, f"k-{u}") for u in users])
        assert [r.outcome for r in results] == ["issued"] * 3
        assert _count(stack, tables.idempotency_keys) == answers_before  # no answer rows
        v = tables.vouchers.c
        with world.rt.store.unit_of_work(readonly=True) as uow:
            keyed = dict(
                uow.connection.execute(
                    sa.select(v.claim_key, v.id).where(v.claim_app_id == "wechat")
                ).all()
            )
        assert keyed == {f"k-{u}": voucher_id(r) for u, r in zip(users, results, strict=True)}
        # The whole batch sent again: every answer replayed as it was first given.
        again = world.platform.claims.claim("wechat", [claim_request(u, f"k-{u}") for u in users])
        assert [r.outcome for r in again] == ["replayed"] * 3
        assert [r.answer.json() for r in again] == [r.answer.json() for r in results]


def test_a_retry_after_the_voucher_was_spent_hears_its_first_answer_byte_for_byte(
    stack: Stack, tmp_path: Path
) -> None:
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        [user] = register_many(world, [1])
        first = claim_one(world, user, "k-spent")
        assert first.outcome == "issued"
        # Spent meanwhile (another connection moves it on, as redemptions do).
        engine = create_engine(stack.database_url)
        try:
            with engine.begin() as connection:
                connection.execute(
                    sa.update(tables.vouchers)
                    .where(tables.vouchers.c.id == voucher_id(first))
                    .values(state="redeemed", version=2)
                )
        finally:
            engine.dispose()
        again = claim_one(world, user, "k-spent")
        assert again.outcome == "replayed"
        assert again.answer.status_code == 201
        assert again.answer.json() == first.answer.json()  # the same bytes
        assert again.answer.body["voucher"]["state"] == "issued"
        # A retry through a batch replays the same answer too.
        [batched] = world.platform.claims.claim("wechat", [claim_request(user, "k-spent")])
        assert batched.answer.json() == first.answer.json()
        assert remaining(world) == 4
        assert [s.id for s in stored_vouchers(world)] == [voucher_id(first)]


def test_a_claim_answered_before_the_key_moved_to_the_voucher_still_replays(
    stack: Stack, tmp_path: Path
) -> None:
    """A store upgraded from 0001 holds claim answers in idempotency_keys and vouchers
    without keys: a retry of such a claim replays the stored answer, and the same key
    with another request is refused."""
    with stack.world(tmp_path) as world:
        world.open_campaign(dining_config(stock={"wechat": {TEMPLATE: 5}}))
        [user] = register_many(world, [1])
        request = claim_request(user, "k-old")
        stored = Answer.rendered(201, '{"status":"issued","voucher":{"voucher_id":"vold"}}')
        with world.rt.store.unit_of_work() as uow:
            request.key.record(uow, stored, world.clock.now())
            uow.commit()
        [replayed] = world.platform.claims.claim("wechat", [request])
        assert replayed.outcome == "replayed"
        assert replayed.answer.json() == stored.json()
        [changed] = world.platform.claims.claim(
            "wechat", [claim_request(user, "k-old", template="d500-150")]
        )
        assert changed.outcome == "idempotency_mismatch"
        assert changed.answer.status_code == 422
        assert remaining(world) == 5
        assert stored_vouchers(world) == []
