"""Redemption-time risk rules: whether a completed redemption (or its refund) is
flagged for an analyst, its payable held, or its merchant suspended, and which rules
said so with the figures they saw.

Pure, as the claim rules are (``domain/risk.py``): the services count the
features (the shared counters, the store's recent redemptions, the SKU
baseline prices) and hand them in; nothing here reads a clock, a store or a
counter. A feature the services could not know is ``None`` (unknown) and
never fires a rule that needs it: a redemption is never held for a signal the
acquirer did not send.

    redemption rule              features (RedemptionFeatures)        fires when
    merchant_rate_spike          merchant_minute_redemptions,         minute ≥ floor and
                                 merchant_baseline_redemptions,       minute ≥ factor × the
                                 platform_minute_redemptions,         baseline's mean per minute
                                 platform_baseline_redemptions        (no baseline: never), and
                                                                      the merchant's share of the
                                                                      platform's minute ≥ factor ×
                                                                      its share of the baseline
    amount_just_over_threshold   over_threshold_fen,                  this order is 0 < over ≤
                                 merchant_window_redemptions,         margin_fen and the
                                 merchant_window_just_over            merchant's just-over share
                                                                      ≥ share_min_pct of at least
                                                                      redemptions_min orders
    payer_many_vouchers          payer_vouchers                       > limit in window_s
    ring                         ring (the person's ring, if any)     the person and merchant are
                                                                      in a ring (``find_rings``)
    outside_business_hours       redeemed_at (in UTC+8)               outside the merchant's,
                                                                      else the campaign's, else
                                                                      the default hours
    price_above_sku_baseline     price_fen, sku_baseline_fen          price > baseline ×
                                                                      (1 + margin_pct/100)

    refund rule                  features (RefundFeatures)            fires when
    refund_soon_after            since_redemption_s,                  refunded ≤ within_s after
                                 merchant_quick_refunds,              its redemption, the
                                 merchant_redemptions,                merchant's quick refunds
                                 payer_quick_refunds                  reach their count and share,
                                                                      and the payer's its count

Actions, from the mildest: ``flag`` (a review item; the redemption goes
through), ``hold`` (also the merchant's payable for it is held until an
analyst releases it or claws it back), ``suspend`` (also the merchant is
suspended: its next redemptions are refused ``merchant_suspended``). A
redemption's verdict is the strictest action among the rules that fired. A
refund's payable is gone with the refund: ``hold`` on a refund rule holds
nothing, and its item is a flag.
"""

from __future__ import annotations

import enum
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CST",
    "REDEMPTION_ACTIONS",
    "BusinessHours",
    "CompiledRedemptionRules",
    "RedemptionAction",
    "RedemptionFeatures",
    "RedemptionFired",
    "RedemptionReason",
    "RedemptionRules",
    "RedemptionVerdict",
    "RefundFeatures",
    "Ring",
    "RingRule",
    "compile_redemption_rules",
    "find_rings",
    "minute_of_day",
    "stricter",
]


class RedemptionReason(enum.StrEnum):
    """Why a redemption (or its refund) was flagged, held or its merchant suspended."""

    MERCHANT_RATE_SPIKE = "merchant_rate_spike"
    AMOUNT_JUST_OVER_THRESHOLD = "amount_just_over_threshold"
    REFUND_SOON_AFTER = "refund_soon_after"
    PAYER_MANY_VOUCHERS = "payer_many_vouchers"
    RING = "ring"
    OUTSIDE_BUSINESS_HOURS = "outside_business_hours"
    PRICE_ABOVE_SKU_BASELINE = "price_above_sku_baseline"


RedemptionAction = Literal["flag", "hold", "suspend"]
REDEMPTION_ACTIONS: tuple[RedemptionAction, ...] = ("flag", "hold", "suspend")
_SEVERITY: dict[str, int] = {"flag": 0, "hold": 1, "suspend": 2}

# Business hours are Shanghai's, whatever the server's zone (no daylight saving).
CST = timezone(timedelta(hours=8), "CST")

