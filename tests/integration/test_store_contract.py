"""One contract for every Store: SQLite, PostgreSQL and the in-memory store answer alike.

The services speak to the store port only, and the service tests whose store
is incidental run on the in-memory one; that is safe only if it keeps every
promise the SQL store keeps. Each test here runs against all three (PostgreSQL
on a real server, failing rather than skipping in CI when it is down): round
trips of every row type, each conditional update's True and False, each
unique key and CHECK of the schema, transactions that roll back unless
committed, readers that never see a writer's rows, ordering and cursors, the
ledger with its budget counter, the audit chain's hashes (published vectors,
so one verifier serves any store) and a model-checked history of stock and
budget.

Speed: SQLite starts from a copy of a file migrated once, PostgreSQL from one
migrated database emptied before each test (2 ms), memory from nothing.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
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

from lequan.adapters.memory_store import MemoryStore
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import SqlStore
from lequan.domain.campaigns import CampaignConfig, CampaignStatus
from lequan.domain.ledger import (
    Entry,
    EntryKind,
    Posting,
    expire_entry,
    fund_entry,
    issue_entry,
    redeem_entry,
)
from lequan.domain.redemption_states import RedemptionStatus
from lequan.domain.vouchers import VoucherState
from lequan.ports import (
    ConstraintViolated,
    DuplicateKey,
    Store,
    StoreError,
    StoreUnavailable,
    UnitOfWork,
)
from lequan.rows import MerchantRow, MerchantSuspension, RedemptionRow, StockKey, VoucherRow
from tests.factories import dining_config

T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
CAMPAIGN = "sh-dining-2024"
TEMPLATE = "d300-90"
FACE_FEN = 9000  # the face of d300-90
STOCK: StockKey = (CAMPAIGN, "r1", "wechat", TEMPLATE)
THREAD_JOIN_TIMEOUT_S = 30.0
WRITER_TRIES = 5  # a writer the store turned away for a lock wait tries again, this often
# How long a writer is watched to see that it waits for a lock (it would be done in 1 ms).
WAITS_S = 0.2


def is_sqlite(store: Store) -> bool:
    return isinstance(store, SqlStore) and store.engine.dialect.name == "sqlite"


def committed(store: Store) -> AbstractContextManager[UnitOfWork]:
    """A reader of what is committed."""
    return store.unit_of_work(readonly=True)


def in_own_transaction(store: Store, write: Callable[[UnitOfWork], Any]) -> Any:
    """``write`` in a unit of work of its own, committed."""
    with store.unit_of_work() as uow:
        result = write(uow)
        uow.commit()
    return result


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``work`` started on a thread of its own; its result (or error) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as error:
            out.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


# -- rows to store ----------------------------------------------------------------------


def config(*, stock: dict[str, dict[str, int]] | None = None, **updates: Any) -> CampaignConfig:
    """The dining campaign: 5 vouchers of d300-90 in r1/wechat, budget for exactly 5
    (unless told otherwise)."""
    updates.setdefault("budget_fen", 5 * FACE_FEN)
    return dining_config(release_at=T0, stock=stock or {"wechat": {TEMPLATE: 5}}, **updates)


def voucher(
    n: int,
    *,
    person: str = "p1",
    campaign: str = CAMPAIGN,
    round_id: str = "r1",
    channel: str = "wechat",
    seq: int = 1,
    face_fen: int = FACE_FEN,
    state: VoucherState = VoucherState.ISSUED,
    valid_until: datetime = T0 + timedelta(days=30),
) -> VoucherRow:
    return VoucherRow(
        id=f"v{n:04d}",
        campaign_id=campaign,
        round_id=round_id,
        channel_id=channel,
        template_id=TEMPLATE,
        person_id=person,
        claim_seq=seq,
        face_fen=face_fen,
        state=state,
        valid_from=T0,
        valid_until=valid_until,
        issued_at=T0 + timedelta(microseconds=123_456),
        version=1,
        redemption_id=None,
    )


def claim_of(v: VoucherRow, *, app: str = "wechat") -> tuple[str, str, str]:
    """The (app_id, Idempotency-Key, request hash) of the claim that issued ``v``."""
    return app, f"key-{v.id}", f"hash-{v.id}"


def claim(uow: UnitOfWork, *vouchers: VoucherRow) -> None:
    uow.vouchers.insert_claims(list(vouchers), [claim_of(v) for v in vouchers], T0)


def person_values(n: int, **updates: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": f"p{n}",
        "id_number_bidx": f"bidx-{n}",
        "id_number_enc": f"id-{n}".encode(),
        "key_id": "k1",
        "consent_version": "2024-01",
        "consent_at": T0,
        "created_at": T0,
    }
    values.update(updates)
    return values


def identity_values(n: int, **updates: Any) -> dict[str, Any]:
    """What a channel registered person ``n`` with, kept on its account."""
    values: dict[str, Any] = {
        "name_enc": b"name",
        "phone_enc": b"phone",
        "phone_bidx": f"phone-{n}",
        "key_id": "k1",
        "residence_region": "310104",
        "consent_version": "2024-01",
        "consent_at": T0,
    }
    values.update(updates)
    return values


def redemption_values(
    redemption_id: str, v: VoucherRow, *, status: str = "locked", **updates: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": redemption_id,
        "voucher_id": v.id,
        "campaign_id": v.campaign_id,
        "acquirer_id": "acq-unionpay",
        "merchant_id": "m-cafe-001",
        "order_id": f"order-{redemption_id}",
        "mode": "in_store",
        "order_amount_fen": 35_000,
        "discount_fen": v.face_fen,
        "pay_fen": 35_000 - v.face_fen,
        "status": status,
        "lock_expires_at": T0 + timedelta(minutes=15) if status == "locked" else None,
        "product_json": None,
        "created_at": T0,
        "updated_at": T0,
        "version": 1,
    }
    values.update(updates)
    return values


def answer_row(app: str, key: str, **updates: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "app_id": app,
        "key": key,
        "request_hash": f"hash-{key}",
        "status_code": 200,
        "response_json": f'{{"key":"{key}"}}',
        "created_at": T0,
    }
    row.update(updates)
    return row


def with_campaign(store: Store, c: CampaignConfig | None = None) -> CampaignConfig:
    c = c or config()
    in_own_transaction(
        store, lambda uow: uow.campaigns.insert_campaign(c, drafted_by="alice", now=T0)
    )
    return c


def with_people(store: Store, *numbers: int, channel: str = "wechat") -> None:
    def write(uow: UnitOfWork) -> None:
        for n in numbers:
            uow.people.insert_person(person_values(n))
            uow.people.insert_account(
                channel_id=channel,
                channel_user_id=f"u{n}",
                person_id=f"p{n}",
                identity=identity_values(n),
                now=T0,
            )

    in_own_transaction(store, write)


def issued(amount_fen: int, campaign_id: str = CAMPAIGN) -> Callable[[UnitOfWork], bool]:
    """Record the issue of ``amount_fen`` of vouchers."""
    return lambda uow: uow.ledger.record(issue_entry(amount_fen), campaign_id=campaign_id, now=T0)


def operator(uow: UnitOfWork, operator_id: str, token_hash: str | None = None) -> None:
    uow.people.add_operator(
        operator_id=operator_id, role="maker", token_hash=token_hash or f"t-{operator_id}", now=T0
    )


# -- units of work ----------------------------------------------------------------------


def test_a_unit_of_work_keeps_nothing_unless_committed(store: Store) -> None:
    with store.unit_of_work() as uow:
        operator(uow, "alice")
        assert uow.people.operator_role("alice") == "maker"  # its own write, seen
    with store.unit_of_work() as uow:
        operator(uow, "bob")
        uow.commit()
    with committed(store) as uow:
        assert uow.people.operator_role("alice") is None
        assert uow.people.operator_role("bob") == "maker"


def test_rollback_undoes_the_transaction_so_far_and_the_unit_of_work_goes_on(
    store: Store,
) -> None:
    with store.unit_of_work() as uow:
        operator(uow, "alice")
        uow.rollback()
        assert uow.people.operator_role("alice") is None
        operator(uow, "bob")
        uow.commit()
        operator(uow, "carol")  # after a commit: the next transaction, not committed
    with committed(store) as uow:
        roles = [uow.people.operator_role(o) for o in ("alice", "bob", "carol")]
    assert roles == [None, "maker", None]


def test_a_reader_sees_what_is_committed_never_a_writers_rows_and_does_not_wait(
    store: Store,
) -> None:
    with store.unit_of_work() as writer:
        operator(writer, "alice")
        operator(writer, "bob")
        writer.commit()
        operator(writer, "carol")  # uncommitted, and the writer still holds its locks
        with committed(store) as reader:
            assert reader.people.operator_role("bob") == "maker"
            assert reader.people.operator_role("carol") is None
        writer.commit()
    with committed(store) as reader:
        assert reader.people.operator_role("carol") == "maker"


def test_a_readonly_unit_of_work_reads_every_repository(store: Store) -> None:
    with_campaign(store)
    with_people(store, 1)
    with committed(store) as uow:
        assert uow.campaigns.campaign_exists(CAMPAIGN)
        assert uow.people.account_person("wechat", "u1") == "p1"
        assert uow.vouchers.get_voucher("v0001") is None
        assert uow.ledger.balances(CAMPAIGN) == {}
        assert uow.idempotency.answered_keys("wechat", ["k"]) == {}
        uow.commit()  # a reader may commit: nothing to keep


def test_a_refused_statement_can_be_rolled_back_and_the_unit_of_work_goes_on(
    store: Store,
) -> None:
    in_own_transaction(store, lambda uow: operator(uow, "alice"))
    with store.unit_of_work() as uow:
        operator(uow, "bob")
        with pytest.raises(DuplicateKey):
            operator(uow, "alice")
        uow.rollback()
        operator(uow, "carol")
        uow.commit()
    with committed(store) as uow:
        roles = [uow.people.operator_role(o) for o in ("alice", "bob", "carol")]
    assert roles == ["maker", None, "maker"]


def test_a_refused_statement_loses_its_transaction(
    request: pytest.FixtureRequest, store: Store
) -> None:
    """ports/errors.py: after a StoreError "the transaction is lost"; nothing of it
    may be committed, or a service that went on would keep half its work."""
    in_own_transaction(store, lambda uow: operator(uow, "alice"))
    with store.unit_of_work() as uow:
        operator(uow, "bob")
        with pytest.raises(DuplicateKey):
            operator(uow, "alice")
        try:
            operator(uow, "carol")
            uow.commit()
        except StoreError:
            pass
    with committed(store) as uow:
        assert [uow.people.operator_role(o) for o in ("bob", "carol")] == [None, None]


def test_a_pipeline_carries_the_batch_writes_and_commits_them(store: Store) -> None:
    with_campaign(store)
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    in_own_transaction(store, issued(FACE_FEN))
    redemption = redemption_values("r1", v, status="redeemed")
    entry = redeem_entry(face_fen=FACE_FEN, discount_fen=6000, acquirer_id="acq-unionpay")
    with store.unit_of_work() as uow:
        reads = uow.vouchers.redemption_reads([], [v.id], [])  # first, as the batch writer
        with uow.pipeline():
            uow.vouchers.move_vouchers(
                [(reads.vouchers[v.id], VoucherState.REDEEMED, "r1")], now=T0
            )
            uow.vouchers.insert_redemptions(
                [{**redemption, "discount_fen": 6000, "pay_fen": 29_000}]
            )
            uow.ledger.record_many(
                [(entry, {"campaign_id": CAMPAIGN, "voucher_id": v.id, "redemption_id": "r1"})],
                now=T0,
            )
            uow.ledger.add_outbox_many([("e1", "redemption.completed", {"id": "r1"})], now=T0)
            uow.idempotency.store_answers([answer_row("acq-unionpay", "k-r1")])
        uow.commit()
    with committed(store) as uow:
        moved = uow.vouchers.get_voucher(v.id)
        assert moved is not None
        assert (moved.state, moved.redemption_id) == (VoucherState.REDEEMED, "r1")
        assert uow.vouchers.get_redemption("r1") is not None
        assert uow.ledger.outbox_topics() == {"redemption.completed": 1}
        assert uow.idempotency.idempotent_answer("acq-unionpay", "k-r1") is not None
        row = uow.campaigns.get_campaign(CAMPAIGN)
        assert row is not None
        assert row.committed_fen == 6000


def _claimed(uow: UnitOfWork) -> None:
    claim(uow, voucher(1))


def _moved(uow: UnitOfWork) -> None:
    uow.vouchers.move_vouchers([(voucher(1), VoucherState.REVOKED, None)], now=T0)


def _issued(uow: UnitOfWork) -> None:
    assert uow.ledger.record(issue_entry(FACE_FEN), campaign_id=CAMPAIGN, now=T0)


def _answered(uow: UnitOfWork) -> None:
    uow.idempotency.store_answers([answer_row("acq", f"k{n}") for n in range(10)])


def _redeemed(uow: UnitOfWork) -> None:
    rows = [redemption_values(f"r{n}", voucher(1), status="voided") for n in range(10)]
    uow.vouchers.insert_redemptions(rows)


def _announced(uow: UnitOfWork) -> None:
    uow.ledger.add_outbox_many([(f"e{n}", "t", {}) for n in range(10)], now=T0)


def _pipelined(uow: UnitOfWork) -> None:
    with uow.pipeline():
        _moved(uow)


def _kept(store: Store, write: Callable[[UnitOfWork], None]) -> bool:
    """Whether what ``write`` wrote is there for a reader."""
    with committed(store) as uow:
        if write in (_claimed,):
            return uow.vouchers.get_voucher("v0001") is not None
        if write in (_moved, _pipelined):
            found = uow.vouchers.get_voucher("v0001")
            return found is not None and found.state is VoucherState.REVOKED
        if write is _issued:
            row = uow.campaigns.get_campaign(CAMPAIGN)
            return row is not None and row.committed_fen == FACE_FEN
        if write is _answered:
            return uow.idempotency.idempotent_answer("acq", "k9") is not None
        if write is _redeemed:
            return uow.vouchers.get_redemption("r9") is not None
        assert write is _announced
        return uow.ledger.outbox_topics() == {"t": 10}


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(_claimed, id="insert_claims"),
        pytest.param(_moved, id="move_vouchers"),
        pytest.param(_issued, id="record"),
        pytest.param(_answered, id="store_answers-10"),
        pytest.param(_redeemed, id="insert_redemptions-10"),
        pytest.param(_announced, id="add_outbox_many-10"),
        pytest.param(_pipelined, id="pipeline"),
    ],
)
def test_a_write_alone_in_its_unit_of_work_is_committed(
    request: pytest.FixtureRequest, store: Store, write: Callable[[UnitOfWork], None]
) -> None:
    """Whatever a unit of work begins with, ``commit()`` keeps its writes."""
    with_campaign(store)
    if write is not _claimed:
        in_own_transaction(store, _claimed)
    if write is not _issued:
        in_own_transaction(store, _issued)
    with store.unit_of_work() as uow:
        write(uow)
        uow.commit()
    assert _kept(store, write)


def test_the_store_answers_and_its_schema_is_current(store: Store) -> None:
    store.ping()
    current, head = store.schema_revisions()
    assert current is not None
    assert current == head
    store.upgrade()  # at head already: changes nothing
    assert store.schema_revisions() == (current, head)


# -- campaigns ----------------------------------------------------------------------------


def test_a_campaign_round_trips(store: Store) -> None:
    c = with_campaign(store)
    with committed(store) as uow:
        row = uow.campaigns.get_campaign(CAMPAIGN)
        assert uow.campaigns.campaign_exists(CAMPAIGN)
        assert not uow.campaigns.campaign_exists("nope")
        assert uow.campaigns.get_campaign("nope") is None
        initial = uow.campaigns.stock_initial(CAMPAIGN)
        issued = uow.campaigns.stock_issued(CAMPAIGN)
    assert row is not None
    assert row.id == CAMPAIGN
    assert row.status is CampaignStatus.DRAFT
    assert row.config == c
    assert (row.budget_fen, row.committed_fen) == (c.budget_fen, 0)
    assert (row.drafted_by, row.approved_by) == ("alice", None)
    assert dict(row.rounds) == {r.id: (r.release_at, r.ends_at) for r in c.rounds}
    assert sorted(initial) == [(r.id, "wechat", TEMPLATE, 5) for r in c.rounds]
    assert issued == {(r.id, "wechat", TEMPLATE): 0 for r in c.rounds}


def test_a_campaign_id_is_taken_once(store: Store) -> None:
    with_campaign(store)
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.campaigns.insert_campaign(config(name="again"), drafted_by="bob", now=T0)


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda c: c.model_copy(update={"budget_fen": -1}), id="budget-below-zero"),
        pytest.param(
            lambda c: c.model_copy(
                update={
                    "rounds": (
                        c.rounds[0].model_copy(update={"stock": {"wechat": {TEMPLATE: -1}}}),
                    )
                }
            ),
            id="stock-below-zero",
        ),
    ],
)
def test_a_campaign_outside_its_checks_is_refused(
    store: Store, broken: Callable[[CampaignConfig], CampaignConfig]
) -> None:
    """The CHECKs (0 <= committed <= budget, 0 <= issued <= initial), reached past
    the configuration's own validation."""
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated):
        uow.campaigns.insert_campaign(broken(config()), drafted_by="alice", now=T0)


