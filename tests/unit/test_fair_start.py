"""The fair start's specification (``domain/fair_start.py``): the published test vectors
a third party checks a reimplementation against, the order as a function of the seed
and the tickets alone, and the campaign file's start window."""

from __future__ import annotations

import hashlib
import random
import statistics
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lequan.domain.campaigns import CampaignConfig
from lequan.domain.fair_start import (
    START_WINDOW_INTAKE_S_MAX,
    START_WINDOW_S_MAX,
    PublishedEntry,
    commitment,
    commitment_text,
    order,
    score,
    verify,
)
from lequan.examples import EXAMPLES_DIR, example_campaign
from lequan.services.campaigns import parse_campaign
from tests.factories import T0

# The vectors of docs/risk.md ("Fair start"), checked there with sha256sum and openssl.
SEED_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
SEED = bytes.fromhex(SEED_HEX)
COMMITMENT = "9fc265c30d6a481c5a022f5e024bbe91600d66a6fee628128a326d98054c7d8a"
SCORES = {
    "00000000000000000000000000000001": 3896851064265789,
    "0123456789abcdef0123456789abcdef": 1811747919197600,
    "ffffffffffffffffffffffffffffffff": 3056839854335934,
}

tickets = st.lists(
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), unique=True, max_size=60
)
seeds = st.binary(min_size=32, max_size=32)


def test_the_published_vectors() -> None:
    text = commitment_text(
        campaign_id="sh-dining-2024", round_id="r1", window_s=2, seed_hex=SEED_HEX
    )
    assert text == (
        f"lequan-fair-start-v1\ncampaign=sh-dining-2024\nround=r1\nwindow_s=2\nseed={SEED_HEX}\n"
    )
    assert hashlib.sha256(text.encode()).hexdigest() == COMMITMENT
    assert (
        commitment(campaign_id="sh-dining-2024", round_id="r1", window_s=2, seed_hex=SEED_HEX)
        == COMMITMENT
    )
    for ticket, expected in SCORES.items():
        assert score(SEED, ticket) == expected
    assert order(SEED, SCORES) == [
        "0123456789abcdef0123456789abcdef",
        "ffffffffffffffffffffffffffffffff",
        "00000000000000000000000000000001",
    ]


def test_the_commitment_binds_the_round_and_the_window() -> None:
    others = {
        commitment(campaign_id="sh-dining-2024", round_id="r2", window_s=2, seed_hex=SEED_HEX),
        commitment(campaign_id="sh-dining-2024", round_id="r1", window_s=3, seed_hex=SEED_HEX),
        commitment(campaign_id="sh-dining-2025", round_id="r1", window_s=2, seed_hex=SEED_HEX),
    }
    assert COMMITMENT not in others
    assert len(others) == 3


@given(seeds, tickets)
def test_a_score_fits_a_double_exactly(seed: bytes, drawn: list[str]) -> None:
    for ticket in drawn:
        value = score(seed, ticket)
        assert 0 <= value < 2**52
        assert int(float(value)) == value  # what a Redis sorted set keeps, exactly


@given(seeds, tickets, st.randoms())
def test_the_order_is_a_permutation_that_arrival_does_not_change(
    seed: bytes, drawn: list[str], rng: random.Random
) -> None:
    first = order(seed, drawn)
    assert sorted(first) == sorted(drawn)
    arrived = list(drawn)
    rng.shuffle(arrived)
    assert order(seed, arrived) == first  # the same seed and tickets, whatever came first


def test_another_seed_gives_another_order() -> None:
    drawn = [f"{n:032x}" for n in range(50)]
    assert order(SEED, drawn) != order(bytes(32), drawn)


def test_the_first_arrivals_are_not_favoured() -> None:
    """Over many seeds, the ticket that arrived first lands anywhere in the order: its
    mean rank is the middle, and the first tenth of arrivals wins a tenth of the time."""
    rng = random.Random(16)
    arrivals = [f"{rng.getrandbits(128):032x}" for _ in range(100)]
    early = set(arrivals[:10])
    ranks = []
    early_among_first_ten = 0
    trials = 2000
    for _ in range(trials):
        drawn = order(rng.randbytes(32), arrivals)
        ranks.append(drawn.index(arrivals[0]))
        early_among_first_ten += len(early & set(drawn[:10]))
    assert abs(statistics.mean(ranks) - 49.5) < 3  # the standard error is about 0.65
    assert abs(early_among_first_ten / trials - 1.0) < 0.1  # expected 10 × 10/100 = 1


def published(seed: bytes, drawn: list[str]) -> list[PublishedEntry]:
    return [PublishedEntry(n, t, "won") for n, t in enumerate(order(seed, drawn), 1)]