WINDOW_S_MAX = 86_400  # the counters keep a day at most (domain/risk.py)
LIMIT_MAX = 1_000_000
MINUTES_PER_DAY = 1440
# The rules file names at most this many campaigns and merchants with hours of their own.
HOURS_CAMPAIGNS_MAX = 1000
HOURS_MERCHANTS_MAX = 10_000


def stricter(a: RedemptionAction, b: RedemptionAction) -> RedemptionAction:
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


WindowS = Annotated[int, Field(ge=60, le=WINDOW_S_MAX)]
Count = Annotated[int, Field(ge=1, le=LIMIT_MAX)]
Pct = Annotated[int, Field(ge=1, le=100)]


class RateSpikeRule(_Model):
    """``merchant_rate_spike``: the merchant's redemptions in the last minute, against
    their mean per minute over the ``baseline_minutes`` before it. With
    ``relative_to_platform`` the merchant's share of the whole platform's redemptions
    must have grown as much: a release day, when every merchant is busier at once,
    is no merchant's spike."""

    baseline_minutes: Annotated[int, Field(ge=1, le=1439)] = 60
    factor: Annotated[float, Field(ge=1, le=1000)] = 5.0
    floor: Count = 20
    relative_to_platform: bool = True
    action: RedemptionAction = "flag"


class JustOverRule(_Model):
    """``amount_just_over_threshold``: orders at most ``margin_fen`` above their
    template's threshold, when they are ``share_min_pct`` or more of the merchant's
    orders (with a threshold) over the last ``window_s``, counting at least
    ``redemptions_min`` of them. One order just over never fires alone: whole-yuan
    bills a yuan over the threshold are common."""

    margin_fen: Annotated[int, Field(ge=1, le=100_000)] = 100
    window_s: WindowS = 3600
    redemptions_min: Count = 10
    share_min_pct: Pct = 30
    action: RedemptionAction = "flag"


class RefundSoonRule(_Model):
    """``refund_soon_after``: a refund ``within_s`` of its redemption (cash-out), when
    the merchant has had at least ``merchant_refunds_min`` such refunds over the last
    ``window_s`` and they are at least ``merchant_share_min_pct`` of its redemptions
    then, and the payer token has had at least ``payer_refunds_min`` (1, 0 and 1:
    every quick refund fires). A cash-out refunds to the ring's own few cards again
    and again; a customer who sent a dish back did it once."""

    within_s: Annotated[int, Field(ge=1, le=WINDOW_S_MAX)] = 600
    window_s: WindowS = 86_400
    merchant_refunds_min: Count = 1
    merchant_share_min_pct: Annotated[int, Field(ge=0, le=100)] = 0
    payer_refunds_min: Count = 1
    action: RedemptionAction = "flag"


class PayerRule(_Model):
    """``payer_many_vouchers``: one payer token paying for more than ``limit`` distinct
    vouchers in the fixed window of ``window_s`` (windows start at multiples of it since
    the Unix epoch, as the claim counters' distinct windows do)."""

    limit: Count = 5
    window_s: WindowS = 86_400
    action: RedemptionAction = "hold"


class RingRule(_Model):
    """``ring``: over the redemptions of the last ``window_s`` (the ``rows_max`` newest
    at most), at least ``persons_min`` persons, each with ``redemptions_min`` or more
    redemptions, ``person_share_min_pct`` of them at the same ``merchants_max`` merchants
    or fewer, whose redemptions there are ``merchant_share_min_pct`` of those merchants'.
    Looked for every ``refresh_s`` by every process (``find_rings``)."""

    window_s: WindowS = 86_400
    rows_max: Annotated[int, Field(ge=100, le=1_000_000)] = 50_000
    redemptions_min: Annotated[int, Field(ge=2, le=1000)] = 2
    persons_min: Annotated[int, Field(ge=2, le=LIMIT_MAX)] = 10
    merchants_max: Annotated[int, Field(ge=1, le=20)] = 3
    person_share_min_pct: Pct = 80
    merchant_share_min_pct: Pct = 50
    refresh_s: Annotated[int, Field(ge=1, le=3600)] = 60
    action: RedemptionAction = "hold"


_HH_MM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")