def test_campaigns_are_listed_by_id_and_filtered_by_status(store: Store) -> None:
    for campaign_id in ("c-b", "c-a", "c-c"):
        with_campaign(store, config(id=campaign_id))
    in_own_transaction(
        store,
        lambda uow: uow.campaigns.set_campaign_status(
            "c-c", expected=CampaignStatus.DRAFT, status=CampaignStatus.APPROVED, now=T0
        ),
    )
    with committed(store) as uow:
        every = [r.id for r in uow.campaigns.list_campaigns()]
        drafts = [r.id for r in uow.campaigns.list_campaigns(statuses=[CampaignStatus.DRAFT])]
        either = uow.campaigns.list_campaigns(
            statuses=(CampaignStatus.APPROVED, CampaignStatus.LIVE)
        )
        none = uow.campaigns.list_campaigns(statuses=[])
    assert every == ["c-a", "c-b", "c-c"]
    assert drafts == ["c-a", "c-b"]
    assert [(r.id, r.status) for r in either] == [("c-c", CampaignStatus.APPROVED)]
    assert none == []


def test_a_status_moves_only_from_the_status_expected(store: Store) -> None:
    with_campaign(store)
    with store.unit_of_work() as uow:
        c = uow.campaigns
        draft, approved, live = CampaignStatus.DRAFT, CampaignStatus.APPROVED, CampaignStatus.LIVE
        assert not c.set_campaign_status(CAMPAIGN, expected=approved, status=live, now=T0)
        assert c.set_campaign_status(
            CAMPAIGN, expected=draft, status=approved, now=T0, approved_by="bob"
        )
        assert not c.set_campaign_status(CAMPAIGN, expected=draft, status=approved, now=T0)
        assert c.set_campaign_status(CAMPAIGN, expected=approved, status=live, now=T0)
        assert not c.set_campaign_status("nope", expected=draft, status=approved, now=T0)
        uow.commit()
    with committed(store) as uow:
        row = uow.campaigns.get_campaign(CAMPAIGN)
    assert row is not None
    assert (row.status, row.approved_by) == (CampaignStatus.LIVE, "bob")  # kept when not given


