"""What the big screen and the public page are sent: one snapshot, every second.

The screen (``/screen``, an operator's) receives ``ScreenOut`` as Server-Sent
Events from ``GET /v1/screen/stream`` (event ``snapshot``, one a second) and
once from ``GET /v1/screen/snapshot``; the public page (``/public``, anyone's)
fetches ``PublicOut`` from ``GET /v1/public/live``. Every figure is the
platform's, summed over all its processes (``ports/pulse.py``); nothing here
names a person or a voucher, and merchants appear only in the top-N table.

Times are ISO 8601 with their offset; durations are seconds; money is fen.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlertOut",
    "AppHealthOut",
    "BreakdownOut",
    "CampaignLiveOut",
    "LeverageOut",
    "PoolLiveOut",
    "PublicCampaignOut",
    "PublicOut",
    "ScreenOut",
    "SeriesOut",
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class PoolLiveOut(_Out):
    """One template's stock in one pool (a round of a campaign in a channel, or shared)."""

    pool: str = Field(description="campaign:round:channel")
    round_id: str
    channel_id: str = Field(description="The channel the pool is for, or `*` when shared.")
    template_id: str
    template_name: str
    stock_initial: int
    remaining: int | None = Field(description="Stock the gate holds; null when not loaded.")
    issued: int
    sold_out_at: str | None = Field(description="When the last voucher went; null if not yet.")


class RoundOut(_Out):
    round_id: str
    release_at: str
    ends_at: str


class CampaignLiveOut(_Out):
    id: str
    name: str
    status: str = Field(description="draft, approved, live, paused or ended")
    claims_paused: bool = Field(description="Claims refused (the kill switch).")
    redemptions_paused: bool = Field(description="Redemptions refused (its own switch).")
    release_at: str | None = Field(description="The first round's release.")
    sold_out_at: str | None = Field(description="When its last pool sold out.")
    first_redemption_at: str | None
    sold_out_after_s: float | None = Field(description="From release to sell-out.")
    first_redemption_after_s: float | None = Field(
        description="From release to the first voucher spent."
    )
    rounds: list[RoundOut] = Field(description="Each round's release and end, in order.")
    pools: list[PoolLiveOut]


class SeriesOut(_Out):
    """Per-second counts, oldest first: ``values[i]`` is the second ``start_s + i``."""

    start_s: int = Field(description="Unix seconds of the first value.")
    step_s: Literal[1] = 1
    claims: list[int] = Field(description="Claims answered (any outcome) per second.")
    issued: list[int] = Field(description="Vouchers issued per second.")
    redemptions: list[int] = Field(description="Redemptions per second.")


class BreakdownOut(_Out):
    """One row of a breakdown (a region, a channel, a category or a merchant)."""

    key: str = Field(description="Region code, app id, MCC category or merchant id.")
    name: str = Field(description="Its name in Chinese (a merchant's: as registered).")
    name_en: str = Field(description="Its name in English (else the same as `name`).")
    redemptions: int
    subsidy_fen: int
    order_fen: int
    claims: int = Field(0, description="Channels only: claims answered.")
    issued: int = Field(0, description="Channels only: vouchers issued.")
    suspended: bool = Field(False, description="Merchants only: suspended by an operator.")


class LeverageOut(_Out):
    """Purchases driven against subsidy paid (撬动比)."""

    order_fen: int
    subsidy_fen: int
    ratio: float | None = Field(description="order_fen / subsidy_fen; null before any.")


class AppHealthOut(_Out):
    """A channel or acquirer answered with errors in the last minute."""

    app_id: str
    kind: str = Field(description="channel or acquirer")
    requests: int
    errors: int = Field(description="5xx answers, and 503/429 refusals.")
    error_ratio: float
    top_code: str | None = Field(
        description="Its most frequent code among those failures (429 and 5xx)."
    )


class AlertOut(_Out):
    """An alert firing now, evaluated from the same figures (``domain/alerts.py``); the
    Prometheus rules in deploy/prometheus/ watch the same conditions."""

    name: str = Field(description="Stable name, as the Prometheus rule's `alert`.")
    severity: Literal["page", "warn"]
    summary: str
    summary_en: str
    since: str


class ScreenOut(_Out):
    at: str = Field(description="When the snapshot was taken (UTC+8).")
    scope: Literal["city", "national"] = Field(
        description="city: the map is the city's districts; national: the provinces."
    )
    scope_region: str = Field(description="The city's code (e.g. 310000) or 000000.")
    campaigns: list[CampaignLiveOut]
    series: SeriesOut
    outcomes: dict[str, int] = Field(
        description="Claim answers in the last 15 minutes by outcome group: issued, "
        "sold_out, ineligible, throttled, errors, other."
    )
    regions: list[BreakdownOut] = Field(description="Redemptions by district or province.")
    channels: list[BreakdownOut]
    categories: list[BreakdownOut] = Field(description="By merchant category (MCC group).")
    top_merchants: list[BreakdownOut] = Field(description="At most 10, by redemptions.")
    leverage: LeverageOut
    apps_erroring: list[AppHealthOut]
    alerts: list[AlertOut]


class PublicCampaignOut(_Out):
    id: str
    name: str
    status: str
    release_at: str | None
    sold_out_at: str | None
    first_redemption_at: str | None
    sold_out_after_s: float | None
    first_redemption_after_s: float | None
    rounds: list[RoundOut]
    pools: list[PoolLiveOut]


class PublicOut(_Out):
    at: str
    campaigns: list[PublicCampaignOut]
