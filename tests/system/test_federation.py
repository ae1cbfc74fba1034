"""The federation under faults: a real central and two real provinces (Guangdong and
Zhejiang), each its own process on a loopback port with its store on PostgreSQL,
stood up with the operator's commands (``tests/system/federation.py``).

Each scenario runs on a trade-in campaign and people of its own, and ends with
the same invariants checked against the three stores (``assert_invariants``):
nobody subsidised twice per category nationwide, no serial number twice, every
event of every province at central exactly once and applied, and ``lequan
reconcile`` clean (exit 0) in both provinces.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from lequan.adapters.central_http import HttpCentral
from lequan.ports.central import EventOutcome, SyncEvent
from lequan.services.qualification import lock_id_for
from tests.system.federation import (
    ACQUIRER,
    CHANNEL,
    HOLD_S,
    Federation,
    Province,
    assert_invariants,
    federation,
)
from tests.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(scope="module")
def federated(postgres_url: str, postgres_template: str, redis_url: str) -> Iterator[Federation]:
    # Zhejiang serves with two worker processes on Redis, as in production.
    with federation(postgres_url, postgres_template, redis_url=redis_url) as started:
        yield started


@pytest.fixture
def fed(federated: Federation) -> Federation:
    """The module's federation, every process running (a scenario that failed while one
    was down leaves it so) and no fault armed."""
    federated.restart_what_is_down()
    return federated


def fridge(serial: str, **changes: Any) -> dict[str, Any]:
    product: dict[str, Any] = {
        "category": "refrigerator",
        "brand": "Haier",
        "model": "BCD-470WGHTDEDW",
        "sku": "100012345678",
        "energy_grade": 1,
        "price_fen": 599_900,
        "serial_number": serial,
        "invoice_number": f"INV{uuid.uuid4().hex[:16].upper()}",
        "old_appliance_handed_in": True,
    }
    return {**product, **changes}


def washer(serial: str) -> dict[str, Any]:
    return fridge(serial, category="washing_machine", model="XQG100", energy_grade=2)


def code_of(answer: Any) -> tuple[int, str]:
    return answer.status_code, answer.json().get("code", "")


def issued(province: Province, campaign_id: str, user: str, template: str) -> str:
    answer = province.apply(campaign_id, user, template)
    assert answer.status_code == 201, answer.text
    voucher_id: str = answer.json()["voucher"]["voucher_id"]
    return voucher_id


def redeemed(province: Province, campaign_id: str, voucher_id: str, user: str, product: Any) -> Any:
    answer = province.redeem(campaign_id, voucher_id, user, product)
    assert answer.status_code == 201, answer.text
    return answer.json()


# -- 1. the happy path ----------------------------------------------------------------------


def test_residents_of_two_provinces_share_one_national_qualification(fed: Federation) -> None:
    gd, zj = fed.gd, fed.zj
    gd.open_campaign("s1-gd", refund_policy="always_void")
    zj.open_campaign("s1-zj", refund_policy="always_void")
    # Person 101 signs up in both provinces: one ID number, one national pseudonym.
    user = gd.register(101)
    zj.register(101)
    fridge_voucher = issued(gd, "s1-gd", user, "refrigerator")
    refused = zj.apply("s1-zj", user, "refrigerator")
    assert code_of(refused) == (409, "qualification_used_elsewhere")
    # Another category is another qualification.
    washer_voucher = issued(zj, "s1-zj", user, "washing-machine")

    # Redemptions with the product's details; the subsidy from the template.
    sold = redeemed(gd, "s1-gd", fridge_voucher, user, fridge("S1-FRIDGE-0001"))
    assert sold["discount_fen"] == 119_980  # 20 % of 5,999 yuan at grade 1
    redeemed(zj, "s1-zj", washer_voucher, user, washer("S1-WASHER-0001"))
    # The same refrigerator's serial in the other province: subsidised once nationwide.
    neighbour = zj.register(102)
    other = issued(zj, "s1-zj", neighbour, "refrigerator")
    again = zj.redeem("s1-zj", other, neighbour, fridge("s1 fridge-0001"))
    assert code_of(again) == (409, "serial_already_subsidised")

    # The refrigerator comes back: once central hears of the refund, the qualification
    # is free, and Zhejiang may lock it.
    assert gd.refund(sold["redemption_id"], 599_900).status_code == 201
    fed.synced("the refund reached central")
    moved = issued(zj, "s1-zj", user, "refrigerator")
    redeemed(zj, "s1-zj", moved, user, fridge("S1-FRIDGE-0001"))

    # A reversal (冲正) gives the voucher back to its holder: the qualification stays
    # Guangdong's, and Zhejiang is refused after the sync as before it.
    third = gd.register(103)
    zj.register(103)
    tv = issued(gd, "s1-gd", third, "tv")
    sold_tv = redeemed(gd, "s1-gd", tv, third, fridge("S1-TV-0001", category="tv"))
    undone = gd.post(ACQUIRER, f"/v1/redemptions/{sold_tv['redemption_id']}/reverse", None)
    assert undone.status_code == 200, undone.text
    fed.synced("the reversal reached central")
    assert code_of(zj.apply("s1-zj", third, "tv")) == (409, "qualification_used_elsewhere")
    assert_invariants(fed)


def pseudonym(province: Province, user: str) -> str:
    [(found,)] = province.rows(
        "SELECT p.pseudonym FROM persons p JOIN person_accounts a ON a.person_id = p.id"
        " WHERE a.channel_user_id = :u",
        u=user,
    )
    assert found is not None
    return str(found)


def vouchers_of(province: Province, campaign_id: str) -> int:
    [(count,)] = province.rows(
        "SELECT count(*) FROM vouchers WHERE campaign_id = :c", c=campaign_id
    )
    return int(count)


# -- 2. central killed mid-sale and restarted ---------------------------------------------------


def test_central_killed_mid_sale_and_restarted_loses_nothing(fed: Federation) -> None:
    gd, zj = fed.gd, fed.zj
    gd.open_campaign("s2-gd")
    zj.open_campaign("s2-zj")
    users = {n: gd.register(n) for n in (201, 202, 203)} | {n: zj.register(n) for n in (211, 212)}
    sold_before = {n: issued(gd, "s2-gd", users[n], "refrigerator") for n in (201, 202)}
    sold_before[211] = issued(zj, "s2-zj", users[211], "refrigerator")
    fed.synced()

    fed.central.kill()
    # Redemptions of vouchers already issued go on; their events wait in the outbox.
    for n, voucher_id in sold_before.items():
        province, campaign = (gd, "s2-gd") if n < 210 else (zj, "s2-zj")
        redeemed(province, campaign, voucher_id, users[n], fridge(f"S2-FRIDGE-{n}"))
    assert gd.outbox()["pending"] >= 2
    assert zj.outbox()["pending"] >= 1
    # Applications need central's lock: 503, nothing issued, however often retried.
    # (Last before the restart: a lock left held longer than LEQUAN_TRADE_IN_HOLD_S
    # is given back by the sweep, and its retry asks central for it again.)
    keys = {203: uuid.uuid4().hex, 212: uuid.uuid4().hex}
    for _ in range(2):
        for n, province, campaign in ((203, gd, "s2-gd"), (212, zj, "s2-zj")):
            answer = province.apply(campaign, users[n], "refrigerator", key=keys[n])
            assert code_of(answer) == (503, "central_unavailable"), answer.text
    assert (vouchers_of(gd, "s2-gd"), vouchers_of(zj, "s2-zj")) == (2, 1)

    fed.central.start()
    # The same applications, retried with their keys, are issued now, once.
    for n, province, campaign in ((203, gd, "s2-gd"), (212, zj, "s2-zj")):
        answer = province.apply(campaign, users[n], "refrigerator", key=keys[n])
        assert answer.status_code == 201, answer.text
    fed.synced("the backlog drained after central came back")
    status = json.loads(gd.cli("outbox", "status", "--json").stdout)
    assert (status["pending"], status["dead"]) == (0, 0)
    assert (vouchers_of(gd, "s2-gd"), vouchers_of(zj, "s2-zj")) == (3, 2)
    assert_invariants(fed, cli=True)


# -- 3. two provinces racing for one person ----------------------------------------------------


def _race(
    fed: Federation, user: str, template: str, *, threads_per_province: int
) -> list[tuple[str, int, str]]:
    """The person's applications for ``template``, sent at once from real threads in
    both provinces; each answer as (province, status, code)."""
    start = threading.Barrier(2 * threads_per_province)
    answers: list[tuple[str, int, str]] = []

    def one(province: Province, campaign: str) -> None:
        start.wait(30)
        answer = province.apply(campaign, user, template)
        answers.append((province.name, *code_of(answer)))

    threads = [
        threading.Thread(target=one, args=pair)
        for pair in [(fed.gd, "s3-gd"), (fed.zj, "s3-zj")] * threads_per_province
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_two_provinces_racing_for_one_person_give_out_only_the_persons_slots(
    fed: Federation,
) -> None:
    gd, zj = fed.gd, fed.zj
    gd.open_campaign("s3-gd")
    zj.open_campaign("s3-zj")
    user = gd.register(301)
    zj.register(301)
    for template, slots in (("air-conditioner", 3), ("refrigerator", 1)):
        answers = _race(fed, user, template, threads_per_province=4)
        won = [a for a in answers if a[1] == 201]
        assert len(won) == slots, answers
        refused = {a[1:] for a in answers if a[1] != 201}
        assert refused <= {
            (409, "qualification_used_elsewhere"),
            (409, "qualification_limit_reached"),
        }, answers
    assert_invariants(fed)
    live = fed.central_rows(
        "SELECT category, count(*) FROM central_locks WHERE state = 'locked'"
        " AND pseudonym = :p GROUP BY category",
        p=pseudonym(gd, user),
    )
    assert dict(live) == {"air_conditioner": 3, "refrigerator": 1}


# -- 4. a province killed between central's lock and its own commit ---------------------------


def test_a_province_killed_between_centrals_lock_and_its_commit_leaks_no_lock(
    fed: Federation,
) -> None:
    """What is proven: the proxy between Guangdong and central lets central lock two
    applications' slots, then SIGKILLs Guangdong before either answer reaches it, so
    central holds both (``held``) and Guangdong has each lock recorded ``held`` and no
    voucher: the crash between the lock and the commit, exactly. After the restart,
    one resident retries with the same Idempotency-Key: the same lock, settled, one
    voucher. The other never retries: central's hold runs out (LEQUAN_TRADE_IN_HOLD_S,
    5 s here) and Guangdong's sweep gives its row back, and
    then Zhejiang may lock the person's slot. A third application never reached central
    (its lock requests lost): its row is given back the same way and central, which
    never knew the lock, takes the release without a dead letter."""
    gd, zj = fed.gd, fed.zj
    gd.open_campaign("s4-gd")
    zj.open_campaign("s4-zj")
    users = {n: gd.register(n) for n in (401, 402, 403)}
    for n in users:
        zj.register(n)
    keys = {n: uuid.uuid4().hex for n in users}
    locks = {n: lock_id_for(gd.code, CHANNEL, key) for n, key in keys.items()}

    # The third application first: central never hears of it.
    gd.proxy.drop_lock_requests = True
    assert code_of(gd.apply("s4-gd", users[403], "refrigerator", key=keys[403])) == (
        503,
        "central_unavailable",
    )
    gd.proxy.drop_lock_requests = False

    killed = gd.proxy.withhold_locks(2, then=gd.kill)
    failures: list[str] = []

    def apply(n: int) -> None:
        try:
            answer = gd.apply("s4-gd", users[n], "refrigerator", key=keys[n])
            failures.append(f"{n} was answered {answer.status_code}")
        except httpx.HTTPError:
            pass  # the province died with the request: no answer

    threads = [threading.Thread(target=apply, args=(n,)) for n in (401, 402)]
    for thread in threads:
        thread.start()
    assert killed.wait(60), "Guangdong was not killed"
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    at_central = dict(
        fed.central_rows(
            "SELECT lock_id, state FROM central_locks WHERE lock_id = ANY(:ids)",
            ids=list(locks.values()),
        )
    )
    assert at_central == {locks[401]: "held", locks[402]: "held"}
    in_guangdong = dict(
        gd.rows("SELECT id, state FROM qualification_locks WHERE campaign_id = 's4-gd'")
    )
    assert in_guangdong == {lock: "held" for lock in locks.values()}
    assert vouchers_of(gd, "s4-gd") == 0

    gd.start()
    # Resident 401 retries with the same key: the same lock, one voucher. (Had the
    # restart outlasted the hold, the sweep gave the lock back first; the same key then
    # asks central for the same lock again, which central takes while it is free.)
    retried = gd.apply("s4-gd", users[401], "refrigerator", key=keys[401])
    assert retried.status_code == 201, retried.text

    def given_back() -> bool:
        central = dict(
            fed.central_rows(
                "SELECT lock_id, state FROM central_locks WHERE lock_id = :l"
                " AND (state IN ('locked', 'consumed') OR (state = 'held' AND expires_at > now()))",
                l=locks[402],
            )
        )
        ours = dict(
            gd.rows("SELECT id, state FROM qualification_locks WHERE campaign_id = 's4-gd'")
        )
        return not central and ours[locks[402]] == ours[locks[403]] == "released"

    wait_until(given_back, what="the abandoned locks given back", timeout_s=HOLD_S + 30)
    assert issued(zj, "s4-zj", users[402], "refrigerator")
    assert issued(zj, "s4-zj", users[403], "refrigerator")
    in_zhejiang = zj.apply("s4-zj", users[401], "refrigerator")
    assert code_of(in_zhejiang) == (409, "qualification_used_elsewhere")
    assert vouchers_of(gd, "s4-gd") == 1
    assert_invariants(fed)


# -- 5. duplicated and late deliveries --------------------------------------------------------


def _central_state(fed: Federation, code: str) -> Any:
    return (
        sorted(
            tuple(r)
            for r in fed.central_rows(
                "SELECT event_id, state, reason FROM central_events WHERE province = :p", p=code
            )
        ),
        sorted(
            tuple(r)
            for r in fed.central_rows(
                "SELECT lock_id, state, redemption_id, price_fen, subsidy_fen FROM central_locks"
                " WHERE province = :p",
                p=code,
            )
        ),
        sorted(
            tuple(r)
            for r in fed.central_rows(
                "SELECT category, fact, sum(count), sum(amount_fen) FROM central_facts"
                " WHERE province = :p GROUP BY category, fact",
                p=code,
            )
        ),
    )


def test_duplicated_and_late_deliveries_take_effect_once(fed: Federation) -> None:
    gd = fed.gd
    gd.open_campaign("s5-gd")
    users = {n: gd.register(n) for n in (501, 502, 503)}
    # Deliveries that reach central but whose answers are lost: the relay sends them again.
    gd.proxy.lose_event_answers(4)
    for n, user in users.items():
        voucher_id = issued(gd, "s5-gd", user, "washing-machine")
        redeemed(gd, "s5-gd", voucher_id, user, washer(f"S5-WASHER-{n}"))
    fed.synced()
    assert gd.proxy.lost_event_answers() == 0, "every lost answer was sent again"
    before = _central_state(fed, gd.code)

    # Late: the scenario's delivered events forced back to dead, and replayed by the operator.
    with gd.engine.begin() as connection:
        forced = [
            r[0]
            for r in connection.execute(
                sa.text(
                    "UPDATE outbox SET status = 'dead', last_error = 'forced back by the test'"
                    " WHERE status = 'delivered' AND voucher_id IN"
                    " (SELECT id FROM vouchers WHERE campaign_id = 's5-gd') RETURNING id"
                )
            )
        ]
    assert len(forced) == 6  # issued and completed, for three vouchers
    assert gd.outbox()["dead"] == len(forced)
    replay = gd.cli(
        *("outbox", "replay", *forced, "--json"), "--token-file", str(gd.maker_token_file)
    )
    assert json.loads(replay.stdout) == {"replayed": len(forced)}
    fed.synced("the replayed events delivered again")

    # Reordered and duplicated: the same events again straight through the adapter, newest
    # first. Central answers each as a duplicate.
    events = [
        SyncEvent(event_id, topic, at, json.loads(payload), voucher_id, seq)
        for event_id, topic, at, payload, voucher_id, seq in gd.rows(
            "SELECT id, topic, created_at, payload_json, voucher_id, seq FROM outbox"
            " WHERE voucher_id IN (SELECT id FROM vouchers WHERE campaign_id = 's5-gd')"
            " ORDER BY created_at DESC"
        )
    ]
    credentials = json.loads((gd.file.parent / "guangdong-central.json").read_text("utf-8"))
    with HttpCentral(
        fed.central.url,
        app_id=credentials["app_id"],
        secret=credentials["secret"],
        public_key=credentials["public_key"],
    ) as adapter:
        answers = adapter.deliver(events)
    assert {a.outcome for a in answers} == {EventOutcome.DUPLICATE}
    assert _central_state(fed, gd.code) == before
    assert_invariants(fed, cli=True)  # the whole day: every scenario's events