class BusinessHours(_Model):
    """Open from ``opens_at`` to ``closes_at`` (UTC+8), ``"HH:MM"``; a closing time
    before the opening one runs past midnight, the same times mean always open. An
    unquoted ``06:00`` reads in YAML as 360 (minutes), which is taken as such."""

    opens_at: int = 6 * 60
    closes_at: int = 23 * 60

    @field_validator("opens_at", "closes_at", mode="before")
    @classmethod
    def _minutes(cls, value: object) -> object:
        if isinstance(value, str):
            match = _HH_MM.match(value)
            if match is None:
                raise ValueError("a time is HH:MM, 00:00 to 24:00")
            if value == "24:00":
                return MINUTES_PER_DAY
            return int(match.group(1)) * 60 + int(match.group(2))
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= MINUTES_PER_DAY:
                raise ValueError("a time is HH:MM, 00:00 to 24:00")
            return value
        raise ValueError("a time is HH:MM, 00:00 to 24:00")

    def open_at(self, minute: int) -> bool:
        """Whether the minute of the day (0-1439, UTC+8) is within the hours."""
        opens, closes = self.opens_at % MINUTES_PER_DAY, self.closes_at % MINUTES_PER_DAY
        if opens == closes:
            return True
        if opens < closes:
            return opens <= minute < closes
        return minute >= opens or minute < closes

    def text(self) -> str:
        return f"{_hh_mm(self.opens_at)}-{_hh_mm(self.closes_at)}"


def _hh_mm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


CampaignKey = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class HoursRule(BusinessHours):
    """``outside_business_hours``: the default hours, and those of some campaigns and
    some merchants (a merchant's win over its campaign's)."""

    campaigns: Annotated[
        dict[CampaignKey, BusinessHours], Field(max_length=HOURS_CAMPAIGNS_MAX)
    ] = Field(default_factory=dict)
    merchants: Annotated[
        dict[CampaignKey, BusinessHours], Field(max_length=HOURS_MERCHANTS_MAX)
    ] = Field(default_factory=dict)
    action: RedemptionAction = "flag"

    def hours_of(self, *, campaign_id: str, merchant_id: str) -> BusinessHours:
        return self.merchants.get(merchant_id) or self.campaigns.get(campaign_id) or self


class SkuPriceRule(_Model):
    """``price_above_sku_baseline``: a trade-in product's price more than ``margin_pct``
    above its SKU's baseline price (imported by operators)."""

    margin_pct: Annotated[int, Field(ge=0, le=1000)] = 20
    action: RedemptionAction = "hold"


