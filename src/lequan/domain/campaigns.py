"""Campaigns: their configuration, rounds, eligibility and lifecycle.

A campaign is configured as a file (YAML), validated here field by field
so that an operator learns which field breaks which rule before anything is
stored. The same models are the domain's view of a campaign afterwards.

Lifecycle, with maker-checker approval (whoever drafts cannot approve)::

    draft ──approve──▶ approved ──activate──▶ live ◀──resume── paused
                          │                    │ ──pause──────▶ │
                          └───────end──────────┴──────end───────┴──▶ ended
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lequan.domain.errors import AuthError, Conflict
from lequan.domain.fair_start import START_WINDOW_INTAKE_S_MAX, START_WINDOW_S_MAX
from lequan.domain.templates import AMOUNT_FEN_MAX, Template, TemplateId, TradeIn
from lequan.domain.trade_in import Category

__all__ = [
    "CampaignConfig",
    "CampaignStatus",
    "Eligibility",
    "Limits",
    "Reason",
    "RoundConfig",
    "RoundPhase",
    "Scope",
    "Validity",
    "eligibility_reasons",
    "lifecycle_transition",
    "region_covers",
    "round_phase",
]

CampaignId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,39}$")]
RoundId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,19}$")]
ChannelId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,31}$")]
RegionCode = Annotated[str, Field(pattern=r"^[1-9][0-9]{5}$")]
Mcc = Annotated[str, Field(pattern=r"^[0-9]{4}$")]
Mode = Literal["online", "in_store"]

STOCK_PER_POOL_MAX = 50_000_000
ROUNDS_MAX = 100
TEMPLATES_MAX = 20
CHANNELS_MAX = 16


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Validity(_Model):
    """How long a voucher may be used: N days from issue, or a fixed window."""

    days_from_issue: Annotated[int, Field(gt=0, le=366, strict=True)] | None = None
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        fixed = self.valid_from is not None or self.valid_until is not None
        if self.days_from_issue is not None and fixed:
            raise ValueError("give either days_from_issue or valid_from/valid_until, not both")
        if self.days_from_issue is None:
            if self.valid_from is None or self.valid_until is None:
                raise ValueError("give days_from_issue, or both valid_from and valid_until")
            if self.valid_from >= self.valid_until:
                raise ValueError("valid_from must be before valid_until")
        return self

    def window(self, issued_at: datetime) -> tuple[datetime, datetime]:
        """The validity window of a voucher issued at ``issued_at``."""
        if self.days_from_issue is not None:
            return issued_at, issued_at + timedelta(days=self.days_from_issue)
        assert self.valid_from is not None
        assert self.valid_until is not None
        return self.valid_from, self.valid_until


class Scope(_Model):
    """Where a voucher may be spent."""

    mcc: tuple[Mcc, ...] = ()  # empty: any category
    enrolled_only: StrictBool = True  # only merchants enrolled in this campaign
    modes: tuple[Mode, ...] = ("online", "in_store")
    # A voucher claimed in Alipay is used when paying with Alipay.
    channel_bound: StrictBool = True
    excluded_order_types: tuple[Annotated[str, Field(max_length=40)], ...] = (
        "gift_card",
        "prepaid_card",
        "group_buy",
    )

    @model_validator(mode="after")
    def _some_mode(self) -> Self:
        if not self.modes:
            raise ValueError("modes must name at least one of online, in_store")
        return self


class Limits(_Model):
    per_person_per_round_per_channel: Annotated[int, Field(ge=1, le=100, strict=True)] = 1
    per_person_per_campaign: Annotated[int, Field(ge=0, le=1000, strict=True)] = (
        0  # 0: no campaign-wide cap
    )


class Eligibility(_Model):
    """Who may claim: by region (empty: nationwide), checked on residence or location."""

    regions: tuple[RegionCode, ...] = ()
    check: Literal["location", "residence", "either"] = "location"


class RoundConfig(_Model):
    id: RoundId
    release_at: AwareDatetime
    ends_at: AwareDatetime
    # stock[channel][template] = vouchers in that pool for that template
    stock: dict[
        ChannelId, dict[TemplateId, Annotated[int, Field(ge=0, le=STOCK_PER_POOL_MAX, strict=True)]]
    ]

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.release_at >= self.ends_at:
            raise ValueError("release_at must be before ends_at")
        return self


class CampaignConfig(_Model):
    """A whole campaign. Field order matters: each cross-field rule is checked on
    the later field, so the error names the field an operator has to change."""

    id: CampaignId
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
    issuer: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
    category: Annotated[str, Field(pattern=r"^[a-z_]{2,30}$")]
    budget_fen: Annotated[int, Field(gt=0, le=AMOUNT_FEN_MAX * 100, strict=True)]
    channels: Annotated[tuple[ChannelId, ...], Field(min_length=1, max_length=CHANNELS_MAX)]
    scope: Scope = Scope()
    templates: Annotated[tuple[Template, ...], Field(min_length=1, max_length=TEMPLATES_MAX)]
    validity: Validity
    limits: Limits = Limits()
    eligibility: Eligibility = Eligibility()
    rounds: Annotated[tuple[RoundConfig, ...], Field(min_length=1, max_length=ROUNDS_MAX)]
    # The fair start (docs/risk.md): the first seconds after each round's release,
    # whose claims are served in an order drawn from a committed seed. 0: off.
    start_window_s: Annotated[int, Field(ge=0, le=START_WINDOW_S_MAX, strict=True)] = 0
    # How long after the window its draw still takes in claims the channels say were
    # pressed inside it (``pressed_at``), before it is served. 0: only those that
    # reach the platform inside the window.
    start_window_intake_s: Annotated[
        int, Field(ge=0, le=START_WINDOW_INTAKE_S_MAX, strict=True)
    ] = 0
    refund_policy: Literal["restore_if_valid", "always_void"] = "restore_if_valid"
    # A trade-in campaign's money per category (optional): each category's stock at its
    # cap must fit in its budget, and the budgets in the campaign's.
    category_budgets_fen: dict[
        Category, Annotated[int, Field(gt=0, le=AMOUNT_FEN_MAX * 100, strict=True)]
    ] = Field(default_factory=dict)

    @field_validator("channels")
    @classmethod
    def _channels_unique(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        _unique("channels", channels)
        return channels

    @field_validator("templates")
    @classmethod
    def _templates_fit(
        cls, templates: tuple[Template, ...], info: ValidationInfo
    ) -> tuple[Template, ...]:
        _unique("template ids", [t.id for t in templates])
        trade_in = [isinstance(t, TradeIn) for t in templates]
        if any(trade_in) and not all(trade_in):
            # A qualification campaign (资格制) issues only against a central lock; a
            # threshold voucher beside it would be issued without one.
            raise ValueError(
                "a trade-in campaign's templates are all of kind trade_in: "
                "put the other templates in a campaign of their own"
            )
        scope = info.data.get("scope")
        if isinstance(scope, Scope):
            for t in templates:
                if t.modes is not None and not set(t.modes) <= set(scope.modes):
                    raise ValueError(f"template {t.id}: modes must be within scope.modes")
        return templates

    @field_validator("rounds")
    @classmethod
    def _rounds_fit(
        cls, rounds: tuple[RoundConfig, ...], info: ValidationInfo
    ) -> tuple[RoundConfig, ...]:
        _unique("round ids", [r.id for r in rounds])
        channels = info.data.get("channels")
        templates = info.data.get("templates")
        template_ids = {t.id for t in templates} if templates is not None else None
        for r in rounds:
            for channel, per_template in r.stock.items():
                if channels is not None and channel not in channels:
                    raise ValueError(
                        f"round {r.id}: stock names channel {channel!r} not in channels"
                    )
                for template_id in per_template:
                    if template_ids is not None and template_id not in template_ids:
                        raise ValueError(
                            f"round {r.id}: stock names template {template_id!r} not in templates"
                        )
        for earlier, later in itertools.pairwise(rounds):
            if later.release_at < earlier.ends_at:
                raise ValueError(f"round {later.id} must not start before round {earlier.id} ends")
        return rounds

    @field_validator("start_window_s")
    @classmethod
    def _window_fits(cls, window_s: int, info: ValidationInfo) -> int:
        if not window_s:
            return window_s
        templates = info.data.get("templates")
        if templates is not None and all(isinstance(t, TradeIn) for t in templates):
            raise ValueError("a trade-in voucher is applied for, never claimed: no start window")
        for r in info.data.get("rounds") or ():
            if r.release_at + timedelta(seconds=window_s) >= r.ends_at:
                raise ValueError(f"round {r.id} must last longer than the start window")
        return window_s

    @field_validator("start_window_intake_s")
    @classmethod
    def _intake_fits(cls, intake_s: int, info: ValidationInfo) -> int:
        if not intake_s:
            return intake_s
        window_s = info.data.get("start_window_s")
        if window_s is None:
            return intake_s  # the window was refused: its error says so
        if not window_s:
            raise ValueError("an intake follows a start window: set start_window_s first")
        for r in info.data.get("rounds") or ():
            if r.release_at + timedelta(seconds=window_s + intake_s) >= r.ends_at:
                raise ValueError(
                    f"round {r.id} must last longer than the start window and its intake"
                )
        return intake_s

    def draw_close(self, release_at: datetime) -> datetime | None:
        """When a round released at ``release_at`` stops taking entries in its draw (the
        window and its intake); None: the campaign has no start window."""
        if not self.start_window_s:
            return None
        return release_at + timedelta(seconds=self.start_window_s + self.start_window_intake_s)

    @field_validator("category_budgets_fen")
    @classmethod
    def _category_budgets_fit(
        cls, budgets: dict[Category, int], info: ValidationInfo
    ) -> dict[Category, int]:
        if not budgets:
            return budgets
        templates = info.data.get("templates")
        rounds = info.data.get("rounds")
        budget_fen = info.data.get("budget_fen")
        if templates is None or rounds is None or budget_fen is None:
            return budgets  # reported on their own fields
        if not all(isinstance(t, TradeIn) for t in templates):
            raise ValueError("only a trade-in campaign has budgets per category")
        face = {t.id: (t.category, t.face_fen) for t in templates if isinstance(t, TradeIn)}
        stock_fen = dict.fromkeys(Category, 0)
        for r in rounds:
            for per_template in r.stock.values():
                for template_id, count in per_template.items():
                    category, face_fen = face[template_id]
                    stock_fen[category] += face_fen * count
        for category, budget in budgets.items():
            if category not in {c for c, _ in face.values()}:
                raise ValueError(f"{category.value}: no template of this category")
            if stock_fen[category] > budget:
                raise ValueError(
                    f"{category.value}: its stock at its cap ({stock_fen[category]} fen) "
                    f"is more than its budget ({budget} fen)"
                )
        if sum(budgets.values()) > budget_fen:
            raise ValueError(
                f"the budgets per category ({sum(budgets.values())} fen) are more than "
                f"the campaign's budget_fen ({budget_fen} fen)"
            )
        return budgets

    @property
    def trade_in(self) -> bool:
        """A qualification campaign (资格制): every template is a trade-in one."""
        return isinstance(self.templates[0], TradeIn)

    def template(self, template_id: str) -> Template | None:
        for t in self.templates:
            if t.id == template_id:
                return t
        return None

    def round(self, round_id: str) -> RoundConfig | None:
        for r in self.rounds:
            if r.id == round_id:
                return r
        return None

    def stock_face_fen(self) -> int:
        """The face value of all stock of all rounds: what the budget must cover to sell out."""
        faces = {t.id: t.face_fen for t in self.templates}
        return sum(
            faces[template_id] * count
            for r in self.rounds
            for per_template in r.stock.values()
            for template_id, count in per_template.items()
        )


def _unique(what: str, values: Sequence[str]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must be unique")


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    LIVE = "live"
    PAUSED = "paused"
    ENDED = "ended"


_LIFECYCLE: dict[tuple[CampaignStatus, str], CampaignStatus] = {
    (CampaignStatus.DRAFT, "approve"): CampaignStatus.APPROVED,
    (CampaignStatus.APPROVED, "activate"): CampaignStatus.LIVE,
    (CampaignStatus.LIVE, "pause"): CampaignStatus.PAUSED,
    (CampaignStatus.PAUSED, "resume"): CampaignStatus.LIVE,
    (CampaignStatus.APPROVED, "end"): CampaignStatus.ENDED,
    (CampaignStatus.LIVE, "end"): CampaignStatus.ENDED,
    (CampaignStatus.PAUSED, "end"): CampaignStatus.ENDED,
}

LIFECYCLE_ACTIONS = frozenset(action for _, action in _LIFECYCLE)


def lifecycle_transition(
    status: CampaignStatus, action: str, *, drafted_by: str, actor: str
) -> CampaignStatus:
    """The campaign's status after ``action`` by ``actor``; maker-checker on approval."""
    assert action in LIFECYCLE_ACTIONS, action
    if action == "approve" and actor == drafted_by and status is CampaignStatus.DRAFT:
        # An authorization refusal, like a role's: no state of the campaign would allow it.
        raise AuthError(
            "maker_cannot_approve", "the operator who drafted a campaign cannot approve it"
        )
    try:
        return _LIFECYCLE[(status, action)]
    except KeyError:
        raise Conflict(
            "campaign_state", f"a campaign that is {status.value} cannot be asked to {action}"
        ) from None


