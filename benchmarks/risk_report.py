"""What the platform's risk controls did to each kind of person in a simulated crowd (issue 16).

The simulator knows who it made adversarial; the platform does not. This
module sets the platform's answers against that ground truth: per kind,
the vouchers won and spent, the claims refused (by reason code) or held
for review, the redemptions flagged; precision and recall of the flags;
the honest people's false-positive rate; and the issue's four targets,
each pass, fail, or n/a (an adversary switched off, or nothing to judge).

How a stop is read:

- a claim is *refused* when it is answered ``403 risk_refused`` (its
  ``details.reasons`` are the rules that fired) and *held* when it is
  answered ``202 held_for_review``;
- a redemption is *flagged* when the admin API's review queue
  (``GET /v1/admin/reviews?kind=redemption``) lists it, and *stopped* when
  it is refused ``merchant_suspended`` (nobody suspends a merchant in the
  simulation but the risk rules) or ``risk_refused``. Until the review
  queue exists the report says so and counts no flag.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from benchmarks.adversaries import Kind, Population

__all__ = [
    "ClaimSeen",
    "Confusion",
    "FlagSource",
    "RedemptionSeen",
    "risk_report",
]

REFUSED = "risk_refused"
HELD = "held_for_review"
# Redemption refusals that are the risk rules' doing in a simulation (no operator acts).
REDEMPTION_STOPS = frozenset({"merchant_suspended", "risk_refused", "held_for_review"})
BOT_SHARE_MARGIN = 0.01  # bots' share of vouchers ≤ their share of people + 1 pp
RING_CAUGHT_MIN = 0.9
HONEST_STOPPED_MAX = 0.005


class ClaimSeen(Protocol):
    """A claim's answer as the simulator heard it."""

    @property
    def person(self) -> int: ...
    @property
    def outcome(self) -> str: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class RedemptionSeen:
    """One redemption attempt of the simulation and its answer."""

    person: int
    voucher_id: str
    merchant_id: str
    fake: bool
    outcome: str  # "redeemed", or the error code
    redemption_id: str | None = None
    refunded: bool = False


@dataclass(frozen=True)
class FlagSource:
    """The redemptions the review queue lists, with their reason codes, or why none."""

    flags: Mapping[str, tuple[str, ...]]
    available: bool
    note: str