class RedemptionRules(_Model):
    """The redemption-time rules; each one left out is off."""

    merchant_rate_spike: RateSpikeRule | None = None
    amount_just_over_threshold: JustOverRule | None = None
    refund_soon_after: RefundSoonRule | None = None
    payer_many_vouchers: PayerRule | None = None
    ring: RingRule | None = None
    outside_business_hours: HoursRule | None = None
    price_above_sku_baseline: SkuPriceRule | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)

    @property
    def on(self) -> list[str]:
        """The names of the rules that are on."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


# -- the features -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ring:
    """A ring found in recent redemptions: its merchants and persons, and what it did."""

    merchants: frozenset[str]
    persons: frozenset[str]
    redemptions: int  # the persons' redemptions at the merchants, in the window
    merchant_share_pct: int  # of the merchants' redemptions in the window


@dataclass(frozen=True, slots=True)
class RedemptionFeatures:
    """What the services found out about one completed redemption; None is unknown.

    Counts include the redemption itself and those before it in its batch.
    """

    merchant_id: str
    campaign_id: str
    redeemed_at: datetime
    merchant_minute_redemptions: int | None = None
    # The merchant's redemptions over the rule's baseline minutes before the last one.
    merchant_baseline_redemptions: int | None = None
    # The same two figures for every merchant of the platform together.
    platform_minute_redemptions: int | None = None
    platform_baseline_redemptions: int | None = None
    # The order's amount above its template's threshold (None: a template without one).
    over_threshold_fen: int | None = None
    merchant_window_redemptions: int | None = None
    merchant_window_just_over: int | None = None
    payer_id: str | None = None
    payer_vouchers: int | None = None
    ring: Ring | None = None
    sku: str | None = None
    price_fen: int | None = None
    sku_baseline_fen: int | None = None


@dataclass(frozen=True, slots=True)
class RefundFeatures:
    """What the services found out about one refund; None is unknown. The merchant's
    figures include this refund and its redemption."""

    merchant_id: str
    since_redemption_s: int
    merchant_quick_refunds: int | None = None
    merchant_redemptions: int | None = None
    payer_id: str | None = None
    # The payer token's refunds within the rule's ``within_s``, this one included.
    payer_quick_refunds: int | None = None


Figure = int | str
Figures = Mapping[str, Figure]


@dataclass(frozen=True, slots=True)
class RedemptionFired:
    """One rule that fired: its code, what it does, and the figures it saw."""

    code: RedemptionReason
    action: RedemptionAction
    figures: Figures


@dataclass(frozen=True, slots=True)
class RedemptionVerdict:
    """A redemption flagged, held or its merchant suspended (None: nothing fired)."""

    action: RedemptionAction
    fired: tuple[RedemptionFired, ...]

    @property
    def codes(self) -> list[str]:
        return [f.code.value for f in self.fired]


def _verdict(fired: list[RedemptionFired]) -> RedemptionVerdict | None:
    if not fired:
        return None
    action: RedemptionAction = "flag"
    for one in fired:
        action = stricter(action, one.action)
    return RedemptionVerdict(action, tuple(fired))


def minute_of_day(at: datetime) -> int:
    """The minute of the day an instant falls in, in UTC+8."""
    local = at.astimezone(CST)
    return local.hour * 60 + local.minute


@dataclass(frozen=True, slots=True)
class CompiledRedemptionRules:
    """The redemption rules in force, and the judging of a redemption or a refund."""

    rules: RedemptionRules

    @property
    def judges_redemptions(self) -> bool:
        return any(
            name != "refund_soon_after" and getattr(self.rules, name) is not None
            for name in type(self.rules).model_fields
        )

    def judge_batch(self, batch: Sequence[RedemptionFeatures]) -> list[RedemptionVerdict | None]:
        return [self.judge(features) for features in batch]

    def judge(self, f: RedemptionFeatures) -> RedemptionVerdict | None:
        """The verdict on one completed redemption: None lets it be."""
        rules = self.rules
        fired: list[RedemptionFired] = []
        for check in (
            _rate_spike,
            _just_over,
            _payer,
            _ring,
            _hours,
            _sku_price,
        ):
            one = check(rules, f)
            if one is not None:
                fired.append(one)
        return _verdict(fired)

    def judge_refund(self, f: RefundFeatures) -> RedemptionVerdict | None:
        """The verdict on a refund: None lets it be."""
        rule = self.rules.refund_soon_after
        if rule is None or f.since_redemption_s > rule.within_s:
            return None
        figures: dict[str, Figure] = {
            "since_redemption_s": f.since_redemption_s,
            "within_s": rule.within_s,
        }
        if rule.merchant_refunds_min > 1 or rule.merchant_share_min_pct > 0:
            refunds, redemptions = f.merchant_quick_refunds, f.merchant_redemptions
            if refunds is None or redemptions is None or redemptions <= 0:
                return None
            if refunds < rule.merchant_refunds_min:
                return None
            if refunds * 100 < rule.merchant_share_min_pct * redemptions:
                return None
            figures |= {
                "merchant_quick_refunds": refunds,
                "merchant_redemptions": redemptions,
                "merchant_share_pct": refunds * 100 // redemptions,
                "window_s": rule.window_s,
            }
        if rule.payer_refunds_min > 1:
            quick = f.payer_quick_refunds
            if quick is None or f.payer_id is None or quick < rule.payer_refunds_min:
                return None
            figures |= {"payer_id": f.payer_id, "payer_quick_refunds": quick}
        figures["merchant_id"] = f.merchant_id
        return _verdict([RedemptionFired(RedemptionReason.REFUND_SOON_AFTER, rule.action, figures)])


def _rate_spike(rules: RedemptionRules, f: RedemptionFeatures) -> RedemptionFired | None:
    rule = rules.merchant_rate_spike
    minute, baseline = f.merchant_minute_redemptions, f.merchant_baseline_redemptions
    if rule is None or minute is None or baseline is None or baseline <= 0:
        return None  # no baseline yet: a merchant's first minutes are its own
    if minute < rule.floor or minute * rule.baseline_minutes < rule.factor * baseline:
        return None
    figures: dict[str, Figure] = {
        "merchant_id": f.merchant_id,
        "minute_redemptions": minute,
        "baseline_redemptions": baseline,
        "baseline_minutes": rule.baseline_minutes,
        "floor": rule.floor,
    }
    if rule.relative_to_platform:
        everyone, everyone_before = f.platform_minute_redemptions, f.platform_baseline_redemptions
        if everyone is None or everyone_before is None or everyone <= 0 or everyone_before <= 0:
            return None
        # The merchant's share now against its share before: minute / everyone ≥
        # factor × baseline / everyone_before, in integers.
        if minute * everyone_before < rule.factor * baseline * everyone:
            return None
        figures |= {
            "platform_minute_redemptions": everyone,
            "platform_baseline_redemptions": everyone_before,
        }
    return RedemptionFired(RedemptionReason.MERCHANT_RATE_SPIKE, rule.action, figures)


def _just_over(rules: RedemptionRules, f: RedemptionFeatures) -> RedemptionFired | None:
    rule = rules.amount_just_over_threshold
    over = f.over_threshold_fen
    if rule is None or over is None or not 0 < over <= rule.margin_fen:
        return None
    total, just_over = f.merchant_window_redemptions, f.merchant_window_just_over
    if total is None or just_over is None or total < rule.redemptions_min:
        return None
    if just_over * 100 < rule.share_min_pct * total:
        return None
    return RedemptionFired(
        RedemptionReason.AMOUNT_JUST_OVER_THRESHOLD,
        rule.action,
        {
            "merchant_id": f.merchant_id,
            "over_threshold_fen": over,
            "margin_fen": rule.margin_fen,
            "merchant_just_over": just_over,
            "merchant_redemptions": total,
            "share_pct": just_over * 100 // total,
            "window_s": rule.window_s,
        },
    )


def _payer(rules: RedemptionRules, f: RedemptionFeatures) -> RedemptionFired | None:
    rule = rules.payer_many_vouchers
    if rule is None or f.payer_vouchers is None or f.payer_vouchers <= rule.limit:
        return None
    figures: dict[str, Figure] = {
        "vouchers": f.payer_vouchers,
        "limit": rule.limit,
        "window_s": rule.window_s,
    }
    if f.payer_id is not None:
        figures["payer_id"] = f.payer_id
    return RedemptionFired(RedemptionReason.PAYER_MANY_VOUCHERS, rule.action, figures)


def _ring(rules: RedemptionRules, f: RedemptionFeatures) -> RedemptionFired | None:
    rule, ring = rules.ring, f.ring
    if rule is None or ring is None or f.merchant_id not in ring.merchants:
        return None
    return RedemptionFired(RedemptionReason.RING, rule.action, ring_figures(ring, rule))


def ring_figures(ring: Ring, rule: RingRule) -> dict[str, Figure]:
    """A ring as a review item shows it."""
    return {
        "persons": len(ring.persons),
        "merchants": len(ring.merchants),
        "merchant_ids": ",".join(sorted(ring.merchants)),
        "ring_redemptions": ring.redemptions,
        "merchant_share_pct": ring.merchant_share_pct,
        "window_s": rule.window_s,
    }


def _hours(rules: RedemptionRules, f: RedemptionFeatures) -> RedemptionFired | None:
    rule = rules.outside_business_hours
    if rule is None:
        return None
    hours = rule.hours_of(campaign_id=f.campaign_id, merchant_id=f.merchant_id)
    minute = minute_of_day(f.redeemed_at)
    if hours.open_at(minute):
        return None
    return RedemptionFired(
        RedemptionReason.OUTSIDE_BUSINESS_HOURS,
        rule.action,
        {"merchant_id": f.merchant_id, "local_time": _hh_mm(minute), "hours": hours.text()},
    )


def _sku_price(rules: RedemptionRules, f: RedemptionFeatures) -> RedemptionFired | None:
    rule = rules.price_above_sku_baseline
    price, baseline = f.price_fen, f.sku_baseline_fen
    if rule is None or price is None or baseline is None:
        return None
    # Integer fen throughout: price > baseline × (100 + margin) / 100.
    if price * 100 <= baseline * (100 + rule.margin_pct):
        return None
    figures: dict[str, Figure] = {
        "price_fen": price,
        "baseline_price_fen": baseline,
        "margin_pct": rule.margin_pct,
    }
    if f.sku is not None:
        figures["sku"] = f.sku
    return RedemptionFired(RedemptionReason.PRICE_ABOVE_SKU_BASELINE, rule.action, figures)


def compile_redemption_rules(rules: RedemptionRules) -> CompiledRedemptionRules | None:
    """The rules in force; None when none is on (redemptions skip risk altogether)."""
    return None if rules.empty else CompiledRedemptionRules(rules)


# -- rings ----------------------------------------------------------------------------------


def find_rings(rows: Iterable[tuple[str, str]], rule: RingRule) -> list[Ring]:
    """The rings among recent redemptions, each (person, merchant) one redemption.

    For each merchant that enough repeat customers used to be part of a ring (a
    *seed*: ``persons_min / merchants_max`` of them, as a ring's persons spread over
    its merchants leave one with that many at least), the merchants those customers
    used most, ``merchants_max`` at most
    with the seed among them, are a candidate; its persons are the repeat
    customers who spent ``person_share_min_pct`` of their redemptions there; it
    is a ring when they are ``persons_min`` or more and their redemptions there
    are ``merchant_share_min_pct`` of the candidate merchants'. Regulars of a
    big shop are a minority of its customers and make no ring; a shop that
    lives on a few dozen regulars looks like one (an analyst tells them apart).

    Linear in the rows, plus the seeds' customers: the caller bounds the rows.
    """
    by_person: dict[str, Counter[str]] = defaultdict(Counter)
    merchant_total: Counter[str] = Counter()
    for person, merchant in rows:
        by_person[person][merchant] += 1
        merchant_total[merchant] += 1
    repeat = {p: c for p, c in by_person.items() if c.total() >= rule.redemptions_min}
    customers: dict[str, list[str]] = defaultdict(list)
    for person, merchants in repeat.items():
        for merchant in merchants:
            customers[merchant].append(person)
    rings: dict[frozenset[str], Ring] = {}
    seed_min = -(-rule.persons_min // rule.merchants_max)
    for seed in sorted(m for m, ps in customers.items() if len(ps) >= seed_min):
        weight: Counter[str] = Counter()
        for person in customers[seed]:
            weight.update(repeat[person])
        top = [m for m, _ in sorted(weight.items(), key=lambda mw: (-mw[1], mw[0]))]
        chosen = frozenset([seed, *[m for m in top if m != seed][: rule.merchants_max - 1]])
        if chosen in rings:
            continue
        ring = _ring_at(chosen, repeat, customers, merchant_total, rule)
        if ring is not None:
            rings[chosen] = ring
    return sorted(rings.values(), key=lambda r: sorted(r.merchants))


def _ring_at(
    merchants: frozenset[str],
    repeat: Mapping[str, Counter[str]],
    customers: Mapping[str, list[str]],
    merchant_total: Counter[str],
    rule: RingRule,
) -> Ring | None:
    persons: set[str] = set()
    inside = 0
    for person in {p for m in merchants for p in customers.get(m, ())}:
        used = repeat[person]
        here = sum(used[m] for m in merchants)
        if here * 100 >= rule.person_share_min_pct * used.total():
            persons.add(person)
            inside += here
    if len(persons) < rule.persons_min:
        return None
    total = sum(merchant_total[m] for m in merchants)
    if inside * 100 < rule.merchant_share_min_pct * total:
        return None
    return Ring(merchants, frozenset(persons), inside, inside * 100 // total)


def ring_of(rings: Sequence[Ring], person: str, merchant: str) -> Ring | None:
    """The ring a person's redemption at a merchant belongs to, if any."""
    for ring in rings:
        if merchant in ring.merchants and person in ring.persons:
            return ring
    return None
