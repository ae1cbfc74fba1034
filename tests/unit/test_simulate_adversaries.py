"""The simulator's crowd (issue 16): who is who, and that each kind's channel sends the
signals that kind would, valid by the API's own schemas."""

from __future__ import annotations

import ipaddress
import random

import pytest

from benchmarks.adversaries import (
    FARM_AGE_S,
    SHANGHAI_DISTRICTS,
    THRESHOLD_FEN,
    AdversaryConfig,
    Kind,
    Population,
)
from lequan.http.schemas import ClaimSignalsIn, RedemptionSignalsIn

CONFIG = AdversaryConfig(
    farm_identities=200,
    farm_devices=4,
    farm_ips=3,
    spoofer_share=0.01,
    ring_people=50,
    ring_merchants=3,
    ring_payers=2,
    merchants=10,
)


@pytest.fixture(scope="module")
def crowd() -> Population:
    return Population(10_000, bot_share=0.02, config=CONFIG, seed=7)


def _people(crowd: Population, kind: Kind) -> list[int]:
    return [p for p in range(crowd.people) if crowd.kind(p) == kind]


def test_each_kind_has_the_size_asked(crowd: Population) -> None:
    assert crowd.count(Kind.BOT) == 200
    assert crowd.count(Kind.FARM) == 200
    assert crowd.count(Kind.SPOOFER) == 100
    assert crowd.count(Kind.RING) == 50
    assert crowd.count(Kind.HONEST) == 10_000 - 550


def test_the_same_seed_draws_the_same_crowd_and_signals() -> None:
    a = Population(2000, bot_share=0.02, config=CONFIG, seed=3)
    b = Population(2000, bot_share=0.02, config=CONFIG, seed=3)
    assert a.kinds == b.kinds
    assert [a.claim_signals(p, 0) for p in range(2000)] == [
        b.claim_signals(p, 0) for p in range(2000)
    ]


def test_every_signal_sent_is_valid_by_the_api_schema(crowd: Population) -> None:
    rng = random.Random(1)
    for person in range(crowd.people):
        for attempt in (0, 1):
            ClaimSignalsIn.model_validate(crowd.claim_signals(person, attempt))
        plan = crowd.redemption_plan(person, rng)
        if plan is not None:
            RedemptionSignalsIn.model_validate(
                {"payer_id": plan.payer_id, "terminal_id": plan.terminal_id}
            )


def test_the_farm_is_hundreds_of_new_identities_on_a_few_devices_and_one_subnet(
    crowd: Population,
) -> None:
    signals = [crowd.claim_signals(p, a) for p in _people(crowd, Kind.FARM) for a in range(3)]
    assert len({s["device_id"] for s in signals}) == CONFIG.farm_devices
    assert len({s["ip"] for s in signals}) == CONFIG.farm_ips
    assert len({ipaddress.ip_network(f"{s['ip']}/24", strict=False) for s in signals}) == 1
    assert all(FARM_AGE_S[0] <= s["account_age_s"] <= FARM_AGE_S[1] for s in signals)
    devices = {crowd.farm_device(p) for p in _people(crowd, Kind.FARM)}
    assert devices == set(range(CONFIG.farm_devices))


def test_spoofers_declare_shanghai_from_a_network_elsewhere(crowd: Population) -> None:
    for person in _people(crowd, Kind.SPOOFER):
        assert crowd.declared_region(person) in SHANGHAI_DISTRICTS
        assert not crowd.claim_signals(person, 0)["network_region"].startswith("31")


def test_bots_and_the_farm_fire_at_the_instant_and_people_when_they_come(
    crowd: Population,
) -> None:
    for person in range(crowd.people):
        kind = crowd.kind(person)
        at_s = crowd.arrival_s(person, 4.2)
        if kind in (Kind.BOT, Kind.FARM):
            assert (at_s, crowd.scripted(person)) == (0.0, True)
        elif kind == Kind.RING:
            assert 0 <= at_s < 1
        else:
            assert (at_s, crowd.scripted(person)) == (4.2, False)


def test_honest_edge_cases_share_a_device_or_an_address(crowd: Population) -> None:
    families: dict[int, set[str]] = {}
    for person, family in crowd.family_of.items():
        families.setdefault(family, set()).add(crowd.claim_signals(person, 0).get("device_id", ""))
    assert families
    assert all(len(devices - {""}) <= 1 for devices in families.values())
    offices: dict[int, set[str]] = {}
    for person, office in crowd.office_of.items():
        offices.setdefault(office, set()).add(crowd.claim_signals(person, 0)["ip"])
    assert offices
    assert all(len(ips) == 1 for ips in offices.values())
    assert all(crowd.kind(p) == Kind.HONEST for p in (*crowd.family_of, *crowd.office_of))
    # Together about the shares asked (2 % each), and never an adversary.
    assert 150 <= len(crowd.family_of) <= 200
    assert 150 <= len(crowd.office_of) <= 200


def test_the_ring_fakes_orders_just_over_the_threshold_with_its_few_payers(
    crowd: Population,
) -> None:
    rng = random.Random(5)
    ring_merchants = {m.merchant_id for m in crowd.merchants if m.ring}
    orders = [crowd.redemption_plan(p, rng) for p in _people(crowd, Kind.RING)]
    assert all(o is not None and o.fake for o in orders)
    assert {o.merchant_id for o in orders if o} <= ring_merchants
    assert len({o.payer_id for o in orders if o}) <= CONFIG.ring_payers
    assert all(o and THRESHOLD_FEN < o.amount_fen < THRESHOLD_FEN + 100 for o in orders)
    honest = [crowd.redemption_plan(p, rng) for p in _people(crowd, Kind.HONEST)]
    assert not any(o and o.fake for o in honest)
    assert all(o is None or o.amount_fen >= THRESHOLD_FEN for o in honest)


def test_merchants_are_imported_with_the_campaign_and_ring_ones_unmarked(
    crowd: Population,
) -> None:
    text = crowd.merchants_csv(campaign_id="sh-dining-2024", acquirer_id="acq-unionpay")
    lines = text.splitlines()
    assert lines[0] == "merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns"
    assert len(lines) == 1 + CONFIG.merchants + CONFIG.ring_merchants
    assert "ring" not in text


def test_too_many_adversaries_are_refused() -> None:
    with pytest.raises(AssertionError):
        Population(1000, bot_share=0.4, config=CONFIG, seed=1)