def test_the_redemption_switch_turns_only_when_it_is_not_there_yet(store: Store) -> None:
    with_campaign(store)
    with_campaign(store, config(id="c-other"))

    def paused(campaign_id: str = CAMPAIGN) -> bool:
        with committed(store) as uow:
            row = uow.campaigns.get_campaign(campaign_id)
        assert row is not None
        return row.redemptions_paused

    assert not paused()  # a new campaign's vouchers may be spent
    later = T0 + timedelta(minutes=5)
    with store.unit_of_work() as uow:
        c = uow.campaigns
        assert not c.set_redemptions_paused(CAMPAIGN, paused=False, now=later)  # open already
        assert c.set_redemptions_paused(CAMPAIGN, paused=True, now=later)
        assert not c.set_redemptions_paused(CAMPAIGN, paused=True, now=later)
        assert not c.set_redemptions_paused("nope", paused=True, now=later)
        uow.commit()
    assert paused()
    assert not paused("c-other")  # one campaign's switch alone
    with committed(store) as uow:
        listed = {r.id: r.redemptions_paused for r in uow.campaigns.list_campaigns()}
        row = uow.campaigns.get_campaign(CAMPAIGN)
    assert listed == {CAMPAIGN: True, "c-other": False}
    assert row is not None
    assert row.status is CampaignStatus.DRAFT  # the claims' switch is another
    # Apart from the status: moving it leaves the redemption switch alone, and back.
    in_own_transaction(
        store,
        lambda uow: uow.campaigns.set_campaign_status(
            CAMPAIGN, expected=CampaignStatus.DRAFT, status=CampaignStatus.APPROVED, now=later
        ),
    )
    assert paused()
    with store.unit_of_work() as uow:
        assert uow.campaigns.set_redemptions_paused(CAMPAIGN, paused=False, now=later)
        # Not committed: a switch rolls back with its transaction.
    assert paused()
    in_own_transaction(
        store, lambda uow: uow.campaigns.set_redemptions_paused(CAMPAIGN, paused=False, now=later)
    )
    assert not paused()


def test_round_times_move_and_an_unknown_round_is_left_alone(store: Store) -> None:
    c = with_campaign(store)
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    with store.unit_of_work() as uow:
        uow.campaigns.set_round_times(CAMPAIGN, "r1", release_at=start, ends_at=end)
        uow.campaigns.set_round_times(CAMPAIGN, "r9", release_at=start, ends_at=end)
        uow.commit()
    with committed(store) as uow:
        row = uow.campaigns.get_campaign(CAMPAIGN)
    assert row is not None
    assert dict(row.rounds) == {
        "r1": (start, end),
        **{r.id: (r.release_at, r.ends_at) for r in c.rounds[1:]},
    }


def test_stock_is_counted_out_while_it_holds_and_never_past_it(store: Store) -> None:
    with_campaign(store)
    with store.unit_of_work() as uow:
        c = uow.campaigns
        assert c.take_stock(STOCK, 3)
        assert not c.take_stock(STOCK, 3)  # 2 left: refused whole, nothing taken
        assert c.lock_stock(STOCK) == (5, 3)
        assert c.take_stock(STOCK, 2)
        assert not c.take_stock(STOCK, 1)
        assert not c.take_stock((CAMPAIGN, "r1", "alipay", TEMPLATE), 1)  # no such stock
        assert c.lock_stock((CAMPAIGN, "r1", "alipay", TEMPLATE)) == (0, 0)
        assert c.stock_issued(CAMPAIGN)[("r1", "wechat", TEMPLATE)] == 5
        uow.commit()
    with committed(store) as uow:
        assert uow.campaigns.stock_issued(CAMPAIGN)[("r1", "wechat", TEMPLATE)] == 5
        assert uow.campaigns.stock_issued(CAMPAIGN)[("r2", "wechat", TEMPLATE)] == 0


def test_the_budget_is_read_with_its_counter(store: Store) -> None:
    with_campaign(store)
    with store.unit_of_work() as uow:
        assert uow.ledger.record(issue_entry(2 * FACE_FEN), campaign_id=CAMPAIGN, now=T0)
        assert uow.campaigns.lock_campaign_budget(CAMPAIGN) == (5 * FACE_FEN, 2 * FACE_FEN)


def test_locking_the_budget_of_no_campaign_is_a_store_error(
    request: pytest.FixtureRequest, store: Store
) -> None:
    """ports/store.py: failures are the port's own errors, never the engine's."""
    with store.unit_of_work() as uow, pytest.raises(StoreError):
        uow.campaigns.lock_campaign_budget("nope")


# -- people -------------------------------------------------------------------------------


def test_operators_round_trip_and_their_id_and_token_are_taken_once(store: Store) -> None:
    in_own_transaction(
        store,
        lambda uow: uow.people.add_operator(
            operator_id="bob", role="checker", token_hash="t-bob", now=T0
        ),
    )
    with committed(store) as uow:
        assert uow.people.operator_by_token_hash("t-bob") == ("bob", "checker")
        assert uow.people.operator_by_token_hash("t-nobody") is None
        assert uow.people.operator_role("bob") == "checker"
        assert uow.people.operator_role("nobody") is None
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        operator(uow, "bob", "t-other")
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        operator(uow, "carol", "t-bob")
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated):
        uow.people.add_operator(operator_id="dave", role="admin", token_hash="t-dave", now=T0)


