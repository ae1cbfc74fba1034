"""Who is in the simulated crowd, and what their channels and acquirers tell lequan (issue 16).

Every person of the crowd is of one kind, known to the simulator alone (the
ground truth its report measures the platform's risk rules against):

- **honest** people: a device each, home or mobile addresses spread over
  Shanghai's networks (IPv6 for most mobile users), accounts months or
  years old, ordinary orders. A small share are the honest edge cases a
  risk rule must let through: a family sharing one device and one home
  address; colleagues behind one office NAT address; newcomers whose
  account is a few days old; channels that send only part of the signals.
- **bots**: scripts that fire at the release instant and retry hard with
  fresh keys. A device each; half behind a cloud proxy pool, half at home;
  the channel rates a share of them risky.
- a **scalper farm** (黄牛): hundreds of identities on a few devices and a
  few addresses of one /24, their accounts opened minutes before the
  release, run by a script at the release instant.
- **location spoofers**: people elsewhere in China who declare a Shanghai
  location for this local-only campaign while their network is placed in
  another province.
- a **colluding ring** (刷单): accounts run by a few organisers, careful at
  claim time (a device each, home addresses), who spend their vouchers in
  fake orders just over the threshold at a few merchants of theirs, paid
  with the same few payer tokens, and refund most of them soon after
  (cash-out), then spend the voucher the refund gave back again.

Signals are drawn from the person's number and the crowd's seed, never
stored per person: a million people cost a byte each here. Addresses are
documentation-free but plausible public ranges; nothing is sent anywhere
but the loopback server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

__all__ = [
    "AdversaryConfig",
    "Kind",
    "Merchant",
    "Population",
    "RedemptionPlan",
]

SHANGHAI_DISTRICTS = (
    "310101", "310104", "310105", "310106", "310107", "310109", "310110", "310112",
    "310113", "310114", "310115", "310116", "310117", "310118", "310120", "310151",
)  # fmt: skip
# (first octet, first second octet, how many): /16s of Shanghai's broadband and mobile
# networks, about 160 of them, so that a /24 sees about as many claimants as a real one.
SHANGHAI_V4_BLOCKS = (
    (101, 80, 16), (101, 224, 8), (116, 224, 16), (180, 152, 8), (180, 160, 16),
    (222, 64, 16), (58, 32, 32), (112, 64, 4), (114, 80, 16), (117, 128, 4),
    (124, 74, 2), (140, 206, 2), (183, 192, 8), (211, 144, 16),
)  # fmt: skip
IPV6_CARRIERS = ((0x240E, 0x0000), (0x2408, 0x8000), (0x2409, 0x8000))  # a /20 each
# Where spoofers really are: a region code and one /16 of its networks each.
ELSEWHERE = (
    ("320100", 49, 64), ("320500", 49, 72), ("330100", 115, 192), ("340100", 36, 32),
    ("440300", 113, 96), ("410100", 171, 8), ("510100", 171, 208), ("420100", 27, 16),
)  # fmt: skip
BOT_PROXY_FIRST_OCTET = 47  # a cloud provider's Shanghai region: 47.100.0.0/14
BOT_PROXY_SECOND_OCTETS = (100, 101, 102, 103)
FARM_SUBNET = "58.247.12"  # one business line's /24
FARM_REGION = "310115"
FARM_IPS_MAX = 200  # hosts .10 to .209 of the farm's /24
OFFICE_FIRST_OCTET = 210  # business lines: 210.22.0.0/16
OFFICE_SECOND_OCTET = 22

FAMILY_SIZE = (2, 4)  # people on one shared device and home address
OFFICE_SIZE = (20, 60)  # colleagues behind one NAT address
NEWCOMER_AGE_S = (86_400, 7 * 86_400)  # honest accounts opened for the campaign's week
HONEST_AGE_S = (30 * 86_400, 8 * 365 * 86_400)
FARM_AGE_S = (60, 1800)  # opened minutes before the release
BOT_RETRIES = 5
FARM_RETRIES = 3
RING_ARRIVAL_S = 0.5  # the ring's accounts are claimed by hand, early, by people who wait
TERMINALS_PER_MERCHANT = 4

# Orders: a 300-yuan threshold; people order a little above it, a few far above.
THRESHOLD_FEN = 30_000
HONEST_OVERSHOOT_MEAN_FEN = 15_000
HONEST_CENTS_SHARE = 0.15  # most bills are whole yuan
HONEST_REFUND_SHARE = 0.01  # a dish sent back
FAKE_OVERSHOOT_FEN = (1, 99)  # 300.01 to 300.99
RING_REFUND_SHARE = 0.7
RING_MERCHANT_WEIGHT = 0.5  # the ring's merchants are small restaurants with real customers too

_MASK64 = (1 << 64) - 1


class Kind(IntEnum):
    HONEST = 0
    BOT = 1
    FARM = 2
    SPOOFER = 3
    RING = 4

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class AdversaryConfig:
    """The adversaries' sizes (0 disables one) and the honest edge cases' shares."""

    farm_identities: int = 500
    farm_devices: int = 5
    farm_ips: int = 3
    spoofer_share: float = 0.002
    ring_people: int = 300
    ring_merchants: int = 3
    ring_payers: int = 3
    ring_cycles: int = 3  # fake orders per voucher: spent, refunded, spent again
    family_share: float = 0.02
    office_share: float = 0.02
    newcomer_share: float = 0.03
    partial_signals_share: float = 0.05
    merchants: int = 40  # ordinary merchants added to the campaign, the ring's besides
    redeem_share: float = 0.1  # of every kind's vouchers but the ring's, which spends all
    redemptions_max: int = 20_000
    # The risk rules' limit of identities on one device: a farm device may win this many.
    device_limit: int = 1
    flag_wait_s: float = 2.0  # how long the review queue is read after the last order

    def adversaries(self, people: int, bot_share: float) -> int:
        return (
            int(people * bot_share)
            + self.farm_identities
            + int(people * self.spoofer_share)
            + self.ring_people
        )


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    region_code: str
    ring: bool


@dataclass(frozen=True)
class RedemptionPlan:
    """One order a person means to pay with a voucher."""

    merchant_id: str
    amount_fen: int
    payer_id: str
    terminal_id: str
    fake: bool
    refund: bool


def _mix(seed: int, key: int, salt: int = 0) -> int:
    """64 stable random bits for (seed, key, salt): splitmix64's finaliser over their
    sum, a few operations where a ``random.Random`` per person would cost microseconds
    (the simulator draws signals for a million claims while the server answers them)."""
    z = (seed + key * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _unit(bits: int) -> float:
    """A number in [0, 1) from the low 16 bits."""
    return (bits & 0xFFFF) / 65536.0


# Salts: each signal draws its own bits; _TRAITS gives 16 bits to each of four traits.
_DEVICE, _IP, _AGE, _TRAITS, _RISK, _PAYER, _PROXY, _ARRIVAL, _GROUP = range(1, 10)


class Population:
    """The crowd's kinds, groups and signals, drawn once from the seed."""

    def __init__(
        self, people: int, *, bot_share: float, config: AdversaryConfig, seed: int
    ) -> None:
        assert config.adversaries(people, bot_share) <= people // 2, "too many adversaries"
        assert config.farm_identities == 0 or (config.farm_devices >= 1 and config.farm_ips >= 1)
        assert config.farm_ips <= FARM_IPS_MAX
        assert config.ring_people == 0 or (config.ring_merchants >= 1 and config.ring_payers >= 1)
        self.people = people
        self.config = config
        self.seed = seed
        rng = random.Random(seed)  # noqa: S311  # a reproducible crowd, not a secret
        self.kinds = bytearray(people)
        sizes = (
            (Kind.BOT, int(people * bot_share)),
            (Kind.FARM, config.farm_identities),
            (Kind.SPOOFER, int(people * config.spoofer_share)),
            (Kind.RING, config.ring_people),
        )
        chosen = rng.sample(range(people), sum(n for _, n in sizes))
        start = 0
        # The farm's identities in the order drawn: the n-th sits on device n % devices.
        self.farm: list[int] = []
        for kind, n in sizes:
            for person in chosen[start : start + n]:
                self.kinds[person] = kind
            if kind == Kind.FARM:
                self.farm = chosen[start : start + n]
            start += n
        self._farm_slot = {person: n for n, person in enumerate(self.farm)}
        grouped = int(people * (config.family_share + config.office_share))
        drawn = rng.sample(range(people), min(people, 2 * grouped + 100))
        honest = [p for p in drawn if self.kinds[p] == Kind.HONEST]
        self.family_of: dict[int, int] = {}
        self.office_of: dict[int, int] = {}
        self._group(honest, config.family_share, FAMILY_SIZE, self.family_of, rng)
        rest = [p for p in honest if p not in self.family_of]
        self._group(rest, config.office_share, OFFICE_SIZE, self.office_of, rng)
        self.merchants = self._merchants(rng)
        self._ring_merchants = [m for m in self.merchants if m.ring]
        self._honest_merchants = [m for m in self.merchants if not m.ring]
        self._merchant_weights = [RING_MERCHANT_WEIGHT if m.ring else 1.0 for m in self.merchants]
        self._ring_payers = [
            f"pay-{_mix(seed, n, _PAYER * 1000 + 1):016x}"
            for n in range(max(1, config.ring_payers))
        ]

    def _group(
        self,
        candidates: list[int],
        share: float,
        size: tuple[int, int],
        into: dict[int, int],
        rng: random.Random,
    ) -> None:
        """Put ``share`` of the crowd, from ``candidates``, in groups of ``size``."""
        wanted = min(len(candidates), int(self.people * share))
        group, taken = 0, 0
        while taken < wanted:
            n = min(rng.randint(*size), wanted - taken)
            if n < size[0]:
                break  # a family of one is no family
            for person in candidates[taken : taken + n]:
                into[person] = group
            taken += n
            group += 1

    def _merchants(self, rng: random.Random) -> list[Merchant]:
        count = self.config.merchants + self.config.ring_merchants
        ring = set(rng.sample(range(count), self.config.ring_merchants))
        return [
            Merchant(f"m-sim-{n:03d}", SHANGHAI_DISTRICTS[n % len(SHANGHAI_DISTRICTS)], n in ring)
            for n in range(count)
        ]

    # -- who is who ------------------------------------------------------------------

    def kind(self, person: int) -> Kind:
        return Kind(self.kinds[person])

    def count(self, kind: Kind) -> int:
        return self.kinds.count(kind)

    def scripted(self, person: int) -> bool:
        """Fires at the release instant and retries with fresh keys."""
        return self.kinds[person] in (Kind.BOT, Kind.FARM)

    def retries_max(self, person: int) -> int:
        kind = self.kinds[person]
        return BOT_RETRIES if kind == Kind.BOT else FARM_RETRIES if kind == Kind.FARM else 0

    def arrival_s(self, person: int, human_arrival_s: float) -> float:
        """When the person's first claim leaves: scripts at the instant, the ring early."""
        kind = self.kinds[person]
        if kind in (Kind.BOT, Kind.FARM):
            return 0.0
        if kind == Kind.RING:
            return _unit(_mix(self.seed, person, _ARRIVAL)) * RING_ARRIVAL_S
        return human_arrival_s

    def edge_case(self, person: int) -> str | None:
        """The honest edge case a person is, if any (the report counts each apart)."""
        if self.kinds[person] != Kind.HONEST:
            return None
        if person in self.family_of:
            return "family_device"
        if person in self.office_of:
            return "office_nat"
        if self._newcomer(person):
            return "new_account"
        if self._partial(person):
            return "partial_signals"
        return None

    def farm_device(self, person: int) -> int | None:
        slot = self._farm_slot.get(person)
        return None if slot is None else slot % self.config.farm_devices

    def _traits(self, person: int) -> int:
        """Bits 0-15 partial signals, 16-31 newcomer, 32-47 region, 48-63 declared region."""
        return _mix(self.seed, person, _TRAITS)

    def _newcomer(self, person: int) -> bool:
        return _unit(self._traits(person) >> 16) < self.config.newcomer_share

    def _partial(self, person: int) -> bool:
        return _unit(self._traits(person)) < self.config.partial_signals_share

    # -- claims ------------------------------------------------------------------------

    def declared_region(self, person: int) -> str:
        """The claim's ``location_region``: where the person says (or the phone says) they are."""
        if self.kinds[person] == Kind.FARM:
            return FARM_REGION
        return SHANGHAI_DISTRICTS[(self._traits(person) >> 48) % len(SHANGHAI_DISTRICTS)]

    def claim_signals(self, person: int, attempt: int) -> dict[str, Any]:
        """``ClaimIn.signals`` as the person's channel sends them on claim ``attempt``."""
        kind = self.kinds[person]
        if kind == Kind.HONEST:
            return self._honest_signals(person)
        if kind == Kind.BOT:
            return self._bot_signals(person, attempt)
        if kind == Kind.FARM:
            return self._farm_signals(person, attempt)
        if kind == Kind.SPOOFER:
            return self._spoofer_signals(person)
        return self._ring_signals(person)

    def _device(self, key: int, salt: int = 0) -> str:
        return f"dev-{_mix(self.seed, key, _DEVICE * 1000 + salt):016x}"

    def _home_ip(self, key: int, salt: int = 0) -> str:
        """A Shanghai address: a /64 of a carrier's IPv6 for 60 %, else an IPv4 address."""
        bits = _mix(self.seed, key, _IP * 1000 + salt)
        if bits % 10 < 6:  # most mobile users are on IPv6
            first, base = IPV6_CARRIERS[(bits >> 4) % len(IPV6_CARRIERS)]
            return (
                f"{first:x}:{base + ((bits >> 8) & 0xFFF):x}:{(bits >> 20) & 0xFFFF:x}:"
                f"{(bits >> 36) & 0xFFFF:x}::{((bits >> 52) & 0xFFF) + 1:x}"
            )
        block = SHANGHAI_V4_BLOCKS[(bits >> 4) % len(SHANGHAI_V4_BLOCKS)]
        second = block[1] + (bits >> 12) % block[2]
        return f"{block[0]}.{second}.{(bits >> 20) & 0xFF}.{((bits >> 28) % 254) + 1}"

    def _age_s(self, person: int, span: tuple[int, int]) -> int:
        low, high = span
        return low + _mix(self.seed, person, _AGE) % (high - low)

    def _network_region(self, person: int, traits: int | None = None) -> str:
        bits = self._traits(person) if traits is None else traits
        return SHANGHAI_DISTRICTS[(bits >> 32) % len(SHANGHAI_DISTRICTS)]

    def _honest_signals(self, person: int) -> dict[str, Any]:
        family = self.family_of.get(person)
        office = self.office_of.get(person)
        if family is not None:
            device, ip = self._device(family, 0xFA), self._home_ip(family, 0xFA)
        else:
            device, ip = self._device(person), self._home_ip(person)
        if office is not None:
            office_bits = _mix(self.seed, office, _GROUP)
            ip = (
                f"{OFFICE_FIRST_OCTET}.{OFFICE_SECOND_OCTET}."
                f"{office_bits & 0xFF}.{(office_bits >> 8) % 254 + 1}"
            )
        traits = self._traits(person)
        config = self.config
        if _unit(traits) < config.partial_signals_share:
            # An older app: the channel knows the address and little else.
            return {"ip": ip}
        newcomer = _unit(traits >> 16) < config.newcomer_share
        return {
            "device_id": device,
            "ip": ip,
            "account_age_s": self._age_s(person, NEWCOMER_AGE_S if newcomer else HONEST_AGE_S),
            "network_region": self._network_region(person, traits),
            # The channel's own engine rates a few honest accounts medium, none high.
            "channel_risk": "medium" if (traits >> 8) % 100 < 4 else "low",
        }

    def _bot_signals(self, person: int, attempt: int) -> dict[str, Any]:
        bits = _mix(self.seed, person, _PROXY)
        if bits % 2:
            hop = _mix(self.seed, person, _PROXY * 1000 + attempt)  # a new proxy every try
            second = BOT_PROXY_SECOND_OCTETS[hop % len(BOT_PROXY_SECOND_OCTETS)]
            ip = f"{BOT_PROXY_FIRST_OCTET}.{second}.{(hop >> 8) & 0xFF}.{(hop >> 16) % 254 + 1}"
        else:
            ip = self._home_ip(person)
        risk = (bits >> 8) % 10
        return {
            "device_id": self._device(person),
            "ip": ip,
            "account_age_s": self._age_s(person, HONEST_AGE_S),
            "network_region": self._network_region(person),
            "channel_risk": "high" if risk < 2 else "medium" if risk < 5 else "low",
        }

    def _farm_signals(self, person: int, attempt: int) -> dict[str, Any]:
        slot = self._farm_slot[person]
        config = self.config
        host = 10 + (slot + attempt) % config.farm_ips
        bits = _mix(self.seed, person, _RISK)
        return {
            "device_id": self._device(slot % config.farm_devices, 0xF4),
            "ip": f"{FARM_SUBNET}.{host}",
            "account_age_s": self._age_s(person, FARM_AGE_S),
            "network_region": FARM_REGION,
            "channel_risk": "medium" if bits % 10 < 4 else "low",
        }

    def _spoofer_signals(self, person: int) -> dict[str, Any]:
        bits = _mix(self.seed, person, _TRAITS * 1000 + 1)
        region, first, second = ELSEWHERE[bits % len(ELSEWHERE)]
        return {
            "device_id": self._device(person),
            "ip": f"{first}.{second + (bits >> 8) % 8}.{(bits >> 16) & 0xFF}."
            f"{(bits >> 24) % 254 + 1}",
            "account_age_s": self._age_s(person, HONEST_AGE_S),
            "network_region": region,
            "channel_risk": "medium" if (bits >> 32) % 10 < 2 else "low",
        }

    def _ring_signals(self, person: int) -> dict[str, Any]:
        return {
            "device_id": self._device(person),
            "ip": self._home_ip(person),
            "account_age_s": self._age_s(person, HONEST_AGE_S),
            "network_region": self._network_region(person),
            "channel_risk": "low",
        }

    # -- redemptions -------------------------------------------------------------------

    def redemption_plan(self, person: int, rng: random.Random) -> RedemptionPlan | None:
        """The order a voucher winner pays with it, or None if they keep it for later."""
        if self.kinds[person] == Kind.RING:
            return self.fake_order(rng)
        if rng.random() >= self.config.redeem_share:
            return None
        merchant = rng.choices(self.merchants, weights=self._merchant_weights)[0]
        overshoot = int(rng.expovariate(1 / HONEST_OVERSHOOT_MEAN_FEN))
        if rng.random() >= HONEST_CENTS_SHARE:
            overshoot -= overshoot % 100
        family = self.family_of.get(person)
        payer_key = (family, 0xFA) if family is not None else (person, 0)
        return RedemptionPlan(
            merchant_id=merchant.merchant_id,
            amount_fen=THRESHOLD_FEN + overshoot,
            payer_id=f"pay-{_mix(self.seed, payer_key[0], _PAYER * 1000 + payer_key[1]):016x}",
            terminal_id=f"{merchant.merchant_id}-t{rng.randint(1, TERMINALS_PER_MERCHANT)}",
            fake=False,
            refund=rng.random() < HONEST_REFUND_SHARE,
        )

    def fake_order(self, rng: random.Random) -> RedemptionPlan:
        """The ring's order: one of its merchants, just over the threshold, its payers."""
        assert self._ring_merchants, "a ring needs merchants"
        merchant = rng.choice(self._ring_merchants)
        return RedemptionPlan(
            merchant_id=merchant.merchant_id,
            amount_fen=THRESHOLD_FEN + rng.randint(*FAKE_OVERSHOOT_FEN),
            payer_id=rng.choice(self._ring_payers),
            terminal_id=f"{merchant.merchant_id}-t1",
            fake=True,
            refund=rng.random() < RING_REFUND_SHARE,
        )

    def merchants_csv(self, *, campaign_id: str, acquirer_id: str) -> str:
        """The simulated merchants as the admin import reads them."""
        rows = ["merchant_id,name,mcc,region_code,modes,acquirer_id,campaigns"]
        rows += [
            f"{m.merchant_id},餐厅{n:03d},{'5814' if n % 3 == 0 else '5812'},{m.region_code},"
            f"in_store,{acquirer_id},{campaign_id}"
            for n, m in enumerate(self.merchants)
        ]
        return "\n".join(rows) + "\n"
