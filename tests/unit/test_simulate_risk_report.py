"""The simulator's risk report (issue 16): the arithmetic of its flags and targets on
answers whose truth is known, without a server."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from benchmarks.adversaries import AdversaryConfig, Kind, Population
from benchmarks.risk_report import Confusion, FlagSource, RedemptionSeen, risk_report


@dataclass(frozen=True)
class Claim:
    person: int
    outcome: str
    reasons: tuple[str, ...] = ()


def test_precision_and_recall_of_a_known_confusion_matrix() -> None:
    pairs = [(True, True)] * 9 + [(False, True)] * 1 + [(True, False)] * 3 + [(False, False)] * 87
    confusion = Confusion.of(pairs)

    assert (confusion.tp, confusion.fp, confusion.fn, confusion.tn) == (9, 1, 3, 87)
    assert confusion.precision == pytest.approx(0.9)
    assert confusion.recall == pytest.approx(0.75)


def test_nothing_flagged_has_no_precision_and_no_adversary_no_recall() -> None:
    assert Confusion.of([(True, False), (False, False)]).precision is None
    assert Confusion.of([(False, True), (False, False)]).recall is None
    assert Confusion.of([(False, True)]).precision == 0.0


CONFIG = AdversaryConfig(
    farm_identities=6,
    farm_devices=2,
    farm_ips=1,
    spoofer_share=0.01,
    ring_people=4,
    ring_merchants=1,
    ring_payers=1,
    merchants=2,
    device_limit=1,
)


@pytest.fixture(scope="module")
def crowd() -> Population:
    return Population(400, bot_share=0.02, config=CONFIG, seed=11)


def _of(crowd: Population, kind: Kind) -> list[int]:
    return [p for p in range(crowd.people) if crowd.kind(p) == kind]


def test_the_report_counts_each_kind_and_judges_the_targets(crowd: Population) -> None:
    honest, bots = _of(crowd, Kind.HONEST), _of(crowd, Kind.BOT)
    farm, ring = _of(crowd, Kind.FARM), _of(crowd, Kind.RING)
    claims = [
        Claim(honest[0], "risk_refused", ("velocity_ip",)),  # one honest person stopped
        Claim(honest[1], "held_for_review"),
        Claim(farm[0], "risk_refused", ("identities_per_device", "new_account")),
        Claim(farm[1], "risk_refused", ("identities_per_device",)),
        Claim(bots[0], "sold_out"),
        *(Claim(p, "issued") for p in honest[2:20]),
    ]
    # Farm identities 2 and 4 share device 0, identity 3 is on device 1.
    farm_winners = [crowd.farm[2], crowd.farm[4], crowd.farm[3]]
    winners = honest[2:20] + bots[:8] + farm_winners + ring[:2]
    merchant = "m-any"
    redemptions = [
        RedemptionSeen(ring[0], "v1", merchant, True, "redeemed", "r1", refunded=True),
        RedemptionSeen(ring[0], "v1", merchant, True, "redeemed", "r2"),
        RedemptionSeen(ring[1], "v2", merchant, True, "merchant_suspended"),
        RedemptionSeen(ring[1], "v2", merchant, True, "redeemed", "r3"),
        RedemptionSeen(honest[2], "v3", merchant, False, "redeemed", "r4", refunded=True),
        RedemptionSeen(honest[3], "v4", merchant, False, "redeemed", "r5"),
    ]
    flags = FlagSource(
        {"r1": ("refund_soon_after",), "r2": ("ring",), "r5": ("merchant_rate_spike",)},
        available=True,
        note="",
    )

    report = risk_report(
        crowd, claims=claims, winners=winners, redemptions=redemptions, flags=flags
    )

    kinds = report["kinds"]
    assert [kinds[k.label]["people"] for k in Kind] == [crowd.count(k) for k in Kind]
    assert kinds["honest"]["claims_refused"] == 1
    assert kinds["honest"]["claims_held"] == 1
    assert kinds["honest"]["people_refused_or_held"] == 2
    assert kinds["farm"]["claims_refused_by_reason"] == {
        "identities_per_device": 2,
        "new_account": 1,
    }
    assert kinds["bot"]["vouchers_won"] == 8
    assert kinds["farm"]["vouchers_won"] == 3
    assert kinds["ring"]["vouchers_redeemed"] == 2
    assert kinds["ring"]["fake_order_attempts"] == 4
    assert kinds["ring"]["fake_redemptions"] == 3
    assert kinds["ring"]["fake_orders_caught"] == 3  # two flagged, one refused
    assert (kinds["ring"]["refunds"], kinds["honest"]["refunds"]) == (1, 1)
    assert kinds["ring"]["redemptions_stopped"] == {"merchant_suspended": 1}
    assert kinds["honest"]["redemptions_flagged_by_reason"] == {"merchant_rate_spike": 1}

    # Claims: 2 of the 4 + 6 + 8 + 4 adversaries stopped, 2 honest people too.
    adversaries = crowd.people - crowd.count(Kind.HONEST)
    assert report["claim_flags"] | {"over": ""} == {
        "tp": 2,
        "fp": 2,
        "fn": adversaries - 2,
        "tn": crowd.count(Kind.HONEST) - 2,
        "precision": 0.5,
        "recall": round(2 / adversaries, 4),
        "over": "",
    }
    flagged = report["redemption_flags"]
    assert (flagged["tp"], flagged["fp"], flagged["fn"], flagged["tn"]) == (3, 1, 1, 1)
    assert flagged["precision"] == 0.75
    assert flagged["review_queue"] == "available"
    assert report["farm_devices"]["vouchers_per_device"] == [2, 1]

    targets = {t["name"]: t for t in report["targets"]}
    assert targets["bots_voucher_share"]["value"] == round(8 / 31, 4)
    assert targets["bots_voucher_share"]["status"] == "fail"
    assert targets["farm_vouchers_per_device"] | {"note": ""} == {
        "name": "farm_vouchers_per_device",
        "value": 2,
        "limit": 1,
        "comparison": "<=",
        "status": "fail",
        "note": "",
    }
    assert targets["ring_fake_orders_caught"]["value"] == 0.75
    assert targets["ring_fake_orders_caught"]["status"] == "fail"
    assert targets["honest_refused_or_held"]["value"] == round(2 / crowd.count(Kind.HONEST), 6)
    assert targets["honest_refused_or_held"]["status"] == "fail"
    assert report["targets_met"] is False


def test_adversaries_switched_off_leave_their_targets_not_applicable() -> None:
    crowd = Population(
        200,
        bot_share=0.0,
        config=AdversaryConfig(farm_identities=0, spoofer_share=0, ring_people=0),
        seed=1,
    )
    report = risk_report(
        crowd,
        claims=[Claim(p, "issued") for p in range(50)],
        winners=list(range(50)),
        redemptions=[],
        flags=FlagSource({}, available=False, note="GET /v1/admin/reviews answered 404"),
    )

    statuses = {t["name"]: t["status"] for t in report["targets"]}
    assert statuses == {
        "bots_voucher_share": "n/a",
        "farm_vouchers_per_device": "n/a",
        "ring_fake_orders_caught": "n/a",
        "honest_refused_or_held": "pass",
    }
    assert report["targets_met"] is True
    assert report["redemption_flags"]["review_queue"] == (
        "not available: GET /v1/admin/reviews answered 404"
    )