def test_apps_round_trip_and_an_id_is_taken_once(store: Store) -> None:
    def add(app_id: str, kind: str) -> Callable[[UnitOfWork], None]:
        return lambda uow: uow.people.add_app(
            app_id=app_id, kind=kind, name="微信", key_id="k1", secret_enc=b"\x00sealed", now=T0
        )

    in_own_transaction(store, add("wechat", "channel"))
    with committed(store) as uow:
        app = uow.people.get_app("wechat")
        assert uow.people.get_app("nope") is None
    assert app is not None
    assert (app.id, app.kind, app.name, app.secret_key_id) == ("wechat", "channel", "微信", "k1")
    assert (app.secret_enc, app.active) == (b"\x00sealed", True)
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        add("wechat", "acquirer")(uow)
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated):
        add("bank", "bank")(uow)


def test_a_merchant_is_inserted_then_updated_with_its_campaigns(store: Store) -> None:
    with_campaign(store)
    with_campaign(store, config(id="c-other"))

    def upsert(name: str, modes: list[str], campaigns: list[str]) -> Callable[[UnitOfWork], None]:
        return lambda uow: uow.people.upsert_merchant(
            merchant_id="m1",
            name=name,
            mcc="5812",
            region_code="310104",
            modes=modes,
            acquirer_id="acq-unionpay",
            campaign_ids=campaigns,
            now=T0,
        )

    in_own_transaction(store, upsert("cafe", ["online", "in_store"], [CAMPAIGN, CAMPAIGN]))
    with committed(store) as uow:
        first = uow.people.get_merchant("m1")
        assert uow.people.get_merchant("nope") is None
    in_own_transaction(store, upsert("café", ["in_store"], ["c-other"]))
    with committed(store) as uow:
        second = uow.people.get_merchant("m1")
    assert first is not None
    assert second is not None
    assert (first.name, first.modes, first.enrolled_campaigns) == (
        "cafe",
        frozenset({"online", "in_store"}),
        frozenset({CAMPAIGN}),
    )
    assert (first.mcc, first.region_code, first.acquirer_id, first.suspension) == (
        "5812",
        "310104",
        "acq-unionpay",
        None,
    )
    assert (second.name, second.modes, second.enrolled_campaigns) == (
        "café",
        frozenset({"in_store"}),
        frozenset({"c-other"}),
    )
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated):
        upsert("cafe", ["in_store"], ["no-such-campaign"])(uow)


def test_a_merchant_is_suspended_once_reinstated_once_and_an_import_keeps_it_suspended(
    store: Store,
) -> None:
    with_campaign(store)

    def upsert(uow: UnitOfWork) -> None:
        uow.people.upsert_merchant(
            merchant_id="m1",
            name="cafe",
            mcc="5812",
            region_code="310104",
            modes=["in_store"],
            acquirer_id="acq-unionpay",
            campaign_ids=[CAMPAIGN],
            now=T0,
        )

    def merchant() -> MerchantRow:
        with committed(store) as uow:
            found = uow.people.get_merchant("m1")
        assert found is not None
        return found

    in_own_transaction(store, upsert)
    assert not merchant().suspended
    at = T0 + timedelta(hours=1)
    with store.unit_of_work() as uow:
        p = uow.people
        assert not p.reinstate_merchant("m1")  # nothing to lift
        assert p.suspend_merchant("m1", reason="套现 suspected", suspended_by="bob", now=at)
        # Suspended already: the first suspension stays as it was.
        assert not p.suspend_merchant("m1", reason="again", suspended_by="carol", now=T0)
        assert not p.suspend_merchant("nope", reason="x", suspended_by="bob", now=at)
        assert not p.reinstate_merchant("nope")
        uow.commit()
    suspended = merchant()
    assert suspended.suspension == MerchantSuspension("套现 suspected", "bob", at)
    assert suspended.suspended
    # A merchant import replaces the fields, never the operator's suspension.
    in_own_transaction(store, upsert)
    assert merchant().suspension == MerchantSuspension("套现 suspected", "bob", at)
    with store.unit_of_work() as uow:
        assert uow.people.reinstate_merchant("m1")
        assert not uow.people.reinstate_merchant("m1")
        uow.commit()
    reinstated = merchant()
    assert reinstated.suspension is None
    assert not reinstated.suspended
    assert (reinstated.name, reinstated.enrolled_campaigns) == ("cafe", frozenset({CAMPAIGN}))


def test_a_person_round_trips_and_their_id_and_id_number_are_taken_once(store: Store) -> None:
    in_own_transaction(store, lambda uow: uow.people.insert_person(person_values(1)))
    with committed(store) as uow:
        person = uow.people.person_by_id_number_bidx("bidx-1")
        assert uow.people.person_by_id_number_bidx("bidx-9") is None
    assert person is not None
    assert (person.id, person.id_number_bidx, person.id_number_enc) == ("p1", "bidx-1", b"id-1")
    assert person.key_id == "k1"
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.people.insert_person(person_values(2, id="p1"))
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.people.insert_person(person_values(2, id_number_bidx="bidx-1"))
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated):
        uow.people.insert_person(person_values(3, consent_at=None))


def test_what_a_channel_registered_is_its_own_account_s(store: Store) -> None:
    """A person's name, phone and region live on each channel's account: one channel
    changing them changes nothing another channel registered."""
    with_people(store, 1)
    in_own_transaction(
        store,
        lambda uow: uow.people.insert_account(
            channel_id="alipay",
            channel_user_id="a1",
            person_id="p1",
            identity=identity_values(1, residence_region="320102"),
            now=T0,
        ),
    )
    moved = identity_values(1, residence_region="440305", name_enc=b"name2")
    in_own_transaction(store, lambda uow: uow.people.update_account_identity("wechat", "u1", moved))
    in_own_transaction(store, lambda uow: uow.people.update_account_identity("wechat", "u9", moved))
    with committed(store) as uow:
        assert uow.people.claimants("wechat", ["u1"])["u1"][1] == "440305"
        assert uow.people.claimants("alipay", ["a1"])["a1"][1] == "320102"
        assert uow.people.claimants("wechat", ["u9"]) == {}


def test_whether_any_operator_exists(store: Store) -> None:
    with committed(store) as uow:
        assert uow.people.any_operator() is False
    in_own_transaction(store, lambda uow: operator(uow, "alice"))
    with committed(store) as uow:
        assert uow.people.any_operator() is True


def test_key_canaries_are_written_once_and_samples_read(store: Store) -> None:
    with committed(store) as uow:
        assert uow.keys.canaries() == {}
        assert uow.keys.sealed_samples(10) == []
    in_own_transaction(store, lambda uow: uow.keys.add_canaries({"blind_index": b"x"}, now=T0))
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.keys.add_canaries({"blind_index": b"y"}, now=T0)
    with_people(store, 1)
    with committed(store) as uow:
        assert uow.keys.canaries() == {"blind_index": b"x"}
        [sample] = uow.keys.sealed_samples(10)
    assert (sample.field, sample.key_id, sample.ciphertext) == ("id_number", "k1", b"id-1")
    assert sample.blind_index == "bidx-1"


def test_accounts_bind_one_user_and_one_person_per_channel(store: Store) -> None:
    with_people(store, 1)
    in_own_transaction(store, lambda uow: uow.people.insert_person(person_values(2)))
    with committed(store) as uow:
        assert uow.people.account_person("wechat", "u1") == "p1"
        assert uow.people.account_person("alipay", "u1") is None
        assert uow.people.person_account_in_channel("wechat", "p1") == "u1"
        assert uow.people.person_account_in_channel("alipay", "p1") is None

    def bind(user: str, person: str, channel: str = "wechat") -> Callable[[UnitOfWork], None]:
        return lambda uow: uow.people.insert_account(
            channel_id=channel,
            channel_user_id=user,
            person_id=person,
            identity=identity_values(1),
            now=T0,
        )

    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        bind("u1", "p2")(uow)  # the user is bound
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        bind("u1b", "p1")(uow)  # the person has an account in the channel
    with store.unit_of_work() as uow, pytest.raises(ConstraintViolated):
        bind("u9", "p9")(uow)  # no such person
    in_own_transaction(store, bind("u1", "p1", channel="alipay"))
    with committed(store) as uow:
        assert uow.people.account_person("alipay", "u1") == "p1"


