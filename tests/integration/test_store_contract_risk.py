"""The store contract, continued: risk control (migration 0012) on SQLite, PostgreSQL
and the in-memory store alike.

What the risk services rely on: the rules file's versions round-trip and one at most
is active, even when two approvals race; a review item round-trips with its JSON, is
listed by status and kind in id order, is decided once (a conditional move) and its
outcome recorded once; the device and phone blacklists answer a batch in one call.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from lequan.ports import DuplicateKey, Store
from lequan.rows import ReviewRow
from tests.integration.test_store_contract import (
    T0,
    THREAD_JOIN_TIMEOUT_S,
    committed,
    in_own_transaction,
    with_people,
)


def review(n: int, *, kind: str = "claim", campaign: str | None = "sh-dining-2024") -> ReviewRow:
    return ReviewRow(
        id=f"rv{n:04d}",
        kind=kind,
        status="pending",
        created_at=T0 + timedelta(seconds=n),
        subject={"channel_id": "wechat", "channel_user_id": f"u{n}", "signals": {"ip": "1.2.3.4"}},
        reasons=[{"code": "velocity_ip", "action": "review", "figures": {"claims": 9, "limit": 5}}],
        rules_version=3,
        campaign_id=campaign,
    )


# -- the rules file ---------------------------------------------------------------------------


def drafts(store: Store, *versions: int) -> None:
    with store.unit_of_work() as uow:
        for version in versions:
            uow.risk.add_rules(
                version=version, text=f"version: {version}\n", drafted_by="alice", now=T0
            )
        uow.commit()


def test_rules_versions_round_trip_and_one_is_active(store: Store) -> None:
    with committed(store) as uow:
        assert (uow.risk.active_version(), uow.risk.latest_version()) == (None, None)
        assert uow.risk.active_rules() is None
    drafts(store, 1, 2)
    with pytest.raises(DuplicateKey), store.unit_of_work() as uow:
        uow.risk.add_rules(version=2, text="again", drafted_by="alice", now=T0)
    assert in_own_transaction(
        store, lambda uow: uow.risk.activate_rules(1, approved_by="bob", now=T0)
    )
    assert in_own_transaction(
        store, lambda uow: uow.risk.activate_rules(2, approved_by="bob", now=T0)
    )
    # Only a draft is put in force.
    assert not in_own_transaction(
        store, lambda uow: uow.risk.activate_rules(1, approved_by="bob", now=T0)
    )
    assert not in_own_transaction(
        store, lambda uow: uow.risk.activate_rules(9, approved_by="bob", now=T0)
    )
    with committed(store) as uow:
        assert (uow.risk.active_version(), uow.risk.latest_version()) == (2, 2)
        versions = uow.risk.list_rules(limit=10)
        assert [(r.version, r.status, r.approved_by) for r in versions] == [
            (2, "active", "bob"),
            (1, "retired", "bob"),
        ]
        assert uow.risk.list_rules(limit=1)[0].version == 2
        two = uow.risk.get_rules(2)
        assert two is not None
        assert (two.text, two.drafted_by, two.drafted_at, two.approved_at) == (
            "version: 2\n",
            "alice",
            T0,
            T0,
        )
        assert uow.risk.get_rules(3) is None


def test_two_approvals_racing_leave_one_version_active(store: Store) -> None:
    drafts(store, 1, 2)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def approve(version: int) -> None:
        try:
            start.wait()
            with store.unit_of_work() as uow:
                outcomes.append(uow.risk.activate_rules(version, approved_by="bob", now=T0))
                uow.commit()
        except DuplicateKey as error:
            outcomes.append(error)

    threads = [threading.Thread(target=approve, args=(v,)) for v in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_TIMEOUT_S)
    assert len(outcomes) == 2
    with committed(store) as uow:
        active = [r for r in uow.risk.list_rules(limit=10) if r.status == "active"]
    assert len(active) == 1


# -- the review queue -------------------------------------------------------------------------


def test_a_review_round_trips_with_its_json(store: Store) -> None:
    in_own_transaction(store, lambda uow: uow.risk.add_reviews([review(1)]))
    with committed(store) as uow:
        found = uow.risk.get_review("rv0001")
        assert uow.risk.get_review("rv9999") is None
    assert found == review(1)
    with pytest.raises(DuplicateKey), store.unit_of_work() as uow:
        uow.risk.add_reviews([review(1)])


def test_many_reviews_go_in_one_write(store: Store) -> None:
    rows = [review(n) for n in range(1, 21)]
    with store.unit_of_work() as uow:
        with uow.pipeline():
            uow.risk.add_reviews(rows)
        uow.commit()
    with committed(store) as uow:
        assert uow.risk.list_reviews(status=None, kind=None, after_id=None, limit=100) == rows


def test_reviews_are_listed_by_status_and_kind_in_id_order(store: Store) -> None:
    rows = [review(1), review(2, kind="redemption", campaign=None), review(3), review(4)]
    in_own_transaction(store, lambda uow: uow.risk.add_reviews(rows))
    in_own_transaction(
        store,
        lambda uow: uow.risk.decide_review(
            "rv0003", expected="pending", status="rejected", decided_by="ana", reason="x", now=T0
        ),
    )
    with committed(store) as uow:

        def ids(**where: object) -> list[str]:
            query = {"status": None, "kind": None, "after_id": None, "limit": 100, **where}
            return [r.id for r in uow.risk.list_reviews(**query)]  # type: ignore[arg-type]

        assert ids() == ["rv0001", "rv0002", "rv0003", "rv0004"]
        assert ids(status="pending") == ["rv0001", "rv0002", "rv0004"]
        assert ids(status="pending", kind="claim") == ["rv0001", "rv0004"]
        assert ids(kind="redemption") == ["rv0002"]
        assert ids(status="rejected") == ["rv0003"]
        assert ids(after_id="rv0001", limit=2) == ["rv0002", "rv0003"]


def test_a_review_is_decided_once_and_its_outcome_recorded_once(store: Store) -> None:
    in_own_transaction(store, lambda uow: uow.risk.add_reviews([review(1)]))
    later = T0 + timedelta(minutes=5)
    assert in_own_transaction(
        store,
        lambda uow: uow.risk.decide_review(
            "rv0001",
            expected="pending",
            status="approved",
            decided_by="ana",
            reason="ok",
            now=later,
        ),
    )
    assert not in_own_transaction(
        store,
        lambda uow: uow.risk.decide_review(
            "rv0001",
            expected="pending",
            status="rejected",
            decided_by="ana",
            reason="no",
            now=later,
        ),
    )
    assert in_own_transaction(
        store,
        lambda uow: uow.risk.set_review_outcome(
            "rv0001", outcome="issued", detail={"voucher_id": "v1"}
        ),
    )
    assert not in_own_transaction(
        store, lambda uow: uow.risk.set_review_outcome("rv0001", outcome="sold_out", detail=None)
    )
    with committed(store) as uow:
        found = uow.risk.get_review("rv0001")
    assert found is not None
    assert (found.status, found.decided_by, found.decided_at, found.decision_reason) == (
        "approved",
        "ana",
        later,
        "ok",
    )
    assert (found.outcome, found.outcome_detail) == ("issued", {"voucher_id": "v1"})


# -- the blacklists ---------------------------------------------------------------------------


def test_devices_and_phones_on_their_lists(store: Store) -> None:
    with_people(store, 1, 2, 3)
    for kind, value in (
        ("device", "dev-00000001"),
        ("device", "dev-00000002"),
        ("phone", "phone-2"),
    ):
        with store.unit_of_work() as uow:
            assert uow.risk.add_blacklisted(
                kind=kind, value=value, reason="farm", created_by="ana", now=T0
            )
            uow.commit()
    # Listed already: the first reason stays.
    assert not in_own_transaction(
        store,
        lambda uow: uow.risk.add_blacklisted(
            kind="device", value="dev-00000001", reason="other", created_by="bob", now=T0
        ),
    )
    with committed(store) as uow:
        assert uow.risk.blacklisted_devices(["dev-00000001", "dev-00000009", "phone-2"]) == {
            "dev-00000001"
        }
        assert uow.risk.blacklisted_devices([]) == set()
        assert uow.risk.blacklisted_phones("wechat", ["u1", "u2", "u3", "u9"]) == {"u2"}
        assert uow.risk.blacklisted_phones("alipay", ["u2"]) == set()
        assert uow.risk.blacklisted_phones("wechat", []) == set()
        devices = uow.risk.list_blacklisted(kind="device", after=None, limit=10)
        assert [(r.value, r.reason, r.created_by, r.created_at) for r in devices] == [
            ("dev-00000001", "farm", "ana", T0),
            ("dev-00000002", "farm", "ana", T0),
        ]
        assert [
            r.value
            for r in uow.risk.list_blacklisted(kind="device", after="dev-00000001", limit=10)
        ] == ["dev-00000002"]
        assert [r.value for r in uow.risk.list_blacklisted(kind="phone", after=None, limit=1)] == [
            "phone-2"
        ]
    assert in_own_transaction(
        store, lambda uow: uow.risk.remove_blacklisted(kind="device", value="dev-00000001")
    )
    assert not in_own_transaction(
        store, lambda uow: uow.risk.remove_blacklisted(kind="device", value="dev-00000001")
    )
    with committed(store) as uow:
        assert uow.risk.blacklisted_devices(["dev-00000001", "dev-00000002"]) == {"dev-00000002"}


def test_an_analyst_is_an_operator_role(store: Store) -> None:
    in_own_transaction(
        store,
        lambda uow: uow.people.add_operator(
            operator_id="ana", role="analyst", token_hash="t-ana", now=T0
        ),
    )
    with committed(store) as uow:
        assert uow.people.operator_role("ana") == "analyst"
