"""Daily reconciliation with central: does central hold what this province told it?

For one calendar day (China Standard Time, UTC+8, as the campaigns run) the
province's facts are the trade-in events it wrote to its outbox that day,
each counted as central counts it on receipt::

    voucher.issued                     locked    +1
    redemption.completed (a product)   consumed  +1  price;  subsidy +1  discount
    redemption.refunded / .reversed    consumed  −1  price;  subsidy −1  discount;
                                       released  +1 when the voucher is void after
    voucher.expired                    released  +1

and central's are what it recorded of this province that day
(``CentralPlatform.day``). Per category and fact the counts and sums must
agree; per voucher touched that day, the province's view now (from the
store: its lock, its state, its subsidy) must be central's. Every
disagreement is listed with its voucher.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from lequan.domain.errors import Conflict, Unavailable
from lequan.ports.central import CentralUnavailable
from lequan.rows import OutboxRow
from lequan.services.runtime import Runtime

__all__ = ["FACTS", "Mismatch", "Reconciliation", "day_window", "reconcile"]

CST = timezone(timedelta(hours=8), "CST")
FACTS = ("locked", "consumed", "subsidy", "released")
# Events read from the outbox per query, and vouchers compared per day at most.
_PAGE = 1000
VOUCHERS_MAX = 1_000_000


@dataclass(frozen=True, slots=True)
class Mismatch:
    category: str
    fact: str  # one of FACTS, or "voucher"
    province: str
    central: str
    voucher_id: str | None = None


@dataclass
class Reconciliation:
    day: date
    province: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    central: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    vouchers: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def as_json(self) -> dict[str, Any]:
        categories = sorted(set(self.province) | set(self.central))
        return {
            "day": self.day.isoformat(),
            "ok": self.ok,
            "vouchers_compared": self.vouchers,
            "categories": [
                {
                    "category": category,
                    **{
                        fact: {
                            "province": list(self.province.get(category, {}).get(fact, (0, 0))),
                            "central": list(self.central.get(category, {}).get(fact, (0, 0))),
                        }
                        for fact in FACTS
                    },
                }
                for category in categories
            ],
            "mismatches": [
                {
                    "category": m.category,
                    "fact": m.fact,
                    "voucher_id": m.voucher_id,
                    "province": m.province,
                    "central": m.central,
                }
                for m in self.mismatches
            ],
        }

    def csv(self) -> str:
        """Every mismatch, one per line, for the operators' spreadsheet."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["day", "category", "fact", "voucher_id", "province", "central"])
        for m in self.mismatches:
            writer.writerow(
                [
                    self.day.isoformat(),
                    m.category,
                    m.fact,
                    m.voucher_id or "",
                    m.province,
                    m.central,
                ]
            )
        return out.getvalue()