def test_the_blacklist_adds_once_and_removes_once(store: Store) -> None:
    with store.unit_of_work() as uow:
        p = uow.people
        assert p.add_blacklist(bidx="bidx-1", reason="fraud", created_by="bob", now=T0)
        assert not p.add_blacklist(bidx="bidx-1", reason="again", created_by="bob", now=T0)
        assert p.add_blacklist(bidx="bidx-2", reason="fraud", created_by="bob", now=T0)
        uow.commit()
    with committed(store) as uow:
        assert uow.people.blacklisted(["bidx-1", "bidx-3", "bidx-2", "bidx-1"]) == {
            "bidx-1",
            "bidx-2",
        }
        assert uow.people.blacklisted([]) == set()
    with store.unit_of_work() as uow:
        assert uow.people.remove_blacklist("bidx-1")
        assert not uow.people.remove_blacklist("bidx-1")
        uow.commit()
    with committed(store) as uow:
        assert uow.people.blacklisted(["bidx-1", "bidx-2"]) == {"bidx-2"}


def test_claimants_are_found_with_their_region_and_blacklisting(store: Store) -> None:
    with_people(store, 1, 2)
    in_own_transaction(
        store,
        lambda uow: uow.people.add_blacklist(bidx="bidx-2", reason="x", created_by="bob", now=T0),
    )
    with committed(store) as uow:
        found = uow.people.claimants("wechat", ["u1", "u2", "u3"])
        elsewhere = uow.people.claimants("alipay", ["u1"])
    assert found == {"u1": ("p1", "310104", False), "u2": ("p2", "310104", True)}
    assert elsewhere == {}


# -- vouchers -----------------------------------------------------------------------------


def test_claimed_vouchers_round_trip(store: Store) -> None:
    vouchers = [voucher(1), voucher(2, seq=2), voucher(3, person="p2"), voucher(4, round_id="r2")]
    in_own_transaction(store, lambda uow: claim(uow, *vouchers))
    with committed(store) as uow:
        assert [uow.vouchers.get_voucher(v.id) for v in vouchers] == vouchers
        assert uow.vouchers.get_voucher("v9999") is None
        assert uow.vouchers.get_vouchers(["v0002", "v0001", "v9999", "v0001"]) == {
            "v0001": vouchers[0],
            "v0002": vouchers[1],
        }
        assert uow.vouchers.get_vouchers([]) == {}
        slots = uow.vouchers.claimed_slots(CAMPAIGN, "r1", "wechat", ["p1", "p2", "p3"])
    with store.unit_of_work() as uow:
        assert uow.vouchers.lock_voucher("v0003") == vouchers[2]
        assert uow.vouchers.lock_voucher("v9999") is None
    assert slots == {("p1", 1), ("p1", 2), ("p2", 1)}


@pytest.mark.parametrize(
    ("second", "error"),
    [
        pytest.param(lambda v: replace(v, person_id="p2"), DuplicateKey, id="voucher-id"),
        pytest.param(lambda v: replace(v, id="v0002"), DuplicateKey, id="claim-slot"),
        pytest.param(
            lambda v: replace(v, id="v0002", claim_seq=2, face_fen=0),
            ConstraintViolated,
            id="face-not-positive",
        ),
    ],
)
def test_a_voucher_is_refused_by_its_keys_and_checks(
    store: Store, second: Callable[[VoucherRow], VoucherRow], error: type[StoreError]
) -> None:
    first = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, first))
    other = second(first)
    with store.unit_of_work() as uow, pytest.raises(error):
        uow.vouchers.insert_claims([other], [("wechat", "another-key", "h")], T0)


def test_a_claim_key_is_taken_once_per_app(store: Store) -> None:
    first = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, first))
    same_key = ("wechat", "key-v0001", "h")
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.vouchers.insert_claims([voucher(2, seq=2)], [same_key], T0)
    with store.unit_of_work() as uow:  # the same key of another app is another key
        uow.vouchers.insert_claims([voucher(2, seq=2)], [("alipay", "key-v0001", "h")], T0)
        uow.commit()


def test_a_batch_with_a_duplicate_inside_it_is_refused(store: Store) -> None:
    a, b = voucher(1), voucher(2)  # both claim slot (p1, seq 1)
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        claim(uow, a, b)
    with committed(store) as uow:
        assert uow.vouchers.get_vouchers([a.id, b.id]) == {}


def test_a_voucher_moves_only_as_it_was_read(store: Store) -> None:
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    with store.unit_of_work() as uow:
        assert uow.vouchers.move_voucher(v, state=VoucherState.LOCKED, now=T0, redemption_id="r1")
        assert not uow.vouchers.move_voucher(v, state=VoucherState.REDEEMED, now=T0)  # stale
        locked = uow.vouchers.get_voucher(v.id)
        assert locked == replace(v, state=VoucherState.LOCKED, version=2, redemption_id="r1")
        assert not uow.vouchers.move_voucher(
            replace(locked, state=VoucherState.ISSUED), state=VoucherState.REDEEMED, now=T0
        )
        assert uow.vouchers.move_voucher(locked, state=VoucherState.ISSUED, now=T0)
        assert not uow.vouchers.move_voucher(voucher(9), state=VoucherState.LOCKED, now=T0)
        uow.commit()
    with committed(store) as uow:
        back = uow.vouchers.get_voucher(v.id)
    assert back == replace(v, version=3)  # the redemption id cleared with the move


def test_vouchers_move_together_and_a_stale_one_is_a_programmers_error(store: Store) -> None:
    a, b = voucher(1), voucher(2, person="p2")
    in_own_transaction(store, lambda uow: claim(uow, a, b))
    moves = [(a, VoucherState.REDEEMED, "r-a"), (b, VoucherState.REVOKED, None)]
    in_own_transaction(store, lambda uow: uow.vouchers.move_vouchers(moves, now=T0))
    with committed(store) as uow:
        assert uow.vouchers.get_vouchers([a.id, b.id]) == {
            a.id: replace(a, state=VoucherState.REDEEMED, version=2, redemption_id="r-a"),
            b.id: replace(b, state=VoucherState.REVOKED, version=2),
        }
    with store.unit_of_work() as uow, pytest.raises(AssertionError):
        uow.vouchers.move_vouchers([(a, VoucherState.ISSUED, None)], now=T0)


def test_a_persons_vouchers_are_paged_by_id(store: Store) -> None:
    vouchers = [
        voucher(5, seq=1),
        voucher(2, seq=2, channel="alipay"),
        voucher(9, seq=3, state=VoucherState.REDEEMED),
        voucher(1, seq=4),
        voucher(7, seq=5, person="p2"),
    ]
    in_own_transaction(store, lambda uow: claim(uow, *vouchers))

    def ids(**kwargs: Any) -> list[str]:
        with committed(store) as uow:
            kwargs.setdefault("channel_id", None)
            kwargs.setdefault("after_id", None)
            kwargs.setdefault("limit", 10)
            return [v.id for v in uow.vouchers.person_vouchers("p1", **kwargs)]

    assert ids() == ["v0001", "v0002", "v0005", "v0009"]
    assert ids(limit=2) == ["v0001", "v0002"]
    assert ids(after_id="v0002", limit=2) == ["v0005", "v0009"]
    assert ids(after_id="v0009") == []
    assert ids(channel_id="wechat") == ["v0001", "v0005", "v0009"]
    assert ids(states=["issued"]) == ["v0001", "v0002", "v0005"]
    assert ids(states=["redeemed", "expired"], channel_id="wechat") == ["v0009"]
    assert ids(limit=0) == []


def test_vouchers_past_validity_come_by_their_end_then_id(store: Store) -> None:
    end = T0 + timedelta(days=1)
    vouchers = [
        voucher(4, seq=1, valid_until=end),
        voucher(3, seq=2, valid_until=end - timedelta(hours=1)),
        voucher(2, seq=3, valid_until=end),
        voucher(1, seq=4, valid_until=end + timedelta(microseconds=1)),  # not yet
        voucher(5, seq=5, valid_until=end - timedelta(days=1), state=VoucherState.LOCKED),
    ]
    in_own_transaction(store, lambda uow: claim(uow, *vouchers))
    with committed(store) as uow:
        due = [v.id for v in uow.vouchers.vouchers_past_validity(end, 10)]
        first = [v.id for v in uow.vouchers.vouchers_past_validity(end, 2)]
    assert due == ["v0003", "v0002", "v0004"]
    assert first == ["v0003", "v0002"]