@dataclass(frozen=True)
class Confusion:
    """Flags against the ground truth: positives are what the simulator made adversarial."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        """Of what was flagged, the share that was adversarial; None when nothing was."""
        flagged = self.tp + self.fp
        return self.tp / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        """Of the adversarial, the share flagged; None when there was none."""
        positives = self.tp + self.fn
        return self.tp / positives if positives else None

    @classmethod
    def of(cls, pairs: Iterable[tuple[bool, bool]]) -> Confusion:
        """From (adversarial, flagged) pairs."""
        counts = Counter(pairs)
        return cls(
            tp=counts[True, True],
            fp=counts[False, True],
            fn=counts[True, False],
            tn=counts[False, False],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _target(
    name: str, *, value: float | None, limit: float, at_most: bool, note: str
) -> dict[str, Any]:
    if value is None:
        status = "n/a"
    else:
        status = "pass" if (value <= limit if at_most else value >= limit) else "fail"
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "comparison": "<=" if at_most else ">=",
        "status": status,
        "note": note,
    }


def risk_report(
    population: Population,
    *,
    claims: Iterable[ClaimSeen],
    winners: Iterable[int],
    redemptions: Iterable[RedemptionSeen],
    flags: FlagSource,
) -> dict[str, Any]:
    """The report (its targets included) from the crowd's answers and the store's vouchers.

    ``winners`` has one entry per voucher stored, the person who holds it.
    """
    kinds = list(Kind)
    refused: dict[Kind, int] = Counter()
    held: dict[Kind, int] = Counter()
    reasons: dict[Kind, Counter[str]] = defaultdict(Counter)
    stopped: set[int] = set()
    for answer in claims:
        kind = population.kind(answer.person)
        if answer.outcome == REFUSED:
            refused[kind] += 1
            reasons[kind].update(answer.reasons or ("unstated",))
            stopped.add(answer.person)
        elif answer.outcome == HELD:
            held[kind] += 1
            stopped.add(answer.person)
    won: dict[Kind, int] = Counter()
    farm_devices: Counter[int] = Counter()
    for person in winners:
        won[population.kind(person)] += 1
        device = population.farm_device(person)
        if device is not None:
            farm_devices[device] += 1
    attempts: dict[Kind, int] = Counter()
    answered: dict[Kind, Counter[str]] = defaultdict(Counter)
    completed: dict[Kind, int] = Counter()
    flagged: dict[Kind, int] = Counter()
    blocked: dict[Kind, Counter[str]] = defaultdict(Counter)
    flag_reasons: dict[Kind, Counter[str]] = defaultdict(Counter)
    spent: dict[Kind, set[str]] = defaultdict(set)
    refunds: dict[Kind, int] = Counter()
    fake_attempts = fake_completed = fake_caught = 0
    redemption_pairs: list[tuple[bool, bool]] = []
    for r in redemptions:
        kind = population.kind(r.person)
        attempts[kind] += 1
        answered[kind][r.outcome] += 1
        refunds[kind] += r.refunded
        caught = False
        if r.outcome == "redeemed":
            completed[kind] += 1
            spent[kind].add(r.voucher_id)
            found = flags.flags.get(r.redemption_id or "")
            if found is not None:
                flagged[kind] += 1
                flag_reasons[kind].update(found or ("unstated",))
                caught = True
        elif r.outcome in REDEMPTION_STOPS:
            blocked[kind][r.outcome] += 1
            caught = True
        if r.fake:
            fake_attempts += 1
            fake_completed += r.outcome == "redeemed"
            fake_caught += caught
        redemption_pairs.append((r.fake, caught))

    people = {kind: population.count(kind) for kind in kinds}
    stopped_by_kind: Counter[Kind] = Counter(population.kind(p) for p in stopped)
    by_kind: dict[str, Any] = {}
    for kind in kinds:
        entry: dict[str, Any] = {
            "people": people[kind],
            "vouchers_won": won[kind],
            "vouchers_redeemed": len(spent[kind]),
            "claims_refused": refused[kind],
            "claims_refused_by_reason": dict(reasons[kind].most_common()),
            "claims_held": held[kind],
            "people_refused_or_held": stopped_by_kind[kind],
            "people_refused_or_held_share": _share(stopped_by_kind[kind], people[kind]),
            "redemption_attempts": attempts[kind],
            "redemption_outcomes": dict(answered[kind].most_common()),
            "redemptions": completed[kind],
            "redemptions_flagged": flagged[kind],
            "redemptions_flagged_by_reason": dict(flag_reasons[kind].most_common()),
            "redemptions_stopped": dict(blocked[kind]),
            "refunds": refunds[kind],
        }
        by_kind[kind.label] = entry
    by_kind["ring"] |= {
        "fake_order_attempts": fake_attempts,
        "fake_redemptions": fake_completed,
        "fake_orders_caught": fake_caught,
    }

    adversaries = population.people - people[Kind.HONEST]
    stopped_adversaries = len(stopped) - stopped_by_kind[Kind.HONEST]
    claim_flags = Confusion(
        tp=stopped_adversaries,
        fp=stopped_by_kind[Kind.HONEST],
        fn=adversaries - stopped_adversaries,
        tn=people[Kind.HONEST] - stopped_by_kind[Kind.HONEST],
    )
    redemption_flags = Confusion.of(redemption_pairs)
    edge: dict[str, dict[str, int]] = defaultdict(lambda: {"people": 0, "refused_or_held": 0})
    for person in range(population.people):
        case = population.edge_case(person)
        if case is not None:
            edge[case]["people"] += 1
            edge[case]["refused_or_held"] += person in stopped

    total_won = sum(won.values())
    bots = people[Kind.BOT]
    bot_people_share = bots / population.people
    bot_voucher_share = won[Kind.BOT] / total_won if total_won else 0.0
    honest_rate = _share(stopped_by_kind[Kind.HONEST], people[Kind.HONEST])
    device_limit = population.config.device_limit
    per_device = [farm_devices[d] for d in range(population.config.farm_devices)]
    ring_caught = fake_caught / fake_attempts if fake_attempts else None
    flags_note = "" if flags.available else f" (flags: {flags.note})"
    targets = [
        _target(
            "bots_voucher_share",
            value=round(bot_voucher_share, 4) if bots else None,
            limit=round(bot_people_share + BOT_SHARE_MARGIN, 4),
            at_most=True,
            note="bots' share of vouchers ≤ their share of people + 1 pp",
        ),
        _target(
            "farm_vouchers_per_device",
            value=max(per_device) if population.farm else None,
            limit=device_limit,
            at_most=True,
            note=f"vouchers won on any one farm device ≤ the device limit ({device_limit})",
        ),
        _target(
            "ring_fake_orders_caught",
            value=_round(ring_caught),
            limit=RING_CAUGHT_MIN,
            at_most=False,
            note="the ring's fake orders flagged for review or refused by risk" + flags_note,
        ),
        _target(
            "honest_refused_or_held",
            value=honest_rate,
            limit=HONEST_STOPPED_MAX,
            at_most=True,
            note="honest people with a claim refused or held by risk",
        ),
    ]
    return {
        "kinds": by_kind,
        "claim_flags": claim_flags.as_dict() | {"over": "people; adversarial = not honest"},
        "redemption_flags": redemption_flags.as_dict()
        | {
            "over": "redemption attempts; adversarial = the ring's fake orders",
            "review_queue": "available" if flags.available else f"not available: {flags.note}",
        },
        "honest_false_positive_rate": honest_rate,
        "honest_edge_cases": dict(edge),
        "farm_devices": {
            "devices": population.config.farm_devices if population.farm else 0,
            "device_limit": device_limit,
            "vouchers_per_device": per_device if population.farm else [],
        },
        "targets": targets,
        "targets_met": all(t["status"] != "fail" for t in targets),
    }
