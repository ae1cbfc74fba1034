"""The big screen's and the public page's snapshot, built from the pulse and the store.

One ``Screen`` per process builds at most one snapshot per
``screen_interval_s``, whoever asks (every event stream of the process
shares it), from:

- the pulse (``services/live.py`` names its figures): per-second claims and
  redemptions, totals by region, channel, category and merchant, marks;
- the store: the campaigns (every few seconds), their stock as committed,
  merchants' and apps' names (cached, bounded);
- the gate: the stock left now.

The shape is ``http/screen_schemas.py``'s; the alerts are ``domain/alerts.py``'s.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog

from lequan.data import CATEGORY_NAMES, region_names
from lequan.domain.alerts import AlertLimits, AppMinute, Readings, evaluate, spiking
from lequan.domain.campaigns import CampaignStatus
from lequan.domain.error_codes import spec_of
from lequan.domain.templates import Template, ThresholdDiscount
from lequan.ports import StoreError
from lequan.ports.pulse import SECONDS_KEPT, PulseUnavailable
from lequan.rows import CampaignRow
from lequan.services import relay
from lequan.services.campaigns import pool_key
from lequan.services.runtime import Runtime

__all__ = ["SERIES_S", "TOP_MERCHANTS", "Screen", "outcome_group"]

log = structlog.get_logger(__name__)

CST = timezone(timedelta(hours=8))
SERIES_S = 900  # the screen's fifteen minutes
assert SERIES_S < SECONDS_KEPT
TOP_MERCHANTS = 10
CAMPAIGNS_SHOWN = 8
# Slower figures: the merchants' totals, the spikes, the outbox.
SLOW_EVERY_S = 5.0
# Seconds re-read every snapshot: a process's counts reach the pulse a flush later.
RECENT_S = 5
# Names of merchants and apps kept in memory.
NAMES_MAX = 10_000
SHOWN = (CampaignStatus.APPROVED, CampaignStatus.LIVE, CampaignStatus.PAUSED, CampaignStatus.ENDED)
OUTCOME_GROUPS = ("issued", "sold_out", "ineligible", "throttled", "errors", "other")


def outcome_group(outcome: str) -> str:
    """The screen's group of a claim's outcome (``issued`` or an error code)."""
    if outcome in ("issued", "sold_out"):
        return outcome
    spec = spec_of(outcome)
    status = spec.status if spec is not None else None
    if status == 429:
        return "throttled"
    if status is not None and status >= 500:
        return "errors"
    if status in (403, 409, 422) and outcome not in ("campaign_not_live", "round_not_open"):
        return "ineligible"
    return "other"


def _iso(at_ms: int | None) -> str | None:
    if at_ms is None:
        return None
    return datetime.fromtimestamp(at_ms / 1000, CST).isoformat(timespec="milliseconds")


@dataclass
class _Campaigns:
    rows: list[CampaignRow] = field(default_factory=list)
    # campaign id -> [(round, channel, template, initial)]
    initial: dict[str, list[tuple[str, str, str, int]]] = field(default_factory=dict)
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # template names


class _Names:
    """Names by id, read once and kept (bounded, oldest forgotten first)."""

    def __init__(self) -> None:
        self._names: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def get(self, key: str) -> tuple[str, str] | None:
        return self._names.get(key)

    def put(self, key: str, value: tuple[str, str]) -> None:
        self._names[key] = value
        if len(self._names) > NAMES_MAX:
            self._names.popitem(last=False)


class Screen:
    """The snapshot builder of one process."""

    def __init__(self, rt: Runtime, *, limits: AlertLimits | None = None) -> None:
        self._rt = rt
        self._limits = limits or AlertLimits()
        self._lock = threading.Lock()
        self._built_at = 0.0
        self._latest: dict[str, Any] | None = None
        self._latest_json = b""
        self._seconds: dict[int, dict[str, int]] = {}
        self._read_until = 0  # the last second read
        self._campaigns = _Campaigns()
        self._slow_at = 0.0
        self._merchant_totals: dict[str, dict[str, int]] = {}
        self._spiking: list[str] = []
        self._outbox: deque[tuple[float, int]] = deque(maxlen=32)
        self._alerts_since: dict[str, str] = {}
        self._merchants = _Names()
        self._apps: dict[str, tuple[str, str]] = {}  # app id -> (kind, name)
        rt.campaign_listeners.append(lambda _campaign_id: self._forget())
        rt.merchant_listeners.append(self._forget)

    def _forget(self) -> None:
        """A campaign or a merchant changed in this process: the next ask builds anew."""
        self._latest = None

    def latest(self) -> dict[str, Any]:
        """The snapshot, built now unless one younger than most of an interval exists."""
        return self._fresh()[0]

    def latest_json(self) -> bytes:
        """The snapshot as JSON, encoded once for every stream of the process."""
        return self._fresh()[1]

    def _fresh(self) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            fresh_s = self._rt.settings.screen_interval_s * 0.8
            if self._latest is None or time.monotonic() - self._built_at >= fresh_s:
                self._latest = self._build()
                self._latest_json = json.dumps(
                    self._latest, ensure_ascii=False, separators=(",", ":")
                ).encode()
                self._built_at = time.monotonic()
            return self._latest, self._latest_json

    def public(self) -> dict[str, Any]:
        """What anyone may see: the campaigns, their stock and their milestones."""
        snapshot = self.latest()
        keep = (
            "id",
            "name",
            "status",
            "release_at",
            "sold_out_at",
            "first_redemption_at",
            "sold_out_after_s",
            "first_redemption_after_s",
            "rounds",
            "pools",
        )
        return {
            "at": snapshot["at"],
            "campaigns": [
                {key: campaign[key] for key in keep}
                for campaign in snapshot["campaigns"]
                if campaign["status"] != CampaignStatus.APPROVED.value or campaign["release_at"]
            ],
        }

    # -- building ---------------------------------------------------------------------

    def _build(self) -> dict[str, Any]:
        rt = self._rt
        now = rt.clock.now()
        now_s = int(now.timestamp())
        slow = time.monotonic() - self._slow_at >= SLOW_EVERY_S
        self._read_campaigns()  # a switch pulled in any process shows at the next snapshot
        rows = self._campaigns.rows
        try:
            self._read_seconds(now_s)
            totals = rt.pulse.totals([f"t|{row.id}" for row in rows])
            marks = rt.pulse.marks(self._mark_names(rows))
            if slow:
                self._read_slow(now_s, rows)
        except PulseUnavailable as error:
            log.warning("screen_pulse_unavailable", error_type=str(error))
            totals, marks = {}, {}
        campaigns = [self._campaign(row, marks, now) for row in rows]
        window = [self._seconds.get(s, {}) for s in range(now_s - SERIES_S + 1, now_s + 1)]
        snapshot = {
            "at": now.astimezone(CST).isoformat(timespec="seconds"),
            **self._scope(totals),
            "campaigns": campaigns,
            "series": _series(now_s - SERIES_S + 1, window),
            "outcomes": _outcomes(window),
            "regions": self._regions(totals),
            "channels": self._channels(totals),
            "categories": _categories(totals),
            "top_merchants": self._top_merchants(),
            "leverage": _leverage(totals),
            "apps_erroring": self._apps_erroring(window[-60:]),
        }
        snapshot["alerts"] = self._alerts(snapshot, window[-60:], now)
        return snapshot

    def _read_campaigns(self) -> None:
        try:
            with self._rt.store.unit_of_work(readonly=True) as uow:
                rows = uow.campaigns.list_campaigns(statuses=SHOWN)
                rows.sort(key=lambda row: _release_of(row) or _NEVER, reverse=True)
                rows = rows[:CAMPAIGNS_SHOWN]
                initial = {row.id: uow.campaigns.stock_initial(row.id) for row in rows}
        except StoreError as error:
            log.warning("screen_store_unavailable", error_type=type(error).__name__)
            return
        self._campaigns = _Campaigns(
            rows=rows,
            initial=initial,
            names={row.id: {t.id: _template_name(t) for t in row.config.templates} for row in rows},
        )

    def _read_seconds(self, now_s: int) -> None:
        """The window's seconds: all of them the first time, then those since the last
        read and the few before it that late flushes may still change."""
        start = now_s - SERIES_S + 1
        first = max(start, min(self._read_until, now_s) - RECENT_S)
        fresh = self._rt.pulse.seconds(first, now_s + 1)
        for at_s in [s for s in self._seconds if s < start or s >= first]:
            del self._seconds[at_s]
        self._seconds.update(fresh)
        self._read_until = now_s

    def _read_slow(self, now_s: int, rows: Sequence[CampaignRow]) -> None:
        rt = self._rt
        self._slow_at = time.monotonic()
        self._merchant_totals = rt.pulse.totals([f"m|{row.id}" for row in rows])
        minute = now_s // 60
        minutes = rt.pulse.minutes("m", minute - 31, minute)
        before = [minutes.get(m, {}) for m in range(minute - 31, minute - 1)]
        ids = spiking(
            minutes.get(minute - 1, {}),
            before,
            ratio=rt.settings.merchant_spike_ratio,
            floor=rt.settings.merchant_spike_floor,
        )
        self._spiking = [self._merchant_name(merchant_id)[0] for merchant_id in ids]
        if rt.central is not None:
            with suppress(StoreError):
                self._outbox.append((time.monotonic(), relay.backlog(rt).pending))

    def _mark_names(self, rows: Sequence[CampaignRow]) -> list[str]:
        names: list[str] = []
        for row in rows:
            names += [f"first_issue|{row.id}", f"first_redemption|{row.id}"]
            for round_id, channel_id, template_id, _n in self._campaigns.initial.get(row.id, []):
                names.append(f"sold_out|{pool_key(row.id, round_id, channel_id)}|{template_id}")
        return names

    # -- parts ------------------------------------------------------------------------

    def _campaign(
        self, row: CampaignRow, marks: Mapping[str, int], now: datetime
    ) -> dict[str, Any]:
        initial = sorted(
            self._campaigns.initial.get(row.id, []),
            key=lambda pool: (row.rounds.get(pool[0], (_NEVER,))[0], pool[1], pool[2]),
        )
        try:
            with self._rt.store.unit_of_work(readonly=True) as uow:
                issued = uow.campaigns.stock_issued(row.id)
        except StoreError:
            issued = {}
        names = self._campaigns.names.get(row.id, {})
        pools = []
        sold_out_ms: list[int | None] = []
        late_marks: dict[str, int] = {}
        for round_id, channel_id, template_id, count in initial:
            pool = pool_key(row.id, round_id, channel_id)
            try:
                remaining = self._rt.gate.remaining(pool, template_id)
            except Exception:  # a gate that does not answer: the store's figure stands
                remaining = None
            given = issued.get((round_id, channel_id, template_id), 0)
            mark_name = f"sold_out|{pool}|{template_id}"
            at_ms = marks.get(mark_name)
            if at_ms is None and given >= count:
                # Its last voucher went with no one refused since: seen sold out now.
                at_ms = int(now.timestamp() * 1000)
                late_marks[mark_name] = at_ms
            sold_out_ms.append(at_ms)
            pools.append(
                {
                    "pool": pool,
                    "round_id": round_id,
                    "channel_id": channel_id,
                    "template_id": template_id,
                    "template_name": names.get(template_id, template_id),
                    "stock_initial": count,
                    "remaining": remaining,
                    "issued": given,
                    "sold_out_at": _iso(at_ms),
                }
            )
        if late_marks:
            self._rt.pulse.mark(late_marks)
        release = _release_of(row)
        release_ms = int(release.timestamp() * 1000) if release is not None else None
        all_gone = bool(sold_out_ms) and all(ms is not None for ms in sold_out_ms)
        sold_out_at = max(ms for ms in sold_out_ms if ms is not None) if all_gone else None
        first_redemption = marks.get(f"first_redemption|{row.id}")
        return {
            "id": row.id,
            "name": row.config.name,
            "status": row.status.value,
            "claims_paused": row.status is CampaignStatus.PAUSED,
            "redemptions_paused": row.redemptions_paused,
            "release_at": _iso(release_ms),
            "sold_out_at": _iso(sold_out_at),
            "first_redemption_at": _iso(first_redemption),
            "sold_out_after_s": _after(release_ms, sold_out_at),
            "first_redemption_after_s": _after(release_ms, first_redemption),
            "rounds": [
                {
                    "round_id": round_id,
                    "release_at": release_at.astimezone(CST).isoformat(timespec="seconds"),
                    "ends_at": ends_at.astimezone(CST).isoformat(timespec="seconds"),
                }
                for round_id, (release_at, ends_at) in sorted(
                    row.rounds.items(), key=lambda kv: kv[1][0]
                )
            ],
            "pools": pools,
        }

    def _scope(self, totals: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
        codes = {
            field.split("|")[1]
            for fields in totals.values()
            for field in fields
            if field.startswith("reg|") and field.split("|")[1].isdigit()
        }
        home = self._rt.settings.province_code or "310000"
        if all(code[:2] == home[:2] for code in codes) and home[:2] == "31":
            return {"scope": "city", "scope_region": "310000"}
        return {"scope": "national", "scope_region": "000000"}

    def _regions(self, totals: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
        national = self._scope(totals)["scope"] == "national"
        rows = _breakdown(totals, "reg")
        if national:  # districts fold into their province
            folded: dict[str, dict[str, int]] = {}
            for code, figures in rows.items():
                key = code[:2] + "0000" if code.isdigit() else code
                into = folded.setdefault(key, {"n": 0, "sub": 0, "ord": 0})
                for name, value in figures.items():
                    into[name] = into.get(name, 0) + value
            rows = folded
        names = region_names()
        return [
            _row(code, *names.get(code, (code, code)), figures)
            for code, figures in sorted(rows.items(), key=lambda kv: -kv[1].get("n", 0))
        ]

    def _channels(self, totals: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
        rows = _breakdown(totals, "ch")
        out = []
        for app_id, figures in sorted(rows.items(), key=lambda kv: -kv[1].get("claims", 0)):
            _kind, name = self._app(app_id)
            row = _row(app_id, name, name, figures)
            row["claims"] = figures.get("claims", 0)
            row["issued"] = figures.get("issued", 0)
            out.append(row)
        return out

    def _top_merchants(self) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, int]] = {}
        for fields in self._merchant_totals.values():
            for name, value in fields.items():
                merchant_id, _, figure = name.rpartition("|")
                into = merged.setdefault(merchant_id, {})
                into[figure] = into.get(figure, 0) + value
        top = [
            (merchant_id, figures)
            for merchant_id, figures in sorted(merged.items(), key=lambda kv: -kv[1].get("n", 0))
            if figures.get("n", 0) > 0
        ][:TOP_MERCHANTS]
        try:  # read now, not cached: a suspension from the screen shows at the next snapshot
            with self._rt.store.unit_of_work(readonly=True) as uow:
                merchants = {m: uow.people.get_merchant(m) for m, _figures in top}
        except StoreError:
            merchants = {}
        rows = []
        for merchant_id, figures in top:
            merchant = merchants.get(merchant_id)
            name = merchant.name if merchant is not None else merchant_id
            row = _row(merchant_id, name, name, figures)
            row["suspended"] = merchant is not None and merchant.suspension is not None
            rows.append(row)
        return rows

    def _merchant_name(self, merchant_id: str) -> tuple[str, str]:
        known = self._merchants.get(merchant_id)
        if known is None:
            try:
                with self._rt.store.unit_of_work(readonly=True) as uow:
                    row = uow.people.get_merchant(merchant_id)
            except StoreError:
                return merchant_id, merchant_id
            known = (row.name, row.name) if row is not None else (merchant_id, merchant_id)
            self._merchants.put(merchant_id, known)
        return known

    def _app(self, app_id: str) -> tuple[str, str]:
        known = self._apps.get(app_id)
        if known is None:
            try:
                with self._rt.store.unit_of_work(readonly=True) as uow:
                    row = uow.people.get_app(app_id)
            except StoreError:
                return "unknown", app_id
            known = (row.kind, row.name) if row is not None else ("unknown", app_id)
            if len(self._apps) < NAMES_MAX:
                self._apps[app_id] = known
        return known

    def _apps_erroring(self, minute: Sequence[Mapping[str, int]]) -> list[dict[str, Any]]:
        apps: dict[str, dict[str, int]] = {}
        codes: dict[str, dict[str, int]] = {}
        for second in minute:
            for name, count in second.items():
                if name.startswith("a|"):
                    _, app_id, kind = name.split("|", 2)
                    into = apps.setdefault(app_id, {})
                    into[kind] = into.get(kind, 0) + count
                elif name.startswith("e|"):
                    _, app_id, code = name.split("|", 2)
                    by_code = codes.setdefault(app_id, {})
                    by_code[code] = by_code.get(code, 0) + count
        out = []
        for app_id, kinds in apps.items():
            requests = sum(kinds.values())
            errors = kinds.get("error", 0) + kinds.get("throttled", 0)
            if not errors:
                continue
            by_code = codes.get(app_id, {})
            out.append(
                {
                    "app_id": app_id,
                    "kind": self._app(app_id)[0],
                    "requests": requests,
                    "errors": errors,
                    "error_ratio": round(errors / requests, 4),
                    "top_code": max(by_code, key=lambda c: by_code[c]) if by_code else None,
                }
            )
        out.sort(key=lambda app: -(errors_of(app)))
        return out

    def _alerts(
        self, snapshot: Mapping[str, Any], minute: Sequence[Mapping[str, int]], now: datetime
    ) -> list[dict[str, Any]]:
        answers = errors = gate_down = store_down = 0
        per_app: dict[str, list[int]] = {}
        for second in minute:
            for name, count in second.items():
                if name.startswith("a|"):
                    _, app_id, kind = name.split("|", 2)
                    answers += count
                    figures = per_app.setdefault(app_id, [0, 0])
                    figures[0] += count
                    if kind == "error":
                        errors += count
                        figures[1] += count
                elif name.endswith("|gate_unavailable") and name.startswith("c|"):
                    gate_down += count
                elif name.endswith("|store_unavailable") and name.startswith("c|"):
                    store_down += count
        sold_out_after: dict[str, float] = {}
        for campaign in snapshot["campaigns"]:
            if campaign["status"] not in ("live", "paused") or campaign["release_at"] is None:
                continue
            release = datetime.fromisoformat(campaign["release_at"])
            for pool in campaign["pools"]:
                if pool["sold_out_at"] is not None:
                    gone = datetime.fromisoformat(pool["sold_out_at"])
                    label = f"{pool['pool']}/{pool['template_id']}"
                    sold_out_after[label] = max(0.0, (gone - release).total_seconds())
        pending = self._outbox[-1][1] if self._outbox else None
        growing = len(self._outbox) >= 2 and self._outbox[-1][1] > self._outbox[0][1]
        firing = evaluate(
            Readings(
                answers=answers,
                errors=errors,
                gate_unavailable=gate_down,
                store_unavailable=store_down,
                apps=[AppMinute(a, n, e) for a, (n, e) in per_app.items()],
                sold_out_after_s=sold_out_after,
                merchants_spiking=self._spiking,
                outbox_pending=pending,
                outbox_growing=growing,
            ),
            self._limits,
        )
        stamp = now.astimezone(CST).isoformat(timespec="seconds")
        since = {f.name: self._alerts_since.get(f.name, stamp) for f in firing}
        self._alerts_since = since
        return [
            {
                "name": f.name,
                "severity": f.severity,
                "summary": f.summary,
                "summary_en": f.summary_en,
                "since": since[f.name],
            }
            for f in firing
        ]

    def figures(self) -> tuple[int, dict[str, float]]:
        """For the metrics: merchants spiking now, and each sold-out pool's seconds from
        release (labels: campaign, round, channel, template)."""
        snapshot = self.latest()
        after: dict[str, float] = {}
        for campaign in snapshot["campaigns"]:
            if campaign["release_at"] is None:
                continue
            release = datetime.fromisoformat(campaign["release_at"])
            for pool in campaign["pools"]:
                if pool["sold_out_at"] is not None:
                    gone = datetime.fromisoformat(pool["sold_out_at"])
                    after[f"{pool['pool']}:{pool['template_id']}"] = max(
                        0.0, (gone - release).total_seconds()
                    )
        return len(self._spiking), after


_NEVER = datetime.min.replace(tzinfo=CST)


def errors_of(app: Mapping[str, Any]) -> float:
    return float(app["error_ratio"])


def _template_name(template: Template) -> str:
    """How a person knows the voucher: 满 50 减 20, or the template's id."""
    if isinstance(template, ThresholdDiscount):
        return f"满{template.threshold_fen / 100:g}减{template.discount_fen / 100:g}"
    return template.id