def test_counts_of_a_campaigns_vouchers(store: Store) -> None:
    vouchers = [
        voucher(1),
        voucher(2, seq=2, state=VoucherState.REDEEMED),
        voucher(3, person="p2", face_fen=15_000),
        voucher(4, round_id="r2", channel="alipay"),
        voucher(5, campaign="c-other"),
    ]
    in_own_transaction(store, lambda uow: claim(uow, *vouchers))
    with committed(store) as uow:
        issued = uow.vouchers.issued_counts(CAMPAIGN)
        claims = sorted(uow.vouchers.claim_counts(CAMPAIGN))
        states = uow.vouchers.voucher_state_counts(CAMPAIGN)
        assert uow.vouchers.issued_counts("nope") == {}
    assert issued == {("r1", "wechat", TEMPLATE): 3, ("r2", "alipay", TEMPLATE): 1}
    assert claims == [
        ("r1", "wechat", "p1", 2),
        ("r1", "wechat", "p2", 1),
        ("r2", "alipay", "p1", 1),
    ]
    assert states == {"issued": (3, 2 * FACE_FEN + 15_000), "redeemed": (1, FACE_FEN)}


def test_a_redemption_round_trips(store: Store) -> None:
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    values = redemption_values("r1", v, product_json='{"sku":"x"}')
    in_own_transaction(store, lambda uow: uow.vouchers.insert_redemption(values))
    with committed(store) as uow:
        row = uow.vouchers.get_redemption("r1")
        assert uow.vouchers.get_redemption("r9") is None
    expected = {k: v for k, v in values.items() if k != "product_json"}
    assert row == RedemptionRow(**expected)


@pytest.mark.parametrize(
    ("updates", "error"),
    [
        pytest.param({"id": "r1"}, DuplicateKey, id="redemption-id"),
        pytest.param({"voucher_id": "v9999"}, ConstraintViolated, id="no-such-voucher"),
        pytest.param({"discount_fen": 0, "pay_fen": 35_000}, ConstraintViolated, id="no-discount"),
        pytest.param({"pay_fen": 1}, ConstraintViolated, id="pay-not-the-rest"),
        pytest.param({"discount_fen": 40_000, "pay_fen": -5000}, ConstraintViolated, id="over"),
        pytest.param({"status": "lost"}, ConstraintViolated, id="status"),
    ],
)
def test_a_redemption_is_refused_by_its_keys_and_checks(
    store: Store, updates: dict[str, Any], error: type[StoreError]
) -> None:
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    in_own_transaction(
        store, lambda uow: uow.vouchers.insert_redemption(redemption_values("r1", v))
    )
    with store.unit_of_work() as uow, pytest.raises(error):
        uow.vouchers.insert_redemption(redemption_values("r2", v, **updates))
    with store.unit_of_work() as uow, pytest.raises(error):
        uow.vouchers.insert_redemptions([redemption_values("r2", v, **updates)])


def test_a_redemption_moves_only_as_it_was_read(store: Store) -> None:
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    in_own_transaction(
        store, lambda uow: uow.vouchers.insert_redemption(redemption_values("r1", v))
    )
    later = T0 + timedelta(minutes=1)
    with store.unit_of_work() as uow:
        read = uow.vouchers.get_redemption("r1")
        assert read is not None
        assert uow.vouchers.move_redemption(read, status=RedemptionStatus.REDEEMED, now=later)
        assert not uow.vouchers.move_redemption(
            read, status=RedemptionStatus.VOIDED, now=later
        )  # stale
        moved = uow.vouchers.get_redemption("r1")
        assert moved == replace(read, status=RedemptionStatus.REDEEMED, updated_at=later, version=2)
        assert moved is not None
        assert moved.status is RedemptionStatus.REDEEMED  # the enum, as every store hands it back
        assert not uow.vouchers.move_redemption(
            replace(moved, status=RedemptionStatus.LOCKED),
            status=RedemptionStatus.VOIDED,
            now=later,
        )
        uow.commit()


def test_locks_past_their_timeout_come_by_expiry_then_id(store: Store) -> None:
    vouchers = [voucher(n, seq=n) for n in range(1, 6)]
    in_own_transaction(store, lambda uow: claim(uow, *vouchers))
    at = T0 + timedelta(minutes=15)
    rows = [
        redemption_values("r-c", vouchers[0], lock_expires_at=at),
        redemption_values("r-a", vouchers[1], lock_expires_at=at),
        redemption_values("r-b", vouchers[2], lock_expires_at=at - timedelta(minutes=1)),
        redemption_values("r-d", vouchers[3], lock_expires_at=at + timedelta(microseconds=1)),
        redemption_values("r-e", vouchers[4], status="redeemed"),
    ]
    in_own_transaction(store, lambda uow: uow.vouchers.insert_redemptions(rows))
    with committed(store) as uow:
        due = [r.id for r in uow.vouchers.locks_past_timeout(at, 10)]
        first = [r.id for r in uow.vouchers.locks_past_timeout(at, 1)]
    assert due == ["r-b", "r-a", "r-c"]
    assert first == ["r-b"]


def test_a_redemption_batch_reads_its_answers_vouchers_and_people(store: Store) -> None:
    with_people(store, 1, 2)
    a, b = voucher(1), voucher(2, person="p2")
    in_own_transaction(store, lambda uow: claim(uow, a, b))
    in_own_transaction(
        store,
        lambda uow: uow.idempotency.store_answers(
            [answer_row("acq-unionpay", "k1"), answer_row("acq-other", "k2")]
        ),
    )
    with store.unit_of_work() as uow:
        reads = uow.vouchers.redemption_reads(
            [("acq-unionpay", "k1"), ("acq-unionpay", "k2"), ("wechat", "key-v0001")],
            [b.id, a.id, "v9999", a.id],
            [("wechat", "u1"), ("wechat", "u9"), ("alipay", "u2")],
        )
    assert reads.answers == {("acq-unionpay", "k1"): ("hash-k1", 200, '{"key":"k1"}')}
    assert reads.vouchers == {a.id: a, b.id: b}
    assert reads.persons == {("wechat", "u1"): "p1"}


# -- who waits for whom -------------------------------------------------------------------


def test_a_voucher_locked_by_one_writer_is_not_moved_by_another(store: Store) -> None:
    """Whether by a row lock (PostgreSQL) or the one writer lock (SQLite, memory): the
    second writer waits, then finds the voucher moved and answers False."""
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    with store.unit_of_work() as holder:
        locked = holder.vouchers.lock_voucher(v.id)
        assert locked is not None
        thread, out = in_thread(
            lambda: in_own_transaction(
                store, lambda uow: uow.vouchers.move_voucher(v, state=VoucherState.REVOKED, now=T0)
            )
        )
        thread.join(WAITS_S)
        assert thread.is_alive(), "the second writer did not wait"
        assert holder.vouchers.move_voucher(locked, state=VoucherState.LOCKED, now=T0)
        holder.commit()
    thread.join(THREAD_JOIN_TIMEOUT_S)
    assert out == [False]


def test_the_vouchers_a_redemption_batch_read_are_held_until_it_commits(store: Store) -> None:
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    with store.unit_of_work() as holder:
        reads = holder.vouchers.redemption_reads([], [v.id], [])
        thread, out = in_thread(
            lambda: in_own_transaction(
                store, lambda uow: uow.vouchers.move_voucher(v, state=VoucherState.REVOKED, now=T0)
            )
        )
        thread.join(WAITS_S)
        assert thread.is_alive(), "the second writer did not wait"
        moves = [(reads.vouchers[v.id], VoucherState.REDEEMED, None)]
        holder.vouchers.move_vouchers(moves, now=T0)
        holder.commit()
    thread.join(THREAD_JOIN_TIMEOUT_S)
    assert out == [False]