class RoundPhase(enum.StrEnum):
    NOT_STARTED = "not_started"
    OPEN = "open"
    ENDED = "ended"


def round_phase(*, release_at: datetime, ends_at: datetime, now: datetime) -> RoundPhase:
    if now < release_at:
        return RoundPhase.NOT_STARTED
    if now >= ends_at:
        return RoundPhase.ENDED
    return RoundPhase.OPEN


def region_covers(area: str, region: str) -> bool:
    """Whether the GB/T 2260 code ``area`` (province, city or district) contains ``region``."""
    if area.endswith("0000"):
        return region[:2] == area[:2]
    if area.endswith("00"):
        return region[:4] == area[:4]
    return region == area


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a person is not eligible, for the channel to show."""

    code: str
    message: str


def eligibility_reasons(
    eligibility: Eligibility,
    *,
    residence_region: str,
    location_region: str | None,
    blacklisted: bool,
    ended: bool = False,
    extra: Mapping[str, str] | None = None,
) -> list[Reason]:
    """Every reason a person may not claim in a campaign; empty when eligible."""
    reasons: list[Reason] = []
    if blacklisted:
        reasons.append(Reason("blacklisted", "the person is on the platform's blacklist"))
    if ended:
        reasons.append(Reason("campaign_ended", "the campaign has ended"))
    if eligibility.regions:

        def inside(region: str | None) -> bool:
            return region is not None and any(
                region_covers(area, region) for area in eligibility.regions
            )

        areas = ", ".join(eligibility.regions)
        if eligibility.check == "location" and not inside(location_region):
            if location_region is None:
                reasons.append(
                    Reason("location_required", f"the person's location must be inside {areas}")
                )
            else:
                reasons.append(Reason("outside_region", f"the location is not inside {areas}"))
        elif eligibility.check == "residence" and not inside(residence_region):
            reasons.append(Reason("outside_region", f"the residence is not inside {areas}"))
        elif eligibility.check == "either" and not (
            inside(residence_region) or inside(location_region)
        ):
            reasons.append(
                Reason("outside_region", f"neither residence nor location is inside {areas}")
            )
    for code, message in (extra or {}).items():
        reasons.append(Reason(code, message))
    return reasons