def test_a_correct_draw_verifies() -> None:
    drawn = [f"{n:032x}" for n in range(20)]
    assert (
        verify(
            campaign_id="sh-dining-2024",
            round_id="r1",
            window_s=2,
            seed_hex=SEED_HEX,
            published_commitment=COMMITMENT,
            entries=published(SEED, drawn),
        )
        == []
    )


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("seed", "does not open the commitment"),
        ("window", "does not open the commitment"),
        ("swap", "not at the rank the seed gives them"),
        ("twice", "listed twice"),
        ("gap", "without a gap"),
        ("malformed", "not 32 lowercase hex"),
    ],
)
def test_a_draw_that_is_not_what_was_committed_is_caught(change: str, found: str) -> None:
    drawn = [f"{n:032x}" for n in range(20)]
    entries = published(SEED, drawn)
    seed_hex, window_s = SEED_HEX, 2
    if change == "seed":
        seed_hex = "ff" + SEED_HEX[2:]
    elif change == "window":
        window_s = 3
    elif change == "swap":
        entries[3], entries[4] = (
            PublishedEntry(4, entries[4].ticket, "won"),
            PublishedEntry(5, entries[3].ticket, "won"),
        )
    elif change == "twice":
        entries[5] = PublishedEntry(6, entries[4].ticket, "won")
    elif change == "gap":
        entries[-1] = PublishedEntry(99, entries[-1].ticket, "won")
    else:
        entries[0] = PublishedEntry(1, "not-a-ticket", "won")
    problems = verify(
        campaign_id="sh-dining-2024",
        round_id="r1",
        window_s=window_s,
        seed_hex=seed_hex,
        published_commitment=COMMITMENT,
        entries=entries,
    )
    assert any(found in p for p in problems), problems


# -- the campaign file ---------------------------------------------------------------------


def campaign(**updates: object) -> CampaignConfig:
    return example_campaign(release_at=T0, **updates)  # type: ignore[arg-type]


def refused(data: dict[str, object], field: str = "start_window_s") -> str:
    """The campaign file is refused, naming ``field``; the message."""
    with pytest.raises(ValueError, match=field) as caught:
        CampaignConfig.model_validate(data)
    return str(caught.value)


def test_a_start_window_is_off_by_default_and_bounded() -> None:
    assert campaign().start_window_s == 0
    assert campaign(start_window_s=START_WINDOW_S_MAX).start_window_s == START_WINDOW_S_MAX
    base = campaign().model_dump(mode="json")
    for bad in (-1, START_WINDOW_S_MAX + 1, 2.5, "2", True):
        refused({**base, "start_window_s": bad})


def test_a_round_must_outlast_its_window() -> None:
    base = campaign().model_dump(mode="json")
    short = dict(base["rounds"][0])
    short["ends_at"] = (T0 + timedelta(seconds=2)).isoformat()
    message = refused({**base, "rounds": [short], "start_window_s": 2})
    assert "must last longer than the start window" in message


def refused_intake(data: dict[str, object]) -> str:
    return refused(data, "start_window_intake_s")


def test_an_intake_is_off_by_default_bounded_and_follows_a_window() -> None:
    assert campaign().start_window_intake_s == 0
    most = campaign(start_window_s=2, start_window_intake_s=START_WINDOW_INTAKE_S_MAX)
    assert most.draw_close(T0) == T0 + timedelta(seconds=2 + START_WINDOW_INTAKE_S_MAX)
    assert campaign(start_window_s=2).draw_close(T0) == T0 + timedelta(seconds=2)
    assert campaign().draw_close(T0) is None
    base = {**campaign().model_dump(mode="json"), "start_window_s": 2}
    for bad in (-1, START_WINDOW_INTAKE_S_MAX + 1, 2.5, "10", True):
        refused_intake({**base, "start_window_intake_s": bad})
    message = refused_intake({**base, "start_window_s": 0, "start_window_intake_s": 10})
    assert "set start_window_s first" in message


def test_a_round_must_outlast_its_window_and_intake() -> None:
    base = campaign().model_dump(mode="json")
    short = dict(base["rounds"][0])
    short["ends_at"] = (T0 + timedelta(seconds=60)).isoformat()
    data = {**base, "rounds": [short], "start_window_s": 2, "start_window_intake_s": 57}
    assert CampaignConfig.model_validate(data).start_window_intake_s == 57
    data = {**data, "start_window_intake_s": 58}
    message = refused_intake(data)
    assert "must last longer than the start window and its intake" in message


def test_a_trade_in_campaign_has_no_start_window() -> None:
    trade_in = parse_campaign((EXAMPLES_DIR / "shanghai-trade-in-2024.yaml").read_text())
    base = trade_in.model_dump(mode="json")
    message = refused({**base, "start_window_s": 2})
    assert "applied for, never claimed" in message
