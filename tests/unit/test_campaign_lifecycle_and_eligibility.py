"""Campaign lifecycle with maker-checker approval; regions, eligibility reasons, round phases."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from lequan.domain.campaigns import (
    CampaignStatus,
    Eligibility,
    RoundPhase,
    eligibility_reasons,
    lifecycle_transition,
    region_covers,
    round_phase,
)
from lequan.domain.errors import AuthError, Conflict

C = CampaignStatus
ACTIONS = ("approve", "activate", "pause", "resume", "end")
MAKER, CHECKER = "op-maker", "op-checker"

# Written out by hand: where each action leads from each status (None: refused as campaign_state).
EXPECTED: dict[CampaignStatus, dict[str, CampaignStatus | None]] = {
    C.DRAFT: {"approve": C.APPROVED, "activate": None, "pause": None, "resume": None, "end": None},
    C.APPROVED: {
        "approve": None,
        "activate": C.LIVE,
        "pause": None,
        "resume": None,
        "end": C.ENDED,
    },
    C.LIVE: {"approve": None, "activate": None, "pause": C.PAUSED, "resume": None, "end": C.ENDED},
    C.PAUSED: {
        "approve": None,
        "activate": None,
        "pause": None,
        "resume": C.LIVE,
        "end": C.ENDED,
    },
    C.ENDED: dict.fromkeys(ACTIONS),
}

PAIRS = list(itertools.product(CampaignStatus, ACTIONS))


# Lifecycle


def test_expected_lifecycle_covers_every_status_and_action() -> None:
    assert set(EXPECTED) == set(CampaignStatus)
    assert all(set(row) == set(ACTIONS) for row in EXPECTED.values())


@pytest.mark.parametrize(("status", "action"), PAIRS, ids=[f"{s}-{a}" for s, a in PAIRS])
def test_every_status_and_action_by_a_checker_moves_or_is_refused_as_campaign_state(
    status: CampaignStatus, action: str
) -> None:
    expected = EXPECTED[status][action]
    if expected is not None:
        assert lifecycle_transition(status, action, drafted_by=MAKER, actor=CHECKER) is expected
        return
    with pytest.raises(Conflict) as refused:
        lifecycle_transition(status, action, drafted_by=MAKER, actor=CHECKER)
    assert refused.value.code == "campaign_state"
    assert status.value in refused.value.message
    assert action in refused.value.message


def test_maker_cannot_approve_their_own_draft() -> None:
    with pytest.raises(AuthError) as refused:
        lifecycle_transition(C.DRAFT, "approve", drafted_by=MAKER, actor=MAKER)
    assert refused.value.code == "maker_cannot_approve"


def test_a_different_checker_can_approve_the_draft() -> None:
    assert lifecycle_transition(C.DRAFT, "approve", drafted_by=MAKER, actor=CHECKER) is C.APPROVED


@pytest.mark.parametrize("status", [C.APPROVED, C.LIVE, C.PAUSED, C.ENDED])
def test_approving_again_is_a_state_conflict_even_for_the_maker(status: CampaignStatus) -> None:
    with pytest.raises(Conflict) as refused:
        lifecycle_transition(status, "approve", drafted_by=MAKER, actor=MAKER)
    assert refused.value.code == "campaign_state"


@pytest.mark.parametrize("action", ["activate", "pause", "resume", "end"])
def test_maker_may_operate_an_approved_campaign(action: str) -> None:
    """Maker-checker guards approval only; operating actions follow the status table."""
    for status in CampaignStatus:
        expected = EXPECTED[status][action]
        if expected is None:
            continue
        assert lifecycle_transition(status, action, drafted_by=MAKER, actor=MAKER) is expected


def test_whole_life_of_a_campaign() -> None:
    status = C.DRAFT
    for action in ("approve", "activate", "pause", "resume", "pause", "resume", "end"):
        status = lifecycle_transition(status, action, drafted_by=MAKER, actor=CHECKER)
    assert status is C.ENDED


def test_ended_campaign_accepts_nothing() -> None:
    for action in ACTIONS:
        with pytest.raises(Conflict):
            lifecycle_transition(C.ENDED, action, drafted_by=MAKER, actor=CHECKER)


def test_unknown_lifecycle_action_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError):
        lifecycle_transition(C.LIVE, "delete", drafted_by=MAKER, actor=CHECKER)


# Region coverage (GB/T 2260: province XX0000, city XXXX00, district XXXXXX)


@pytest.mark.parametrize(
    ("area", "region", "covered"),
    [
        ("310000", "310104", True),  # Shanghai covers Xuhui district
        ("310000", "310115", True),  # and Pudong
        ("310000", "310000", True),
        ("310000", "320100", False),  # not Nanjing
        ("310000", "320102", False),
        ("320100", "320102", True),  # Nanjing city covers its districts
        ("320100", "320100", True),
        ("320100", "320200", False),  # not Wuxi
        ("320100", "320000", False),  # a city does not cover its province
        ("320100", "321102", False),
        ("330100", "330106", True),  # Hangzhou covers Xihu district
        ("310104", "310104", True),  # a district covers only itself
        ("310104", "310105", False),
        ("310104", "310100", False),
        ("310104", "310000", False),
    ],
)
def test_region_covers_by_administrative_level(area: str, region: str, covered: bool) -> None:
    assert region_covers(area, region) is covered


# Eligibility reasons

SHANGHAI = Eligibility(regions=("310000",), check="location")
XUHUI, NANJING = "310104", "320102"


def _codes(
    eligibility: Eligibility,
    *,
    residence: str = XUHUI,
    location: str | None = XUHUI,
    blacklisted: bool = False,
    ended: bool = False,
    extra: dict[str, str] | None = None,
) -> list[str]:
    reasons = eligibility_reasons(
        eligibility,
        residence_region=residence,
        location_region=location,
        blacklisted=blacklisted,
        ended=ended,
        extra=extra,
    )
    assert all(r.message for r in reasons)
    return [r.code for r in reasons]


@pytest.mark.parametrize(
    ("check", "residence", "location", "codes"),
    [
        ("location", XUHUI, XUHUI, []),
        ("location", NANJING, XUHUI, []),  # a visitor inside Shanghai may claim dining
        ("location", XUHUI, NANJING, ["outside_region"]),  # a resident away may not
        ("location", XUHUI, None, ["location_required"]),
        ("residence", XUHUI, NANJING, []),
        ("residence", XUHUI, None, []),  # location is not needed to check residence
        ("residence", NANJING, XUHUI, ["outside_region"]),
        ("either", XUHUI, NANJING, []),
        ("either", NANJING, XUHUI, []),
        ("either", XUHUI, None, []),
        ("either", NANJING, NANJING, ["outside_region"]),
        ("either", NANJING, None, ["outside_region"]),
    ],
)
def test_region_is_checked_on_location_residence_or_either(
    check: str, residence: str, location: str | None, codes: list[str]
) -> None:
    eligibility = Eligibility.model_validate({"regions": ["310000"], "check": check})
    assert _codes(eligibility, residence=residence, location=location) == codes


@pytest.mark.parametrize("check", ["location", "residence", "either"])
@pytest.mark.parametrize("location", [XUHUI, NANJING, "650102", None])
def test_nationwide_campaign_needs_no_region_and_no_location(
    check: str, location: str | None
) -> None:
    eligibility = Eligibility.model_validate({"regions": [], "check": check})
    assert _codes(eligibility, residence="650102", location=location) == []


def test_any_of_several_regions_is_enough() -> None:
    delta = Eligibility(regions=("310000", "320500", "330100"), check="location")
    assert _codes(delta, location="320506") == []  # Suzhou
    assert _codes(delta, location="330106") == []  # Hangzhou
    assert _codes(delta, location="320102") == ["outside_region"]  # Nanjing


def test_outside_message_names_the_region() -> None:
    reasons = eligibility_reasons(
        SHANGHAI, residence_region=XUHUI, location_region=NANJING, blacklisted=False
    )
    assert "310000" in reasons[0].message


def test_blacklisted_person_is_told_so() -> None:
    assert _codes(SHANGHAI, blacklisted=True) == ["blacklisted"]


def test_ended_campaign_is_a_reason() -> None:
    assert _codes(SHANGHAI, ended=True) == ["campaign_ended"]


def test_every_reason_is_given_at_once() -> None:
    codes = _codes(
        SHANGHAI,
        location=NANJING,
        blacklisted=True,
        ended=True,
        extra={"qualification_used": "the refrigerator subsidy was used nationwide"},
    )
    assert codes == ["blacklisted", "campaign_ended", "outside_region", "qualification_used"]


def test_eligible_person_gets_no_reasons() -> None:
    assert _codes(SHANGHAI) == []


@pytest.mark.parametrize(
    "data",
    [
        {"regions": ["31000"]},
        {"regions": ["010000"]},
        {"regions": ["31000a"]},
        {"check": "gps"},
        {"regions": ["310000"], "radius_km": 5},
    ],
    ids=["short-code", "leading-zero", "letter", "unknown-check", "extra-field"],
)
def test_impossible_eligibility_is_refused(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Eligibility.model_validate(data)


# Round phases: release_at inclusive, ends_at exclusive

RELEASE = datetime(2024, 11, 30, 2, 0, tzinfo=UTC)  # Saturday 10:00 in Shanghai
ENDS = RELEASE + timedelta(days=7)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("now", "phase"),
    [
        (RELEASE - timedelta(days=1), RoundPhase.NOT_STARTED),
        (RELEASE - TICK, RoundPhase.NOT_STARTED),
        (RELEASE, RoundPhase.OPEN),
        (RELEASE + TICK, RoundPhase.OPEN),
        (ENDS - TICK, RoundPhase.OPEN),
        (ENDS, RoundPhase.ENDED),
        (ENDS + timedelta(days=30), RoundPhase.ENDED),
    ],
    ids=["day-before", "just-before", "release", "just-after", "last-moment", "end", "later"],
)
def test_round_opens_at_release_and_closes_at_end(now: datetime, phase: RoundPhase) -> None:
    assert round_phase(release_at=RELEASE, ends_at=ENDS, now=now) is phase