def _release_of(row: CampaignRow) -> datetime | None:
    if not row.rounds:
        return None
    return min(release for release, _ends in row.rounds.values())


def _after(start_ms: int | None, end_ms: int | None) -> float | None:
    if start_ms is None or end_ms is None:
        return None
    return round(max(0, end_ms - start_ms) / 1000, 3)


def _series(start_s: int, window: Sequence[Mapping[str, int]]) -> dict[str, Any]:
    claims, issued, redemptions = [], [], []
    for second in window:
        c = i = r = 0
        for name, count in second.items():
            if name.startswith("c|"):
                c += count
                if name.endswith("|issued"):
                    i += count
            elif name.startswith("r|"):
                r += count
        claims.append(c)
        issued.append(i)
        redemptions.append(max(r, 0))
    return {
        "start_s": start_s,
        "step_s": 1,
        "claims": claims,
        "issued": issued,
        "redemptions": redemptions,
    }


def _outcomes(window: Sequence[Mapping[str, int]]) -> dict[str, int]:
    groups = dict.fromkeys(OUTCOME_GROUPS, 0)
    for second in window:
        for name, count in second.items():
            if name.startswith("c|"):
                groups[outcome_group(name.rsplit("|", 1)[1])] += count
    return groups


def _breakdown(totals: Mapping[str, Mapping[str, int]], prefix: str) -> dict[str, dict[str, int]]:
    """``<prefix>|<key>|<figure>`` fields of every campaign, summed by key."""
    rows: dict[str, dict[str, int]] = {}
    for fields in totals.values():
        for name, value in fields.items():
            if name.startswith(prefix + "|"):
                _, key, figure = name.split("|", 2)
                into = rows.setdefault(key, {})
                into[figure] = into.get(figure, 0) + value
    return rows


def _categories(totals: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    rows = _breakdown(totals, "cat")
    return [
        _row(key, *CATEGORY_NAMES.get(key, (key, key)), figures)
        for key, figures in sorted(rows.items(), key=lambda kv: -kv[1].get("n", 0))
    ]


def _leverage(totals: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    order = sum(fields.get("ord", 0) for fields in totals.values())
    subsidy = sum(fields.get("sub", 0) for fields in totals.values())
    return {
        "order_fen": order,
        "subsidy_fen": subsidy,
        "ratio": round(order / subsidy, 2) if subsidy > 0 else None,
    }


def _row(key: str, name: str, name_en: str, figures: Mapping[str, int]) -> dict[str, Any]:
    return {
        "key": key,
        "name": name,
        "name_en": name_en,
        "redemptions": figures.get("n", 0),
        "subsidy_fen": figures.get("sub", 0),
        "order_fen": figures.get("ord", 0),
        "claims": 0,
        "issued": 0,
        "suspended": False,
    }
