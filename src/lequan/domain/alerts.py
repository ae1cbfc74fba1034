"""The big screen's alerts: which conditions hold now, from the figures of the last
minute. Pure: the screen service reads the figures and remembers since when each
alert fires. The Prometheus rules shipped in deploy/prometheus/ watch the same
conditions from the metrics, under the same names, for the pager.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["AlertLimits", "AppMinute", "Firing", "Readings", "evaluate", "spiking"]

Severity = Literal["page", "warn"]


@dataclass(frozen=True, slots=True)
class AlertLimits:
    error_ratio: float = 0.01  # 5xx answers over all answers, in the last minute
    errors_min: int = 10  # and at least this many: one error in a quiet minute is noise
    app_error_ratio: float = 0.05  # one channel's or acquirer's
    app_requests_min: int = 20
    sold_out_early_s: float = 30.0  # a pool gone this soon after release (the Prometheus rule's)
    outbox_backlog_max: int = 10_000  # events waiting for central


@dataclass(frozen=True, slots=True)
class AppMinute:
    app_id: str
    requests: int
    errors: int


@dataclass(frozen=True, slots=True)
class Readings:
    """The figures of the last minute, and what is true now."""

    answers: int  # requests answered to signed apps
    errors: int  # of them 5xx
    gate_unavailable: int  # claims answered gate_unavailable
    store_unavailable: int
    apps: Sequence[AppMinute]
    sold_out_after_s: Mapping[str, float]  # pool/template label -> seconds after release
    merchants_spiking: Sequence[str]  # merchant names
    outbox_pending: int | None  # None: no central, or not read
    outbox_growing: bool


@dataclass(frozen=True, slots=True)
class Firing:
    name: str
    severity: Severity
    summary: str
    summary_en: str


def evaluate(readings: Readings, limits: AlertLimits) -> list[Firing]:
    """The alerts that hold for these readings, most severe first."""
    firing: list[Firing] = []
    r = readings
    if r.errors >= limits.errors_min and r.errors > limits.error_ratio * max(r.answers, 1):
        share = r.errors / max(r.answers, 1)
        firing.append(
            Firing(
                "LequanHttp5xx",
                "page",
                f"5xx 占比 {share:.1%}（{r.errors}/{r.answers}，近 1 分钟）",
                f"5xx share {share:.1%} ({r.errors}/{r.answers}, last minute)",
            )
        )
    if r.gate_unavailable:
        firing.append(
            Firing(
                "LequanGateUnavailable",
                "page",
                f"领券闸门不可用：{r.gate_unavailable} 次拒绝",
                f"Claim gate unavailable: {r.gate_unavailable} refusals",
            )
        )
    if r.store_unavailable:
        firing.append(
            Firing(
                "LequanUnavailableAnswers",
                "page",
                f"数据库不可用：{r.store_unavailable} 次拒绝",
                f"Store unavailable: {r.store_unavailable} refusals",
            )
        )
    for app in r.apps:
        if app.requests >= limits.app_requests_min and (
            app.errors > limits.app_error_ratio * app.requests
        ):
            firing.append(
                Firing(
                    f"LequanAppErrors:{app.app_id}",
                    "page",
                    f"{app.app_id} 错误 {app.errors}/{app.requests}",
                    f"{app.app_id} errors {app.errors}/{app.requests}",
                )
            )
    for label, after_s in sorted(r.sold_out_after_s.items()):
        if after_s < limits.sold_out_early_s:
            firing.append(
                Firing(
                    f"LequanPoolSoldOutEarly:{label}",
                    "warn",
                    f"{label} 开抢 {after_s:.1f} 秒即售罄",
                    f"{label} sold out {after_s:.1f} s after release",
                )
            )
    if r.merchants_spiking:
        names = "、".join(r.merchants_spiking[:3])
        firing.append(
            Firing(
                "LequanMerchantSpiking",
                "warn",
                f"商户核销异常激增：{names}",
                f"Merchant redemptions far above baseline: {', '.join(r.merchants_spiking[:3])}",
            )
        )
    if (
        r.outbox_pending is not None
        and r.outbox_growing
        and r.outbox_pending > limits.outbox_backlog_max
    ):
        firing.append(
            Firing(
                "LequanOutboxBacklogGrowing",
                "warn",
                f"待同步至全国平台的事件积压 {r.outbox_pending} 条且仍在增长",
                f"Outbox backlog {r.outbox_pending} events and growing",
            )
        )
    firing.sort(key=lambda f: f.severity != "page")
    return firing


def spiking(
    last_minute: Mapping[str, int],
    before: Sequence[Mapping[str, int]],
    *,
    ratio: float,
    floor: int,
    baseline_minutes_min: int = 5,
) -> list[str]:
    """Merchants whose redemptions in the last whole minute are at least ``ratio`` times
    their mean over the minutes ``before`` (a merchant new to them has mean 0), and at
    least ``floor``; the biggest first. Until the platform has redeemed in
    ``baseline_minutes_min`` of the minutes before, there is no baseline and no spike:
    the first minutes of a release are everyone's spike."""
    if sum(1 for minute in before if minute) < baseline_minutes_min:
        return []
    minutes = max(len(before), 1)
    found: list[tuple[int, str]] = []
    for merchant, count in last_minute.items():
        if count < floor:
            continue
        mean = sum(minute.get(merchant, 0) for minute in before) / minutes
        if count >= ratio * mean:
            found.append((count, merchant))
    return [merchant for _count, merchant in sorted(found, reverse=True)]