def test_writers_at_once_count_out_a_stock_and_a_budget_exactly(store: Store) -> None:
    """Twelve writers for a stock of five and a budget of four vouchers: each counts
    one out and posts its issue; exactly four get both, whatever the interleaving."""
    with_campaign(store, config(budget_fen=4 * FACE_FEN))
    barrier = threading.Barrier(12)

    def write() -> bool:
        with store.unit_of_work() as uow:
            if not uow.campaigns.take_stock(STOCK, 1):
                return False
            if not uow.ledger.record(issue_entry(FACE_FEN), campaign_id=CAMPAIGN, now=T0):
                return False
            uow.commit()
            return True

    def writer() -> bool:
        """A writer whose lock wait ran out (a loaded machine) took nothing and tries
        again, as a service told "unavailable" would."""
        barrier.wait(THREAD_JOIN_TIMEOUT_S)
        for _ in range(WRITER_TRIES - 1):
            try:
                return write()
            except StoreUnavailable:
                continue
        return write()

    started = [in_thread(writer) for _ in range(12)]
    for thread, _ in started:
        thread.join(THREAD_JOIN_TIMEOUT_S)
    outcomes = [out[0] for _, out in started]
    assert sorted(outcomes) == [False] * 8 + [True] * 4, outcomes
    with committed(store) as uow:
        assert uow.campaigns.stock_issued(CAMPAIGN)[("r1", "wechat", TEMPLATE)] == 4
        assert uow.campaigns.lock_stock(STOCK) == (5, 4)
        row = uow.campaigns.get_campaign(CAMPAIGN)
        assert row is not None
        assert row.committed_fen == 4 * FACE_FEN
        assert uow.ledger.balances(CAMPAIGN) == {
            "budget": -4 * FACE_FEN,
            "outstanding": 4 * FACE_FEN,
        }


# -- the ledger ---------------------------------------------------------------------------


def test_an_entry_takes_budget_when_it_fits_and_writes_nothing_when_not(store: Store) -> None:
    with_campaign(store)
    with store.unit_of_work() as uow:
        assert uow.ledger.record(fund_entry(5 * FACE_FEN), campaign_id=CAMPAIGN, now=T0)
        assert uow.ledger.record(
            issue_entry(3 * FACE_FEN), campaign_id=CAMPAIGN, now=T0, voucher_count=3
        )
        assert not uow.ledger.record(issue_entry(3 * FACE_FEN), campaign_id=CAMPAIGN, now=T0)
        assert uow.campaigns.lock_campaign_budget(CAMPAIGN) == (5 * FACE_FEN, 3 * FACE_FEN)
        assert uow.ledger.record(
            expire_entry(FACE_FEN), campaign_id=CAMPAIGN, now=T0, voucher_id="v1"
        )
        assert uow.ledger.record(issue_entry(3 * FACE_FEN), campaign_id=CAMPAIGN, now=T0)
        assert not uow.ledger.record(issue_entry(1), campaign_id=CAMPAIGN, now=T0)  # full
        assert not uow.ledger.record(issue_entry(FACE_FEN), campaign_id="nope", now=T0)
        uow.commit()
    with committed(store) as uow:
        row = uow.campaigns.get_campaign(CAMPAIGN)
        balances = uow.ledger.balances(CAMPAIGN)
        assert uow.ledger.balances("nope") == {}
    assert row is not None
    assert row.committed_fen == 5 * FACE_FEN
    assert balances == {"funding": -5 * FACE_FEN, "budget": 0, "outstanding": 5 * FACE_FEN}
    assert {type(account) for account in balances} == {str}  # text, not the Account enum
    assert sum(balances.values()) == 0


def test_giving_back_more_than_was_committed_is_a_programmers_error(store: Store) -> None:
    with_campaign(store)
    in_own_transaction(store, issued(FACE_FEN))
    with store.unit_of_work() as uow, pytest.raises(AssertionError):
        uow.ledger.record(expire_entry(2 * FACE_FEN), campaign_id=CAMPAIGN, now=T0)


def test_many_redemptions_give_budget_back_once_per_campaign(store: Store) -> None:
    with_campaign(store)
    with_campaign(store, config(id="c-other"))
    for campaign_id in (CAMPAIGN, "c-other"):
        in_own_transaction(store, issued(3 * FACE_FEN, campaign_id))

    def redeemed(discount_fen: int, campaign_id: str, n: int) -> tuple[Entry, dict[str, Any]]:
        entry = redeem_entry(face_fen=FACE_FEN, discount_fen=discount_fen, acquirer_id="acq")
        return entry, {"campaign_id": campaign_id, "voucher_id": f"v{n}", "redemption_id": f"r{n}"}

    posts = [redeemed(6000, CAMPAIGN, 1), redeemed(9000, "c-other", 2), redeemed(7000, CAMPAIGN, 3)]
    in_own_transaction(store, lambda uow: uow.ledger.record_many(posts, now=T0))
    in_own_transaction(store, lambda uow: uow.ledger.record_many([], now=T0))
    with committed(store) as uow:
        mine, other = uow.campaigns.get_campaign(CAMPAIGN), uow.campaigns.get_campaign("c-other")
        balances = uow.ledger.balances(CAMPAIGN)
    assert mine is not None
    assert other is not None
    assert mine.committed_fen == 3 * FACE_FEN - 3000 - 2000
    assert other.committed_fen == 3 * FACE_FEN
    assert balances == {
        "budget": -3 * FACE_FEN + 5000,
        "outstanding": FACE_FEN,
        "payable:acq": 13_000,
    }
    with store.unit_of_work() as uow, pytest.raises(AssertionError):
        uow.ledger.record_many([(issue_entry(1), {"campaign_id": CAMPAIGN})], now=T0)


def test_an_entry_posts_each_account_once(store: Store) -> None:
    with_campaign(store)
    twice = Entry(
        EntryKind.ISSUE,
        (Posting("budget", -5), Posting("outstanding", 10), Posting("budget", -5)),
    )
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.ledger.record(twice, campaign_id=CAMPAIGN, now=T0)


def test_outbox_events_are_counted_by_topic_and_an_id_is_taken_once(store: Store) -> None:
    with store.unit_of_work() as uow:
        uow.ledger.add_outbox(event_id="e1", topic="redemption.completed", payload={"a": 1}, now=T0)
        uow.ledger.add_outbox_many(
            [("e2", "redemption.completed", {"b": [1]}), ("e3", "refund.completed", {})], now=T0
        )
        uow.ledger.add_outbox_many([], now=T0)
        uow.commit()
    with committed(store) as uow:
        assert uow.ledger.outbox_topics() == {"redemption.completed": 2, "refund.completed": 1}
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.ledger.add_outbox(event_id="e1", topic="x", payload={}, now=T0)
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.ledger.add_outbox_many([("e4", "x", {}), ("e4", "x", {})], now=T0)


# The audit chain's published vectors: the hash of each line for the appends of
# ``test_the_audit_chain_hashes_are_the_published_vectors``, whatever the store.
AUDIT_VECTORS = (
    # sha256 of "1\n2026-11-28T02:00:00.000007+00:00\nalice\noperator.add\nbob\n"
    # '{"role":"checker"}\n' + "0" * 64: seq, at, actor, action, target, details, prev
    "6fba83c46e7fdfe84a8a33049b9ad96f2b4c2c808ac9a30d112d3814960b7948",
    "81906a37d1136d919756f913c6878715be78ed0f01f700b720ef9f80c277b4ea",
    "55a80f23c8a3fb022cddc23a48a366c348a8d5929e0628cccdeb8c76503ae18d",
)


def audit_chain(store: Store) -> list[tuple[int, str, str, str]]:
    """(seq, details_json, prev_hash, hash) of every line, as an auditor reads them."""
    if isinstance(store, MemoryStore):
        return [(a.seq, a.details_json, a.prev_hash, a.hash) for a in store.audit_log()]
    assert isinstance(store, SqlStore)
    a = t.audit_log.c
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(a.seq, a.details_json, a.prev_hash, a.hash).order_by(a.seq)
        ).all()
    return [(int(seq), details, prev, digest) for seq, details, prev, digest in rows]


def test_the_audit_chain_hashes_are_the_published_vectors(store: Store) -> None:
    appends: list[Mapping[str, Any]] = [
        {
            "actor": "alice",
            "action": "operator.add",
            "target": "bob",
            "details": {"role": "checker"},
        },
        {
            "actor": "alice",
            "action": "campaign.import",
            "target": CAMPAIGN,
            "details": {"名": "餐饮", "n": [1, 2]},
        },
        {"actor": "bob", "action": "campaign.approve", "target": CAMPAIGN, "details": {}},
    ]

    def append(line: Mapping[str, Any], at: datetime) -> Callable[[UnitOfWork], None]:
        return lambda uow: uow.ledger.append_audit(now=at, **line)

    for n, line in enumerate(appends):
        in_own_transaction(store, append(line, T0 + timedelta(seconds=n, microseconds=7)))
    chain = audit_chain(store)
    assert [seq for seq, _, _, _ in chain] == [1, 2, 3]
    assert chain[0][2] == "0" * 64
    assert [prev for _, _, prev, _ in chain[1:]] == [digest for _, _, _, digest in chain[:-1]]
    assert chain[1][1] == '{"n":[1,2],"名":"餐饮"}'
    assert tuple(digest for _, _, _, digest in chain) == AUDIT_VECTORS