def day_window(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a CST calendar day, in UTC."""
    start = datetime.combine(day, time(0), tzinfo=CST).astimezone(UTC)
    return start, start + timedelta(days=1)


def _events(rt: Runtime, day: date) -> Iterator[OutboxRow]:
    start, end = day_window(day)
    after: str | None = None
    while True:
        with rt.store.unit_of_work(readonly=True) as uow:
            page = uow.outbox.events_between(start, end, after_id=after, limit=_PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].id


def _category(payload: Mapping[str, Any]) -> str | None:
    category = payload.get("category")
    product = payload.get("product")
    if category is None and isinstance(product, Mapping):
        category = product.get("category")
    return category if isinstance(category, str) else None


def _count(
    facts: dict[str, dict[str, list[int]]], category: str, fact: str, n: int, fen: int
) -> None:
    entry = facts[category].setdefault(fact, [0, 0])
    entry[0] += n
    entry[1] += fen


def province_facts(
    rt: Runtime, day: date
) -> tuple[dict[str, dict[str, tuple[int, int]]], set[str]]:
    """What this province told central of ``day``, counted as central counts it; and the
    trade-in vouchers those events touched."""
    facts: dict[str, dict[str, list[int]]] = defaultdict(dict)
    vouchers: set[str] = set()
    for row in _events(rt, day):
        payload = json.loads(row.payload_json)
        category = _category(payload)
        if category is None:
            continue  # a consumption voucher's event: central keeps it, it counts no fact
        if row.voucher_id is not None:
            vouchers.add(row.voucher_id)
        product = payload.get("product") if isinstance(payload.get("product"), Mapping) else {}
        price_fen = int(product.get("price_fen", payload.get("price_fen", 0)) or 0)
        subsidy_fen = int(payload.get("discount_fen", 0) or 0)
        if row.topic == "voucher.issued":
            _count(facts, category, "locked", 1, 0)
        elif row.topic == "redemption.completed":
            _count(facts, category, "consumed", 1, price_fen)
            _count(facts, category, "subsidy", 1, subsidy_fen)
        elif row.topic in ("redemption.refunded", "redemption.reversed"):
            _count(facts, category, "consumed", -1, -price_fen)
            _count(facts, category, "subsidy", -1, -subsidy_fen)
            if payload.get("voucher_state") == "void":
                _count(facts, category, "released", 1, 0)
        elif row.topic == "voucher.expired":
            _count(facts, category, "released", 1, 0)
        if len(vouchers) > VOUCHERS_MAX:
            raise Unavailable("reconciliation_too_large", "too many vouchers in one day")
    return {c: {f: (v[0], v[1]) for f, v in by.items()} for c, by in facts.items()}, vouchers


def _voucher_view(rt: Runtime, voucher_id: str) -> tuple[str, str, int] | None:
    """(category, state as central names it, subsidy_fen) of one trade-in voucher now."""
    with rt.store.unit_of_work(readonly=True) as uow:
        lock = uow.qualifications.lock_of_voucher(voucher_id)
        voucher = uow.vouchers.get_voucher(voucher_id)
        if lock is None or voucher is None:
            return None
        if lock.state == "released":
            return lock.category, "released", 0
        if voucher.state.value == "redeemed" and voucher.redemption_id is not None:
            redemption = uow.vouchers.get_redemption(voucher.redemption_id)
            return lock.category, "consumed", redemption.discount_fen if redemption else 0
        return lock.category, "locked", 0


def reconcile(rt: Runtime, day: date) -> Reconciliation:
    """Compare the province's record of ``day`` with central's."""
    if rt.central is None:
        raise Conflict(
            "central_not_configured", "this province is not connected to a central platform"
        )
    province, vouchers = province_facts(rt, day)
    try:
        central_day = rt.central.day(day)
    except CentralUnavailable:
        raise Unavailable(
            "central_unavailable", "the central platform cannot be reached; retry", retry_after_s=30
        ) from None
    result = Reconciliation(
        day=day,
        province=province,
        central={c: dict(by) for c, by in central_day.categories.items()},
    )
    for category in sorted(set(province) | set(result.central)):
        for fact in FACTS:
            ours = province.get(category, {}).get(fact, (0, 0))
            theirs = result.central.get(category, {}).get(fact, (0, 0))
            if ours != theirs:
                result.mismatches.append(
                    Mismatch(
                        category,
                        fact,
                        f"{ours[0]} / {ours[1]} fen",
                        f"{theirs[0]} / {theirs[1]} fen",
                    )
                )
    touched = vouchers | set(central_day.vouchers)
    result.vouchers = len(touched)
    for voucher_id in sorted(touched):
        ours_view = _voucher_view(rt, voucher_id)
        theirs_view = central_day.vouchers.get(voucher_id)
        if ours_view == theirs_view:
            continue
        category = (ours_view or theirs_view or ("?", "", 0))[0]
        result.mismatches.append(
            Mismatch(
                category,
                "voucher",
                _show(ours_view),
                _show(theirs_view),
                voucher_id=voucher_id,
            )
        )
    return result


def _show(view: tuple[str, str, int] | None) -> str:
    if view is None:
        return "absent"
    _, state, subsidy_fen = view
    return f"{state}, subsidy {subsidy_fen} fen"
