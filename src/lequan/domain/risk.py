"""Risk rules: whether a claim is allowed, held for an analyst's review or refused,
and which rules said so with the figures they saw.

Pure: the services compute the features (counts from the shared counters,
blacklist hits, the channel's signals) and hand them in; nothing here reads
a clock, a store or a counter. A feature the services could not know is
``None`` (unknown) and never fires a rule that needs it: a channel that
sends no device id is not refused for its device.

The rules come from a versioned YAML file (``RulesFile``), validated field by
field like a campaign file, approved maker-checker and swapped in every
process without a restart (``services/risk.py``). Each rule is optional: a
rule left out of the file is off, and a file with no claim rule costs the
claim path nothing.

    claim rule               feature (ClaimFeatures)        fires when
    velocity_device          device_claims                  > limit in window_s
    velocity_ip              ip_claims                      > limit in window_s
    velocity_subnet          subnet_claims (/24, /64)       > limit in window_s
    identities_per_device    device_identities              > limit in window_s
    devices_per_identity     identity_devices               > limit in window_s
    region_mismatch          declared vs network region     differ at ``level``
    blacklisted_person       person_blacklisted             true
    blacklisted_device       device_blacklisted             true
    blacklisted_phone        phone_blacklisted              true
    new_account              opened_before_release_s        < min_before_release_s
    channel_risk_high        channel_risk                   "high"

The verdict is the strictest action among the rules that fired: one
``refuse`` refuses, else one ``review`` holds, else the claim is allowed.
The ``redemption`` section of the file holds the redemption-time rules
(``domain/redemption_risk.py``, reason codes ``RedemptionReason``).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lequan.domain.redemption_risk import RedemptionReason, RedemptionRules

__all__ = [
    "ACTIONS",
    "Action",
    "ClaimBatch",
    "ClaimFeatures",
    "ClaimReason",
    "ClaimRules",
    "ClaimVerdict",
    "CompiledClaimRules",
    "CountedRule",
    "Fired",
    "RedemptionReason",
    "RedemptionRules",
    "RulesFile",
    "compile_claim_rules",
    "regions_differ",
    "subnet_of",
]


_T = TypeVar("_T")


class ClaimReason(enum.StrEnum):
    """Why a claim was held or refused: one code per rule, in ``details.reasons``."""

    VELOCITY_DEVICE = "velocity_device"
    VELOCITY_IP = "velocity_ip"
    VELOCITY_SUBNET = "velocity_subnet"
    IDENTITIES_PER_DEVICE = "identities_per_device"
    DEVICES_PER_IDENTITY = "devices_per_identity"
    REGION_MISMATCH = "region_mismatch"
    BLACKLISTED_PERSON = "blacklisted_person"
    BLACKLISTED_DEVICE = "blacklisted_device"
    BLACKLISTED_PHONE = "blacklisted_phone"
    NEW_ACCOUNT = "new_account"
    CHANNEL_RISK_HIGH = "channel_risk_high"


# What a rule that fires does: hold the claim for an analyst, or refuse it outright.
Action = Literal["review", "refuse"]
ACTIONS: tuple[Action, ...] = ("review", "refuse")

# One day: the longest window a counter keeps (and so the longest a key lives).
WINDOW_S_MAX = 86_400
# Claims from one device, address or network in a window, or identities on one device.
LIMIT_MAX = 1_000_000
# Five years: longer than any account's age before a release is worth telling apart.
BEFORE_RELEASE_S_MAX = 5 * 365 * 86_400


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


WindowS = Annotated[int, Field(ge=1, le=WINDOW_S_MAX)]
Limit = Annotated[int, Field(ge=1, le=LIMIT_MAX)]


class CountedRule(_Model):
    """At most ``limit`` in any ``window_s``; the one past it fires."""

    limit: Limit
    window_s: WindowS
    action: Action = "review"


class SubnetRule(CountedRule):
    """``velocity_subnet``: the network is the address's first ``ipv4_prefix`` bits
    (IPv4) or ``ipv6_prefix`` bits (IPv6)."""

    ipv4_prefix: Annotated[int, Field(ge=8, le=32)] = 24
    ipv6_prefix: Annotated[int, Field(ge=16, le=128)] = 64


class RegionRule(_Model):
    """``region_mismatch``: for a campaign open to some regions only, the channel's
    network region and the declared location must agree down to ``level``."""

    level: Literal["province", "city", "district"] = "province"
    action: Action = "review"


class FlagRule(_Model):
    """A rule that fires on a yes/no feature (a blacklist, the channel's level)."""

    action: Action = "refuse"


class NewAccountRule(_Model):
    """``new_account``: the channel account was opened less than ``min_before_release_s``
    before the round's release (or after it)."""

    min_before_release_s: Annotated[int, Field(ge=1, le=BEFORE_RELEASE_S_MAX)]
    action: Action = "review"


class ClaimRules(_Model):
    """The claim-time rules; each one left out is off."""

    velocity_device: CountedRule | None = None
    velocity_ip: CountedRule | None = None
    velocity_subnet: SubnetRule | None = None
    identities_per_device: CountedRule | None = None
    devices_per_identity: CountedRule | None = None
    region_mismatch: RegionRule | None = None
    blacklisted_person: FlagRule | None = None
    blacklisted_device: FlagRule | None = None
    blacklisted_phone: FlagRule | None = None
    new_account: NewAccountRule | None = None
    channel_risk_high: FlagRule | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


class RulesFile(_Model):
    """A whole rules file: its version, then the rules of each moment they apply at."""

    version: Annotated[int, Field(ge=1, le=2_000_000_000)]
    claim: ClaimRules = ClaimRules()
    redemption: RedemptionRules = RedemptionRules()

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        # ``claim:`` with nothing under it is YAML's null: the same as an empty section.
        if isinstance(data, dict):
            return {k: {} if k in _SECTIONS and v is None else v for k, v in data.items()}
        return data


_SECTIONS = frozenset({"claim", "redemption"})


# -- the features claims are judged on ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimFeatures:
    """What the services found out about one claim; None is unknown.

    Counts include the claim itself and those before it in its batch.
    """

    device_id: str | None = None
    ip: str | None = None
    subnet: str | None = None
    device_claims: int | None = None
    ip_claims: int | None = None
    subnet_claims: int | None = None
    device_identities: int | None = None
    identity_devices: int | None = None
    # The campaign is open to some regions only (its eligibility lists regions).
    local_only: bool = False
    declared_region: str | None = None
    network_region: str | None = None
    person_blacklisted: bool | None = None
    device_blacklisted: bool | None = None
    phone_blacklisted: bool | None = None
    account_age_s: int | None = None
    # How long before the round's release the account was opened (negative: after).
    opened_before_release_s: int | None = None
    channel_risk: str | None = None


FEATURES = tuple(ClaimFeatures.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    """The features of a batch of claims, one column per feature with one entry per
    claim (None: unknown), as ``ClaimFeatures`` names them.

    The services fill the columns the rules in force read, and may leave the
    others empty: a batch of a thousand claims is judged column by column,
    never made into a thousand objects.
    """

    size: int
    device_id: Sequence[str | None] = ()
    ip: Sequence[str | None] = ()
    subnet: Sequence[str | None] = ()
    device_claims: Sequence[int | None] = ()
    ip_claims: Sequence[int | None] = ()
    subnet_claims: Sequence[int | None] = ()
    device_identities: Sequence[int | None] = ()
    identity_devices: Sequence[int | None] = ()
    local_only: Sequence[bool] = ()
    declared_region: Sequence[str | None] = ()
    network_region: Sequence[str | None] = ()
    person_blacklisted: Sequence[bool | None] = ()
    device_blacklisted: Sequence[bool | None] = ()
    phone_blacklisted: Sequence[bool | None] = ()
    account_age_s: Sequence[int | None] = ()
    opened_before_release_s: Sequence[int | None] = ()
    channel_risk: Sequence[str | None] = ()

    @classmethod
    def of(cls, claims: Sequence[ClaimFeatures]) -> ClaimBatch:
        columns: dict[str, list[Any]] = {
            name: [getattr(c, name) for c in claims] for name in FEATURES
        }
        return cls(len(claims), **columns)


Figure = int | str
Figures = Mapping[str, Figure]


@dataclass(frozen=True, slots=True)
class Fired:
    """One rule that fired: its code, what it does, and the figures it saw."""

    code: ClaimReason
    action: Action
    figures: Figures


@dataclass(frozen=True, slots=True)
class ClaimVerdict:
    """A claim held or refused (an allowed claim has no verdict: ``None``)."""

    action: Action
    fired: tuple[Fired, ...]

    @property
    def codes(self) -> list[str]:
        return [f.code.value for f in self.fired]


# A compiled rule: the claims of a batch it fires on, by position, with what it saw.
Check = Callable[[ClaimBatch], Iterable[tuple[int, Fired]]]


@dataclass(frozen=True, slots=True)
class CompiledClaimRules:
    """The claim rules as checks, with the features they need (the services compute
    only those: a rule that is off costs nothing)."""

    checks: tuple[Check, ...]
    # The window of each counted feature whose rule is on (None: off, not counted).
    device_window_s: int | None
    ip_window_s: int | None
    subnet_window_s: int | None
    device_identities_window_s: int | None
    identity_devices_window_s: int | None
    ipv4_prefix: int
    ipv6_prefix: int
    region: bool
    person_blacklist: bool
    device_blacklist: bool
    phone_blacklist: bool
    new_account: bool
    channel_risk: bool

    def judge_batch(self, batch: ClaimBatch) -> list[ClaimVerdict | None]:
        """The verdict on each claim of a batch, in order: None allows it."""
        fired: dict[int, list[Fired]] = {}
        for check in self.checks:
            for n, one in check(batch):
                fired.setdefault(n, []).append(one)
        verdicts: list[ClaimVerdict | None] = [None] * batch.size
        for n, all_fired in fired.items():
            refuse = any(f.action == "refuse" for f in all_fired)
            verdicts[n] = ClaimVerdict("refuse" if refuse else "review", tuple(all_fired))
        return verdicts

    def judge(self, features: ClaimFeatures) -> ClaimVerdict | None:
        """The verdict on one claim: None allows it."""
        return self.judge_batch(ClaimBatch.of([features]))[0]


def _value(column: Sequence[_T], n: int) -> _T | None:
    return column[n] if column else None


def _over(
    code: ClaimReason,
    rule: CountedRule,
    read: Callable[[ClaimBatch], Sequence[int | None]],
    what: str,
    subject: tuple[str, Callable[[ClaimBatch], Sequence[str | None]]],
) -> Check:
    limit, window_s, action = rule.limit, rule.window_s, rule.action
    name, column = subject

    def check(batch: ClaimBatch) -> Iterator[tuple[int, Fired]]:
        seen = read(batch)
        for n in [n for n, count in enumerate(seen) if count is not None and count > limit]:
            count = seen[n]
            assert count is not None
            figures: dict[str, Figure] = {what: count, "limit": limit, "window_s": window_s}
            value = _value(column(batch), n)
            if value is not None:
                figures[name] = value
            yield n, Fired(code, action, figures)

    return check


def _flag(
    code: ClaimReason,
    rule: FlagRule,
    read: Callable[[ClaimBatch], Sequence[object]],
    fires_on: object,
    figures: Callable[[ClaimBatch, int], dict[str, Figure]],
) -> Check:
    action = rule.action

    def check(batch: ClaimBatch) -> Iterator[tuple[int, Fired]]:
        column = read(batch)
        for n in [n for n, value in enumerate(column) if value == fires_on]:
            yield n, Fired(code, action, figures(batch, n))

    return check


def _nothing(batch: ClaimBatch, n: int) -> dict[str, Figure]:
    return {}


def _the_device(batch: ClaimBatch, n: int) -> dict[str, Figure]:
    device = _value(batch.device_id, n)
    return {} if device is None else {"device_id": device}


def compile_claim_rules(rules: ClaimRules) -> CompiledClaimRules | None:
    """The checks of every rule that is on; None when none is (the claim path skips
    risk altogether)."""
    if rules.empty:
        return None
    checks: list[Check] = []
    device: tuple[str, Callable[[ClaimBatch], Sequence[str | None]]] = (
        "device_id",
        lambda b: b.device_id,
    )
    if (r := rules.velocity_device) is not None:
        checks.append(
            _over(ClaimReason.VELOCITY_DEVICE, r, lambda b: b.device_claims, "claims", device)
        )
    if (r := rules.velocity_ip) is not None:
        checks.append(
            _over(
                ClaimReason.VELOCITY_IP, r, lambda b: b.ip_claims, "claims", ("ip", lambda b: b.ip)
            )
        )
    if (s := rules.velocity_subnet) is not None:
        checks.append(
            _over(
                ClaimReason.VELOCITY_SUBNET,
                s,
                lambda b: b.subnet_claims,
                "claims",
                ("subnet", lambda b: b.subnet),
            )
        )
    if (r := rules.identities_per_device) is not None:
        checks.append(
            _over(
                ClaimReason.IDENTITIES_PER_DEVICE,
                r,
                lambda b: b.device_identities,
                "identities",
                device,
            )
        )
    if (r := rules.devices_per_identity) is not None:
        checks.append(
            _over(
                ClaimReason.DEVICES_PER_IDENTITY,
                r,
                lambda b: b.identity_devices,
                "devices",
                device,
            )
        )
    if (g := rules.region_mismatch) is not None:
        checks.append(_region_check(g))
    if (b := rules.blacklisted_person) is not None:
        checks.append(
            _flag(ClaimReason.BLACKLISTED_PERSON, b, lambda c: c.person_blacklisted, True, _nothing)
        )
    if (b := rules.blacklisted_device) is not None:
        checks.append(
            _flag(
                ClaimReason.BLACKLISTED_DEVICE, b, lambda c: c.device_blacklisted, True, _the_device
            )
        )
    if (b := rules.blacklisted_phone) is not None:
        checks.append(
            _flag(ClaimReason.BLACKLISTED_PHONE, b, lambda c: c.phone_blacklisted, True, _nothing)
        )
    if (n := rules.new_account) is not None:
        checks.append(_new_account_check(n))
    if (b := rules.channel_risk_high) is not None:
        checks.append(
            _flag(
                ClaimReason.CHANNEL_RISK_HIGH,
                b,
                lambda c: c.channel_risk,
                "high",
                lambda c, n: {"channel_risk": "high"},
            )
        )
    subnet = rules.velocity_subnet
    return CompiledClaimRules(
        checks=tuple(checks),
        device_window_s=_window(rules.velocity_device),
        ip_window_s=_window(rules.velocity_ip),
        subnet_window_s=_window(subnet),
        device_identities_window_s=_window(rules.identities_per_device),
        identity_devices_window_s=_window(rules.devices_per_identity),
        ipv4_prefix=24 if subnet is None else subnet.ipv4_prefix,
        ipv6_prefix=64 if subnet is None else subnet.ipv6_prefix,
        region=rules.region_mismatch is not None,
        person_blacklist=rules.blacklisted_person is not None,
        device_blacklist=rules.blacklisted_device is not None,
        phone_blacklist=rules.blacklisted_phone is not None,
        new_account=rules.new_account is not None,
        channel_risk=rules.channel_risk_high is not None,
    )


def _window(rule: CountedRule | None) -> int | None:
    return None if rule is None else rule.window_s


def _region_check(rule: RegionRule) -> Check:
    level, action = rule.level, rule.action

    def check(batch: ClaimBatch) -> Iterator[tuple[int, Fired]]:
        local, declared, network = batch.local_only, batch.declared_region, batch.network_region
        differ: dict[tuple[str, str], bool] = {}  # a batch's claims share a few pairs
        for n in [n for n, d in enumerate(declared) if d is not None and local[n]]:
            here, there = declared[n], network[n]
            if here is None or there is None:
                continue
            pair = (here, there)
            found = differ.get(pair)
            if found is None:
                found = differ[pair] = regions_differ(here, there, level)
            if found:
                figures: dict[str, Figure] = {
                    "declared_region": here,
                    "network_region": there,
                    "level": level,
                }
                yield n, Fired(ClaimReason.REGION_MISMATCH, action, figures)

    return check


def _new_account_check(rule: NewAccountRule) -> Check:
    min_s, action = rule.min_before_release_s, rule.action

    def check(batch: ClaimBatch) -> Iterator[tuple[int, Fired]]:
        before = batch.opened_before_release_s
        for n in [n for n, s in enumerate(before) if s is not None and s < min_s]:
            before_s = before[n]
            assert before_s is not None
            figures: dict[str, Figure] = {"opened_before_release_s": before_s, "min_s": min_s}
            age_s = _value(batch.account_age_s, n)
            if age_s is not None:
                figures["account_age_s"] = age_s
            yield n, Fired(ClaimReason.NEW_ACCOUNT, action, figures)

    return check


# How many leading digits of a GB/T 2260 code name the area at each level.
_LEVEL_DIGITS = {"province": 2, "city": 4, "district": 6}


def regions_differ(declared: str, network: str, level: str) -> bool:
    """Whether two GB/T 2260 region codes name different areas at ``level``.

    A code coarser than the level (a province's ``310000`` against a district)
    is compared at its own precision: IP geolocation often knows only the
    province, and that is no inconsistency.
    """
    digits = _LEVEL_DIGITS[level]
    digits = min(digits, _precision(declared), _precision(network))
    return declared[:digits] != network[:digits]


def _precision(code: str) -> int:
    if code.endswith("0000"):
        return 2
    if code.endswith("00"):
        return 4
    return 6


def subnet_of(ip: str, *, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The network an address belongs to, as ``address/prefix`` (e.g. ``1.2.3.0/24``).

    ``ip`` is as the schema gives it (canonical text, an IPv4-mapped IPv6
    address already as IPv4); a /24 of IPv4 is cut from the text itself,
    which costs far less than parsing it, and a batch has a thousand.
    """
    if ":" not in ip:
        if ipv4_prefix == 24:
            return ip[: ip.rindex(".")] + ".0/24"
        return str(ipaddress.IPv4Network(f"{ip}/{ipv4_prefix}", strict=False))
    return str(ipaddress.IPv6Network(f"{ip}/{ipv6_prefix}", strict=False))