def test_an_audit_append_that_is_rolled_back_leaves_no_gap(store: Store) -> None:
    def append(target: str) -> Callable[[UnitOfWork], None]:
        return lambda uow: uow.ledger.append_audit(
            actor="alice", action="x", target=target, details={}, now=T0
        )

    in_own_transaction(store, append("a"))
    with store.unit_of_work() as uow:
        append("b")(uow)
    in_own_transaction(store, append("c"))
    assert [seq for seq, _, _, _ in audit_chain(store)] == [1, 2]


# -- idempotency --------------------------------------------------------------------------


def test_an_answer_is_stored_once_per_app_and_key(store: Store) -> None:
    rows = [answer_row("acq-unionpay", "k1"), answer_row("acq-other", "k1", status_code=409)]
    in_own_transaction(store, lambda uow: uow.idempotency.store_answers(rows))
    in_own_transaction(store, lambda uow: uow.idempotency.store_answers([]))
    with committed(store) as uow:
        assert uow.idempotency.idempotent_answer("acq-unionpay", "k1") == (
            "hash-k1",
            200,
            '{"key":"k1"}',
        )
        assert uow.idempotency.idempotent_answer("acq-other", "k1") == (
            "hash-k1",
            409,
            '{"key":"k1"}',
        )
        assert uow.idempotency.idempotent_answer("acq-unionpay", "k2") is None
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.idempotency.store_answers([answer_row("acq-unionpay", "k1")])
    with store.unit_of_work() as uow, pytest.raises(DuplicateKey):
        uow.idempotency.store_answers([answer_row("a", "k3"), answer_row("a", "k3")])


def test_answered_keys_finds_a_claims_key_on_its_voucher_and_other_answers_stored(
    store: Store,
) -> None:
    v = voucher(1)
    in_own_transaction(store, lambda uow: claim(uow, v))
    in_own_transaction(
        store,
        lambda uow: uow.idempotency.store_answers(
            [answer_row("wechat", "k-old-claim", status_code=201), answer_row("alipay", "k-x")]
        ),
    )
    with committed(store) as uow:
        found = uow.idempotency.answered_keys("wechat", ["key-v0001", "k-old-claim", "k-x", "k9"])
        elsewhere = uow.idempotency.answered_keys("alipay", ["key-v0001", "k-x"])
        assert uow.idempotency.answered_keys("wechat", []) == {}
    assert found == {
        "key-v0001": ("hash-v0001", 201, None, v.id),
        "k-old-claim": ("hash-k-old-claim", 201, '{"key":"k-old-claim"}', None),
    }
    assert elsewhere == {"k-x": ("hash-k-x", 200, '{"key":"k-x"}', None)}


# -- a model of stock and budget ----------------------------------------------------------


@dataclass
class Books:
    """What the store should hold of one campaign: its stock and its budget counter."""

    issued: int = 0
    committed_fen: int = 0
    balances: dict[str, int] = field(default_factory=dict)

    def post(self, entry: Entry) -> None:
        for p in entry.postings:
            self.balances[p.account] = self.balances.get(p.account, 0) + p.amount_fen


INITIAL = 6
HISTORIES = itertools.count()
BUDGET_FEN = 5 * FACE_FEN


@functools.cache
def history_config() -> CampaignConfig:
    """The campaign of every history, parsed once (each gets its own id by copy)."""
    return config(stock={"wechat": {TEMPLATE: INITIAL}}, budget_fen=BUDGET_FEN)


class StockAndBudget(RuleBasedStateMachine):
    """Random histories of counting out, issuing, giving back, committing and rolling
    back in one writer: the store agrees with the model inside the transaction and,
    for every reader, with what was committed; the stock is never past its initial,
    the counter never past the budget, the postings always sum to zero."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.uow_block: AbstractContextManager[UnitOfWork] | None = None
        self.uow: UnitOfWork | None = None
        self.campaign_id = ""
        self.key: StockKey = STOCK
        self.committed_books = Books()
        self.books = Books()

    @initialize()
    def start(self) -> None:
        # A campaign of its own per history: nothing to clear between examples.
        self.campaign_id = f"c-{next(HISTORIES)}"
        self.key = (self.campaign_id, "r1", "wechat", TEMPLATE)
        with_campaign(self.store, history_config().model_copy(update={"id": self.campaign_id}))
        self.uow_block = self.store.unit_of_work()
        self.uow = self.uow_block.__enter__()

    def teardown(self) -> None:
        if self.uow_block is not None:
            self.uow_block.__exit__(None, None, None)

    @rule(count=st.integers(min_value=1, max_value=4))
    def take_stock(self, count: int) -> None:
        assert self.uow is not None
        fits = self.books.issued + count <= INITIAL
        assert self.uow.campaigns.take_stock(self.key, count) is fits
        if fits:
            self.books.issued += count

    @rule(vouchers=st.integers(min_value=1, max_value=3), face=st.sampled_from([1, 3000, FACE_FEN]))
    def issue(self, vouchers: int, face: int) -> None:
        assert self.uow is not None
        entry = issue_entry(vouchers * face)
        fits = self.books.committed_fen + vouchers * face <= BUDGET_FEN
        recorded = self.uow.ledger.record(
            entry, campaign_id=self.campaign_id, now=T0, voucher_count=vouchers
        )
        assert recorded is fits
        if fits:
            self.books.committed_fen += vouchers * face
            self.books.post(entry)

    @precondition(lambda self: self.books.committed_fen > 0)
    @rule(data=st.data())
    def give_back(self, data: st.DataObject) -> None:
        assert self.uow is not None
        amount = data.draw(st.integers(min_value=1, max_value=self.books.committed_fen))
        entry = expire_entry(amount)
        assert self.uow.ledger.record(entry, campaign_id=self.campaign_id, now=T0)
        self.books.committed_fen -= amount
        self.books.post(entry)

    @rule()
    def commit(self) -> None:
        assert self.uow is not None
        self.uow.commit()
        self.committed_books = replace(self.books, balances=dict(self.books.balances))

    @rule()
    def roll_back(self) -> None:
        assert self.uow is not None
        self.uow.rollback()
        self.books = replace(self.committed_books, balances=dict(self.committed_books.balances))

    @invariant()
    def the_store_agrees_with_the_model(self) -> None:
        if self.uow is None:
            return
        own = (
            self.uow.campaigns.lock_stock(self.key),
            self.uow.campaigns.lock_campaign_budget(self.campaign_id),
        )
        assert own == ((INITIAL, self.books.issued), (BUDGET_FEN, self.books.committed_fen))
        assert {a: n for a, n in self.uow.ledger.balances(self.campaign_id).items() if n} == {
            a: n for a, n in self.books.balances.items() if n
        }
        with committed(self.store) as reader:
            stock = reader.campaigns.stock_issued(self.campaign_id)[("r1", "wechat", TEMPLATE)]
            row = reader.campaigns.get_campaign(self.campaign_id)
            balances = reader.ledger.balances(self.campaign_id)
        assert row is not None
        assert 0 <= stock == self.committed_books.issued <= INITIAL
        assert 0 <= row.committed_fen == self.committed_books.committed_fen <= BUDGET_FEN
        assert sum(balances.values()) == 0
        assert -balances.get("budget", 0) == row.committed_fen


def test_random_histories_of_stock_and_budget_match_the_model(store: Store) -> None:
    class OnThisStore(StockAndBudget):
        def __init__(self) -> None:
            super().__init__(store)

    # Each SQL step is a few statements and round trips; the memory store carries the
    # many long histories, the SQL stores a few short ones (CI's whole budget is minutes).
    light = isinstance(store, SqlStore)
    run_state_machine_as_test(
        OnThisStore,
        settings=settings(
            max_examples=10 if light else 50,
            stateful_step_count=12 if light else 20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
