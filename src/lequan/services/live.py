"""What the platform counts for the big screen, as it answers (``ports/pulse.py``).

Each function here is called after the fact it counts (a claim answered, a
redemption committed, a request answered) and costs a dictionary update in
this process; a ``PulseFlusher`` hands the counts to the shared pulse a few
times a second. The names are this module's alone: ``services/screen.py``
reads them back.

Per-second names:
    ``c|<campaign>|<outcome>``   claims answered (``issued`` or an error code)
    ``r|<campaign>``             redemptions completed (refunds count -1)
    ``a|<app>|<class>``          requests answered, by class: ok, refused, throttled, error
    ``e|<app>|<code>``           an app's error answers by code

Totals, group ``t|<campaign>``: ``out|<outcome>``; per channel
``ch|<channel>|claims|issued|n|sub|ord``; per region ``reg|<code>|n|sub|ord``;
per merchant category ``cat|<category>|n|sub|ord``; and ``n``, ``sub``,
``ord`` (redemptions, subsidy fen, order fen). Group ``m|<campaign>``:
``<merchant>|n|sub|ord``. Per minute, group ``m``: ``<merchant>`` redemptions.

Marks: ``first_claim|<campaign>``, ``first_issue|<campaign>``,
``first_redemption|<campaign>``, ``sold_out|<pool>|<template>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

import structlog

from lequan.data import mcc_category
from lequan.ports.pulse import Pulse, PulseUnavailable
from lequan.rows import MerchantRow, RedemptionRow
from lequan.services.background import Loop

__all__ = [
    "PulseFlusher",
    "Redeemed",
    "category_of",
    "record_answer",
    "record_claims",
    "record_redemptions",
    "record_sold_out",
]

log = structlog.get_logger(__name__)

ISSUED = "issued"


def _at(now: datetime) -> tuple[int, int]:
    """(Unix second, Unix millisecond) of an instant."""
    ms = int(now.timestamp() * 1000)
    return ms // 1000, ms


def record_claims(
    pulse: Pulse, now: datetime, channel_id: str, answered: Iterable[tuple[str, str]]
) -> None:
    """Claims answered in one call of a channel: (campaign id, outcome) each."""
    counts = Counter(answered)
    if not counts:
        return
    at_s, at_ms = _at(now)
    per_second: dict[str, int] = {}
    totals: dict[tuple[str, str], int] = {}
    marks: dict[str, int] = {}
    for (campaign_id, outcome), n in counts.items():
        per_second[f"c|{campaign_id}|{outcome}"] = n
        group = f"t|{campaign_id}"
        totals[(group, f"out|{outcome}")] = n
        key = (group, f"ch|{channel_id}|claims")
        totals[key] = totals.get(key, 0) + n
        marks[f"first_claim|{campaign_id}"] = at_ms
        if outcome == ISSUED:
            totals[(group, f"ch|{channel_id}|issued")] = n
            marks[f"first_issue|{campaign_id}"] = at_ms
    pulse.add(at_s, per_second, totals)
    pulse.mark(marks)


def record_sold_out(pulse: Pulse, now: datetime, pool: str, template_id: str) -> None:
    """The gate said the pool's template has no stock left: its sell-out, as this process
    saw it (the earliest process's instant stands)."""
    pulse.mark({f"sold_out|{pool}|{template_id}": _at(now)[1]})


@dataclass(frozen=True, slots=True)
class Redeemed:
    """A redemption completed (``sign`` 1) or undone by a refund or reversal (-1)."""

    redemption: RedemptionRow
    channel_id: str
    merchant: MerchantRow | None
    sign: int = 1


def record_redemptions(pulse: Pulse, now: datetime, redeemed: Sequence[Redeemed]) -> None:
    if not redeemed:
        return
    at_s, at_ms = _at(now)
    per_second: Counter[str] = Counter()
    totals: Counter[tuple[str, str]] = Counter()
    per_minute: Counter[tuple[str, str]] = Counter()
    marks: dict[str, int] = {}
    for item in redeemed:
        row, sign = item.redemption, item.sign
        campaign = row.campaign_id
        per_second[f"r|{campaign}"] += sign
        group = f"t|{campaign}"
        merchant = item.merchant
        region = merchant.region_code if merchant is not None else "unknown"
        category = category_of(merchant.mcc) if merchant is not None else "unknown"
        for prefix in ("", f"ch|{item.channel_id}|", f"reg|{region}|", f"cat|{category}|"):
            totals[(group, f"{prefix}n")] += sign
            totals[(group, f"{prefix}sub")] += sign * row.discount_fen
            totals[(group, f"{prefix}ord")] += sign * row.order_amount_fen
        merchants = f"m|{campaign}"
        totals[(merchants, f"{row.merchant_id}|n")] += sign
        totals[(merchants, f"{row.merchant_id}|sub")] += sign * row.discount_fen
        totals[(merchants, f"{row.merchant_id}|ord")] += sign * row.order_amount_fen
        if sign > 0:
            per_minute[("m", row.merchant_id)] += 1
            marks[f"first_redemption|{campaign}"] = at_ms
    pulse.add(at_s, per_second, totals, per_minute)
    if marks:
        pulse.mark(marks)


def record_answer(
    pulse: Pulse, now_s: int, app_id: str | None, status: int, code: str | None
) -> None:
    """One request of a signed app answered: its class, and the code of a failing one
    (throttled or 5xx: the caller's own mistakes are not the app's trouble)."""
    if app_id is None:
        return
    if status < 400:
        kind = "ok"
    elif status == 429:
        kind = "throttled"
    elif status >= 500:
        kind = "error"
    else:
        kind = "refused"
    fields = {f"a|{app_id}|{kind}": 1}
    if code is not None and kind in ("throttled", "error"):
        fields[f"e|{app_id}|{code}"] = 1
    pulse.add(now_s, fields)


def category_of(mcc: str) -> str:
    """The merchant category group of an MCC (dining, lodging, ...), or ``other``."""
    return mcc_category().get(mcc, "other")


class PulseFlusher(Loop):
    """Hands this process's counts to the shared pulse every ``interval_s``; a pulse
    that does not answer is logged, and its counts go with the next flush."""

    def __init__(self, pulse: Pulse, *, interval_s: float) -> None:
        self._pulse = pulse
        self._interval_s = interval_s
        self._failing = False
        super().__init__(
            "lequan-pulse",
            self._flush,
            first_pause_s=interval_s,
            retry_pause_s=interval_s,
        )

    def _flush(self) -> float:
        try:
            self._pulse.flush()
        except PulseUnavailable as error:
            if not self._failing:
                log.warning("pulse_unavailable", error_type=str(error))
            self._failing = True
            return self._interval_s * 4
        if self._failing:
            log.info("pulse_back")
        self._failing = False
        return self._interval_s

    def stop(self) -> None:
        super().stop()
        with suppress(PulseUnavailable):
            self._pulse.flush()  # the last counts, before the process goes
