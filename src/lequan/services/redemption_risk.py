"""Redemption-time risk: completed redemptions judged by the rules in force, their
payables held, released or clawed back, and rings found in recent redemptions.

``RedemptionScreen.judge`` runs in the redemption's own transaction (the
batch writer's for a batch of one-step redemptions, the single path's, a
confirmation's), after the redemptions are decided: one call of the shared
counters for the whole batch (a merchant's last minute and its baseline, its
orders just over a threshold, the vouchers a payer paid for), one read of the
SKU baseline prices when a trade-in product is among them, and the rings
this process last found. The domain judges each redemption
(``domain/redemption_risk.py``); a rule never refuses one. What a verdict
does, written in the same transaction, so a redemption and what the rules
made of it commit together:

- ``flag``: a review item of kind ``redemption`` with each rule that fired and
  its figures;
- ``hold``: also the merchant's payable for it moves to the ledger's ``held:``
  account (``payable_holds`` keeps it) until an analyst approves the item
  (released: owed again) or rejects it (clawed back to the budget, never paid);
- ``suspend``: also the merchant is suspended as an operator's switch would
  (``merchant_suspended`` for its next redemptions), audited as the actor
  ``risk-rules``.

Every completed redemption is remembered (``risk_redemptions``) while any
redemption rule is on: who, where, the payer's token, and its refund. A
refund is judged when it is made (``refunded``): how soon after its
redemption, and how often the merchant refunds that soon. Every process
looks for rings every ``ring.refresh_s`` (``sweep_rings``): the rings it finds
judge the redemptions that follow, and the rings' earlier redemptions no
review flagged yet are flagged then (a conditional update: one process flags
each). A refund or a reversal releases a held payable first (the refund takes
the payable back); a payable clawed back cannot be refunded or reversed
(``redemption_clawed_back``).

A feature the counters or the store could not give is unknown, and a rule that
needs it does not fire: the redemption goes through unjudged by it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from lequan.domain.errors import Conflict
from lequan.domain.ledger import (
    Entry,
    clawback_entry,
    held_account,
    hold_entry,
    payable_account,
    release_entry,
)
from lequan.domain.redemption_risk import (
    CompiledRedemptionRules,
    RedemptionFeatures,
    RedemptionFired,
    RedemptionReason,
    RedemptionRules,
    RedemptionVerdict,
    RefundFeatures,
    Ring,
    find_rings,
    ring_figures,
    ring_of,
)
from lequan.domain.redemption_states import RedemptionStatus
from lequan.domain.templates import Percentage, ThresholdDiscount
from lequan.domain.trade_in import Product
from lequan.ports import StoreError, UnitOfWork
from lequan.ports.risk_counters import RiskCounters, RiskCountersUnavailable, Tallies
from lequan.rows import (
    CampaignRow,
    PayableHoldRow,
    RedemptionFactRow,
    RedemptionRow,
    ReviewRow,
    VoucherRow,
)
from lequan.services.background import Loop
from lequan.services.risk_rules import RiskRulebook
from lequan.services.runtime import Runtime
from lequan.services.views import new_ids

__all__ = [
    "NO_SIGNALS",
    "RISK_ACTOR",
    "Completed",
    "Judgement",
    "RedemptionScreen",
    "RedemptionSignals",
    "claw_back",
    "release",
    "release_for_refund",
    "threshold_of",
]

log = structlog.get_logger(__name__)

# Who the rules' own actions are recorded as: a merchant's ``suspended_by``, the audit's actor.
RISK_ACTOR = "risk-rules"
# How often a process with no ring rule on looks again whether one is.
RING_IDLE_S = 5.0
# Earlier redemptions of a ring one sweep flags at most (the next sweep flags more).
RING_FLAGS_MAX = 1000
# Earlier redemptions of a payer that went over its limit flagged at most.
LOOK_BACK_MAX = 200


@dataclass(frozen=True, slots=True)
class RedemptionSignals:
    """What the acquirer sent of the payment besides the order; None is unknown."""

    payer_id: str | None = None
    terminal_id: str | None = None


NO_SIGNALS = RedemptionSignals()


@dataclass(frozen=True, slots=True)
class Completed:
    """A redemption completing in the caller's transaction, as the rules judge it."""

    redemption: RedemptionRow
    voucher: VoucherRow
    signals: RedemptionSignals
    # The order's template threshold (None: a template without one).
    threshold_fen: int | None
    # The trade-in product it subsidises (its category names the payable account).
    product: Product | None
    # Remembered already (a lock, now confirmed): not remembered again.
    remembered: bool = False


@dataclass(slots=True)
class Judgement:
    """What the rules did in a transaction: items flagged, payables held, merchants
    suspended. The caller tells the process's caches of the suspensions once it
    commits (``after_commit``)."""

    flagged: int = 0
    held: int = 0
    suspended: list[str] = field(default_factory=list)

    def after_commit(self, rt: Runtime) -> None:
        if self.suspended:
            rt.merchants_changed()

    def plus(self, other: Judgement) -> Judgement:
        return Judgement(
            self.flagged + other.flagged,
            self.held + other.held,
            [*self.suspended, *other.suspended],
        )


# What a path without a rule on did (never written to: ``after_commit`` reads it).
NOTHING = Judgement()


def threshold_of(campaign: CampaignRow, voucher: VoucherRow) -> int | None:
    """The threshold an order must reach for the voucher's discount, if it has one."""
    template = campaign.config.template(voucher.template_id)
    if isinstance(template, ThresholdDiscount):
        return template.threshold_fen
    if isinstance(template, Percentage) and template.threshold_fen > 0:
        return template.threshold_fen
    return None


def _fired_json(fired: RedemptionFired) -> dict[str, Any]:
    """A rule that fired as its review keeps it (``dict(...)``: the error-code check reads
    dict literals with a ``"code"`` key as error bodies)."""
    return dict(code=fired.code.value, action=fired.action, figures=dict(fired.figures))


@dataclass(slots=True)
class _Writes:
    """What one judging writes: remembered redemptions, flags on those remembered
    before, review items, holds and their ledger entries, merchants to suspend."""

    facts: list[RedemptionFactRow] = field(default_factory=list)
    flags: list[tuple[str, str]] = field(default_factory=list)
    reviews: list[ReviewRow] = field(default_factory=list)
    holds: list[PayableHoldRow] = field(default_factory=list)
    posts: list[tuple[Entry, Mapping[str, Any]]] = field(default_factory=list)
    suspend: dict[str, list[str]] = field(default_factory=dict)  # merchant -> review ids

    def hold(self, redemption: RedemptionRow, payable: str, review_id: str, now: datetime) -> int:
        amount = redemption.discount_fen
        self.holds.append(
            PayableHoldRow(
                redemption_id=redemption.id,
                campaign_id=redemption.campaign_id,
                payable=payable,
                amount_fen=amount,
                status="held",
                review_id=review_id,
                created_at=now,
                updated_at=now,
            )
        )
        self.posts.append(
            (
                hold_entry(amount_fen=amount, payable=payable),
                {
                    "campaign_id": redemption.campaign_id,
                    "voucher_id": redemption.voucher_id,
                    "redemption_id": redemption.id,
                },
            )
        )
        return amount

    def apply(self, uow: UnitOfWork, now: datetime) -> Judgement:
        if self.flags:
            uow.redemption_risk.flag_facts(self.flags)
        with uow.pipeline():
            if self.facts:
                uow.redemption_risk.add_facts(self.facts)
            if self.reviews:
                uow.risk.add_reviews(self.reviews)
            if self.holds:
                uow.redemption_risk.add_holds(self.holds)
            if self.posts:
                uow.ledger.record_many(self.posts, now=now)
        suspended = []
        for merchant_id, review_ids in sorted(self.suspend.items()):
            if _suspend(uow, merchant_id, review_ids, now):
                suspended.append(merchant_id)
        return Judgement(len(self.reviews), len(self.holds), suspended)


def _suspend(uow: UnitOfWork, merchant_id: str, review_ids: Sequence[str], now: datetime) -> bool:
    """Suspend a merchant as an operator's switch does, the rules its actor."""
    reason = f"risk rules, review {review_ids[0]}"
    if len(review_ids) > 1:
        reason += f" and {len(review_ids) - 1} more"
    changed = uow.people.suspend_merchant(
        merchant_id, reason=reason, suspended_by=RISK_ACTOR, now=now
    )
    uow.ledger.append_audit(
        actor=RISK_ACTOR,
        action="merchant.suspend",
        target=merchant_id,
        details={"changed": changed, "reason": reason, "reviews": list(review_ids[:20])},
        now=now,
    )
    return changed


class RedemptionScreen:
    """The redemption-time rules' step of every redemption path, for one process."""

    def __init__(self, rt: Runtime, rulebook: RiskRulebook, counters: RiskCounters) -> None:
        self._rt = rt
        self._rulebook = rulebook
        self._counters = counters
        self._rings: tuple[Ring, ...] = ()
        self._ring_lock = threading.Lock()  # one sweep at a time in a process
        self._loop = Loop(
            "lequan-rings", self._ring_step, first_pause_s=RING_IDLE_S, retry_pause_s=RING_IDLE_S
        )

    @property
    def rules(self) -> CompiledRedemptionRules | None:
        """The redemption rules in force; None when none is on (nothing is judged)."""
        return self._rulebook.current.redemption

    @property
    def rings(self) -> tuple[Ring, ...]:
        """The rings this process found last."""
        return self._rings

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    # -- redemptions ------------------------------------------------------------------------

    def remember_lock(
        self,
        uow: UnitOfWork,
        redemption: RedemptionRow,
        voucher: VoucherRow,
        signals: RedemptionSignals | None,
    ) -> None:
        """An authorization (a lock) remembered with its signals: judged when confirmed."""
        if self.rules is None:
            return
        with uow.pipeline():
            uow.redemption_risk.add_facts(
                [_fact(redemption, voucher, signals or NO_SIGNALS, redeemed_at=None)]
            )

    def judge(self, uow: UnitOfWork, completed: Sequence[Completed], now: datetime) -> Judgement:
        """Judge redemptions completing in ``uow`` and write what the verdicts do there."""
        compiled = self.rules
        if compiled is None or not completed:
            return NOTHING
        writes = _Writes()
        for item in completed:
            if not item.remembered:
                writes.facts.append(
                    _fact(item.redemption, item.voucher, item.signals, redeemed_at=now)
                )
        lookbacks: list[tuple[str, RedemptionFired]] = []
        if compiled.judges_redemptions:
            features = self._features(uow, compiled.rules, completed, now)
            verdicts = compiled.judge_batch(features)
            self._verdicts(writes, completed, verdicts, now)
            lookbacks = _crossed(compiled.rules, features, verdicts)
        judgement = writes.apply(uow, now)
        if lookbacks:
            # After this batch's own redemptions are remembered: they are looked back on too.
            judgement = judgement.plus(self._look_back(uow, lookbacks, now))
        return judgement

    def confirmed(
        self,
        uow: UnitOfWork,
        redemption: RedemptionRow,
        voucher: VoucherRow,
        *,
        product: Product | None,
        now: datetime,
    ) -> Judgement:
        """A lock confirmed: judged with the signals its authorization sent."""
        if self.rules is None:
            return NOTHING
        campaign = uow.campaigns.get_campaign(voucher.campaign_id)
        assert campaign is not None, "a voucher's campaign is never deleted"
        threshold_fen = threshold_of(campaign, voucher)
        fact = uow.redemption_risk.complete_fact(redemption.id, now=now)
        signals = (
            NO_SIGNALS
            if fact is None
            else RedemptionSignals(payer_id=fact.payer_id, terminal_id=fact.terminal_id)
        )
        item = Completed(
            redemption, voucher, signals, threshold_fen, product, remembered=fact is not None
        )
        return self.judge(uow, [item], now)

    def refunded(
        self,
        uow: UnitOfWork,
        redemption: RedemptionRow,
        *,
        completed_at: datetime,
        now: datetime,
    ) -> Judgement:
        """A refund judged by how soon it follows its redemption, and how often the
        merchant refunds that soon."""
        compiled = self.rules
        if compiled is None:
            return NOTHING
        after_s = max(0, int((now - completed_at).total_seconds()))
        remembered = uow.redemption_risk.refund_fact(redemption.id, now=now, refund_after_s=after_s)
        rule = compiled.rules.refund_soon_after
        if rule is None or after_s > rule.within_s:
            return NOTHING
        quick: int | None = None
        total: int | None = None
        payer: str | None = None
        payer_quick: int | None = None
        if remembered:
            since = now - timedelta(seconds=rule.window_s)
            total, quick = uow.redemption_risk.merchant_refunds(
                redemption.merchant_id, since=since, within_s=rule.within_s
            )
            fact = uow.redemption_risk.get_fact(redemption.id)
            payer = None if fact is None else fact.payer_id
            if payer is not None and rule.payer_refunds_min > 1:
                payer_quick = uow.redemption_risk.payer_refunds(
                    payer, since=since, within_s=rule.within_s
                )
        verdict = compiled.judge_refund(
            RefundFeatures(
                merchant_id=redemption.merchant_id,
                since_redemption_s=after_s,
                merchant_quick_refunds=quick,
                merchant_redemptions=total,
                payer_id=payer,
                payer_quick_refunds=payer_quick,
            )
        )
        if verdict is None:
            return NOTHING
        writes = _Writes()
        (review_id,) = new_ids("rv", 1)
        suspend = verdict.action == "suspend"
        writes.reviews.append(
            self._review(
                review_id,
                redemption,
                verdict,
                now,
                moment="refund",
                person_id=None,
                signals=None,
                held_fen=0,
                suspend=suspend,
            )
        )
        if suspend:
            writes.suspend.setdefault(redemption.merchant_id, []).append(review_id)
        return writes.apply(uow, now)

    # -- the features -----------------------------------------------------------------------

    def _features(
        self,
        uow: UnitOfWork,
        rules: RedemptionRules,
        completed: Sequence[Completed],
        now: datetime,
    ) -> list[RedemptionFeatures]:
        size = len(completed)
        counted = self._counted(rules, completed, now)
        baselines: dict[str, int] = {}
        if rules.price_above_sku_baseline is not None:
            skus = sorted(
                {i.product.sku for i in completed if i.product is not None and i.product.sku}
            )
            if skus:
                try:
                    baselines = uow.redemption_risk.sku_prices(skus)
                except StoreError as error:  # unknown: the rule does not fire
                    log.warning("sku_prices_unread", error_type=type(error).__name__)
        rings = self._rings if rules.ring is not None else ()
        features = []
        for n, item in enumerate(completed):
            r, product = item.redemption, item.product
            over = None if item.threshold_fen is None else r.order_amount_fen - item.threshold_fen
            sku = product.sku if product is not None else None
            features.append(
                RedemptionFeatures(
                    merchant_id=r.merchant_id,
                    campaign_id=r.campaign_id,
                    redeemed_at=now,
                    merchant_minute_redemptions=_at(counted.get("minute"), n),
                    merchant_baseline_redemptions=_baseline(counted, "minute", "minutes", n),
                    platform_minute_redemptions=_at(counted.get("all_minute"), n),
                    platform_baseline_redemptions=_baseline(
                        counted, "all_minute", "all_minutes", n
                    ),
                    over_threshold_fen=over,
                    merchant_window_redemptions=_at(counted.get("with_threshold"), n),
                    merchant_window_just_over=_at(counted.get("just_over"), n),
                    payer_id=item.signals.payer_id,
                    payer_vouchers=_at(counted.get("payer"), n),
                    ring=ring_of(rings, item.voucher.person_id, r.merchant_id) if rings else None,
                    sku=sku,
                    price_fen=product.price_fen if product is not None else None,
                    sku_baseline_fen=baselines.get(sku) if sku else None,
                )
            )
        assert len(features) == size
        return features

    def _counted(
        self, rules: RedemptionRules, completed: Sequence[Completed], now: datetime
    ) -> dict[str, list[int | None]]:
        """The counted features of every redemption, from one call of the counters."""
        size = len(completed)
        groups: list[Tallies] = []
        places: list[tuple[str, list[int]]] = []

        def tally(
            feature: str,
            window_s: int,
            prefix: str,
            keys: Sequence[str | None],
            members: Sequence[str] | None = None,
        ) -> None:
            at = [n for n, key in enumerate(keys) if key is not None]
            if not at:
                return
            groups.append(
                Tallies(
                    window_s,
                    [prefix + str(keys[n]) for n in at],
                    None if members is None else [members[n] for n in at],
                )
            )
            places.append((feature, at))

        merchants = [i.redemption.merchant_id for i in completed]
        if (spike := rules.merchant_rate_spike) is not None:
            minutes_s = (spike.baseline_minutes + 1) * 60
            tally("minute", 60, "rs:", merchants)
            tally("minutes", minutes_s, "rl:", merchants)
            if spike.relative_to_platform:
                # One name for the whole platform: each redemption's figure counts those
                # before it, as a merchant's does.
                everyone = ["*"] * size
                tally("all_minute", 60, "rs:", everyone)
                tally("all_minutes", minutes_s, "rl:", everyone)
        if (over := rules.amount_just_over_threshold) is not None:
            with_threshold = [
                m if i.threshold_fen is not None else None
                for m, i in zip(merchants, completed, strict=True)
            ]
            just = [
                m
                if i.threshold_fen is not None
                and 0 < i.redemption.order_amount_fen - i.threshold_fen <= over.margin_fen
                else None
                for m, i in zip(merchants, completed, strict=True)
            ]
            tally("with_threshold", over.window_s, "ra:", with_threshold)
            tally("just_over", over.window_s, "rj:", just)
        if (payer := rules.payer_many_vouchers) is not None:
            tally(
                "payer",
                payer.window_s,
                "rp:",
                [i.signals.payer_id for i in completed],
                [i.voucher.id for i in completed],
            )
        counted: dict[str, list[int | None]] = {}
        if not groups:
            return counted
        try:
            figures = self._counters.count(groups, now_ms=int(now.timestamp() * 1000))
        except RiskCountersUnavailable as error:
            log.warning("risk_counters_unavailable", error_type=str(error), redemptions=size)
            return counted
        for (feature, at), found in zip(places, figures, strict=True):
            column: list[int | None] = [None] * size
            for n, figure in zip(at, found, strict=True):
                column[n] = figure
            counted[feature] = column
        return counted

    # -- what the verdicts do ---------------------------------------------------------------

    def _verdicts(
        self,
        writes: _Writes,
        completed: Sequence[Completed],
        verdicts: Sequence[RedemptionVerdict | None],
        now: datetime,
    ) -> None:
        judged = [(i, v) for i, v in zip(completed, verdicts, strict=True) if v is not None]
        if not judged:
            return
        review_ids = new_ids("rv", len(judged))
        facts = {f.redemption_id: n for n, f in enumerate(writes.facts)}
        for (item, verdict), review_id in zip(judged, review_ids, strict=True):
            r = item.redemption
            held_fen = 0
            if verdict.action in ("hold", "suspend"):
                held_fen = writes.hold(r, _payable(r, item.product), review_id, now)
            suspend = verdict.action == "suspend"
            if suspend:
                writes.suspend.setdefault(r.merchant_id, []).append(review_id)
            writes.reviews.append(
                self._review(
                    review_id,
                    r,
                    verdict,
                    now,
                    moment="redemption",
                    person_id=item.voucher.person_id,
                    signals=item.signals,
                    held_fen=held_fen,
                    suspend=suspend,
                )
            )
            at = facts.get(r.id)
            if at is None:
                writes.flags.append((r.id, review_id))
            else:
                fact = writes.facts[at]
                writes.facts[at] = RedemptionFactRow(
                    **{
                        **{f: getattr(fact, f) for f in RedemptionFactRow.__dataclass_fields__},
                        "review_id": review_id,
                    }
                )
        log.info(
            "redemptions_screened",
            redemptions=len(completed),
            flagged=len(judged),
            held=len(writes.holds),
            suspended=len(writes.suspend),
        )

    def _review(
        self,
        review_id: str,
        r: RedemptionRow,
        verdict: RedemptionVerdict,
        now: datetime,
        *,
        moment: str,
        person_id: str | None,
        signals: RedemptionSignals | None,
        held_fen: int,
        suspend: bool,
    ) -> ReviewRow:
        return ReviewRow(
            id=review_id,
            kind="redemption",
            status="pending",
            created_at=now,
            subject=_subject(
                r,
                moment=moment,
                person_id=person_id,
                signals=signals,
                held_fen=held_fen,
                suspend=suspend,
            ),
            reasons=[_fired_json(f) for f in verdict.fired],
            rules_version=self._rulebook.current.version or 0,
            campaign_id=r.campaign_id,
        )

    # -- rings ------------------------------------------------------------------------------

    def _ring_step(self) -> float:
        compiled = self.rules
        rule = None if compiled is None else compiled.rules.ring
        if rule is None:
            self._rings = ()
            return RING_IDLE_S
        try:
            self.sweep_rings()
        except StoreError as error:  # the store is down: the rings found last stay
            log.warning("rings_unswept", error_type=type(error).__name__)
        return float(rule.refresh_s)

    def sweep_rings(self) -> int:
        """Look for rings in the recent redemptions, keep them for the redemptions that
        follow, and flag the rings' earlier redemptions no review flagged yet; how many
        were flagged now."""
        compiled = self.rules
        rule = None if compiled is None else compiled.rules.ring
        if compiled is None or rule is None:
            self._rings = ()
            return 0
        with self._ring_lock:
            now = self._rt.clock.now()
            with self._rt.store.unit_of_work(readonly=True) as uow:
                recent = uow.redemption_risk.recent(
                    since=now - timedelta(seconds=rule.window_s), limit=rule.rows_max
                )
            rings = tuple(find_rings(((r.person_id, r.merchant_id) for r in recent), rule))
            self._rings = rings
            if not rings:
                return 0
            unflagged = [
                (r.redemption_id, ring)
                for r in recent
                if not r.flagged and (ring := ring_of(rings, r.person_id, r.merchant_id))
            ][:RING_FLAGS_MAX]
            if not unflagged:
                return 0
            judgement = self._flag_rings(compiled, unflagged, now)
        judgement.after_commit(self._rt)
        log.info(
            "rings_swept",
            rings=len(rings),
            redemptions=len(recent),
            flagged=judgement.flagged,
            held=judgement.held,
        )
        return judgement.flagged

    def _flag_rings(
        self,
        compiled: CompiledRedemptionRules,
        unflagged: Sequence[tuple[str, Ring]],
        now: datetime,
    ) -> Judgement:
        rule = compiled.rules.ring
        assert rule is not None
        earlier = [
            (
                rid,
                RedemptionVerdict(
                    rule.action,
                    (
                        RedemptionFired(
                            RedemptionReason.RING, rule.action, ring_figures(ring, rule)
                        ),
                    ),
                ),
            )
            for rid, ring in unflagged
        ]
        with self._rt.store.unit_of_work() as uow:
            writes = _Writes()
            self._flag_earlier(uow, writes, earlier, moment="ring", now=now)
            judgement = writes.apply(uow, now)
            uow.commit()
        return judgement

    def _flag_earlier(
        self,
        uow: UnitOfWork,
        writes: _Writes,
        earlier: Sequence[tuple[str, RedemptionVerdict]],
        *,
        moment: str,
        now: datetime,
    ) -> None:
        """Flag redemptions completed before, each with its verdict, unless a review
        flagged it already (a conditional update each: of many processes one flags
        it); a payable still owed is held if the verdict holds."""
        if not earlier:
            return
        review_ids = new_ids("rv", len(earlier))
        flagged = uow.redemption_risk.flag_facts(
            [(rid, review_id) for (rid, _), review_id in zip(earlier, review_ids, strict=True)]
        )
        for (rid, verdict), review_id in zip(earlier, review_ids, strict=True):
            if rid not in flagged:
                continue  # flagged before, here or by another process
            r = uow.vouchers.get_redemption(rid)
            fact = uow.redemption_risk.get_fact(rid)
            assert r is not None, "a remembered redemption exists"
            assert fact is not None, "it is flagged above"
            held_fen = 0
            # A payable still owed (not refunded, not held or clawed back already).
            if (
                verdict.action in ("hold", "suspend")
                and r.status is RedemptionStatus.REDEEMED
                and uow.redemption_risk.get_hold(rid) is None
            ):
                registered = uow.products.get_product(rid)
                product = registered.product if registered is not None else None
                held_fen = writes.hold(r, _payable(r, product), review_id, now)
            suspend = verdict.action == "suspend"
            if suspend:
                writes.suspend.setdefault(r.merchant_id, []).append(review_id)
            writes.reviews.append(
                self._review(
                    review_id,
                    r,
                    verdict,
                    now,
                    moment=moment,
                    person_id=fact.person_id,
                    signals=RedemptionSignals(fact.payer_id, fact.terminal_id),
                    held_fen=held_fen,
                    suspend=suspend,
                )
            )

    def _look_back(
        self, uow: UnitOfWork, lookbacks: Sequence[tuple[str, RedemptionFired]], now: datetime
    ) -> Judgement:
        """A payer that went over its limit just now: its earlier redemptions of the
        window are flagged too (what it paid for before the limit is no less its)."""
        compiled = self.rules
        rule = None if compiled is None else compiled.rules.payer_many_vouchers
        if rule is None or not lookbacks:
            return NOTHING
        since = now - timedelta(seconds=rule.window_s)
        earlier: list[tuple[str, RedemptionVerdict]] = []
        for payer_id, fired in lookbacks:
            for r in uow.redemption_risk.payer_redemptions(
                payer_id, since=since, limit=LOOK_BACK_MAX
            ):
                if not r.flagged:
                    earlier.append((r.redemption_id, RedemptionVerdict(fired.action, (fired,))))
        writes = _Writes()
        self._flag_earlier(uow, writes, earlier, moment="lookback", now=now)
        return writes.apply(uow, now)


def _crossed(
    rules: RedemptionRules,
    features: Sequence[RedemptionFeatures],
    verdicts: Sequence[RedemptionVerdict | None],
) -> list[tuple[str, RedemptionFired]]:
    """The payers that went over ``payer_many_vouchers``'s limit with this batch (their
    count just reached limit + 1, once per window), with what the rule saw."""
    rule = rules.payer_many_vouchers
    if rule is None:
        return []
    crossed: list[tuple[str, RedemptionFired]] = []
    for f, verdict in zip(features, verdicts, strict=True):
        if f.payer_id is None or f.payer_vouchers != rule.limit + 1 or verdict is None:
            continue
        crossed.extend(
            (f.payer_id, fired)
            for fired in verdict.fired
            if fired.code is RedemptionReason.PAYER_MANY_VOUCHERS
        )
    return crossed


def _at(column: Sequence[int | None] | None, n: int) -> int | None:
    return None if column is None else column[n]


def _baseline(
    counted: Mapping[str, Sequence[int | None]], last: str, all_of: str, n: int
) -> int | None:
    """The redemptions before the last minute, over the baseline minutes."""
    minute, minutes = _at(counted.get(last), n), _at(counted.get(all_of), n)
    if minute is None or minutes is None:
        return None
    return max(0, minutes - minute)


def _payable(r: RedemptionRow, product: Product | None) -> str:
    return payable_account(r.acquirer_id, product.category.value if product is not None else None)


def _fact(
    r: RedemptionRow,
    voucher: VoucherRow,
    signals: RedemptionSignals,
    *,
    redeemed_at: datetime | None,
) -> RedemptionFactRow:
    return RedemptionFactRow(
        redemption_id=r.id,
        campaign_id=r.campaign_id,
        merchant_id=r.merchant_id,
        person_id=voucher.person_id,
        voucher_id=voucher.id,
        payer_id=signals.payer_id,
        terminal_id=signals.terminal_id,
        order_amount_fen=r.order_amount_fen,
        created_at=r.created_at,
        redeemed_at=redeemed_at,
    )


def _subject(
    r: RedemptionRow,
    *,
    moment: str,
    person_id: str | None,
    signals: RedemptionSignals | None,
    held_fen: int,
    suspend: bool,
) -> dict[str, Any]:
    """What a redemption's review item is about: enough for an analyst to look it up,
    and what the rules did to it."""
    subject: dict[str, Any] = {
        "redemption_id": r.id,
        "moment": moment,  # redemption | refund | ring
        "voucher_id": r.voucher_id,
        "campaign_id": r.campaign_id,
        "acquirer_id": r.acquirer_id,
        "merchant_id": r.merchant_id,
        "order_id": r.order_id,
        "order_amount_fen": r.order_amount_fen,
        "discount_fen": r.discount_fen,
        "held_fen": held_fen,
        "merchant_suspended": suspend,
    }
    if person_id is not None:
        subject["person_id"] = person_id
    if signals is not None:
        subject["signals"] = {
            k: v
            for k, v in (("payer_id", signals.payer_id), ("terminal_id", signals.terminal_id))
            if v is not None
        }
    return subject


# -- holds: released, clawed back ---------------------------------------------------------


def release_for_refund(uow: UnitOfWork, redemption: RedemptionRow, now: datetime) -> None:
    """Before a refund or a reversal takes the payable back: a held payable is released
    first (it is owed again, then taken back), and one clawed back refuses them."""
    held = uow.redemption_risk.get_hold(redemption.id)
    if held is None or held.status == "released":
        return
    if held.status == "clawed_back":
        raise Conflict(
            "redemption_clawed_back",
            "an analyst clawed this redemption's payable back: it cannot be refunded or reversed",
        )
    _release(uow, held, now, review_id=None)


def _release(
    uow: UnitOfWork, held: PayableHoldRow, now: datetime, *, review_id: str | None
) -> None:
    moved = uow.redemption_risk.move_hold(
        held.redemption_id, expected="held", status="released", now=now, review_id=review_id
    )
    if not moved:
        raise Conflict("redemption_state", "the hold changed meanwhile; look again")
    _post(uow, release_entry(amount_fen=held.amount_fen, payable=held.payable), held, now)


def _post(uow: UnitOfWork, entry: Entry, held: PayableHoldRow, now: datetime) -> None:
    recorded = uow.ledger.record(
        entry, campaign_id=held.campaign_id, now=now, redemption_id=held.redemption_id
    )
    assert recorded, "a hold's entries never commit budget: the ledger takes them"


def release(
    uow: UnitOfWork, redemption_id: str, *, review_id: str, now: datetime
) -> tuple[str, dict[str, Any]]:
    """An analyst approved a redemption's review: its held payable is owed again. The
    outcome recorded on the item, with its detail."""
    held = uow.redemption_risk.get_hold(redemption_id)
    if held is None:
        return "not_held", {}
    if held.status != "held":
        return f"{held.status}_already", {"amount_fen": held.amount_fen}
    _release(uow, held, now, review_id=review_id)
    return "released", {"amount_fen": held.amount_fen, "payable": held.payable}


def claw_back(
    uow: UnitOfWork, redemption_id: str, *, review_id: str, now: datetime
) -> tuple[str, dict[str, Any]]:
    """An analyst rejected a redemption's review: its payable, held or still owed, goes
    back to the campaign's budget and is never paid. A payable a refund or a reversal
    took back already is nothing to claw back."""
    held = uow.redemption_risk.get_hold(redemption_id)
    if held is not None and held.status == "clawed_back":
        return "clawed_back_already", {"amount_fen": held.amount_fen}
    if held is not None and held.status == "held":
        if not uow.redemption_risk.move_hold(
            redemption_id, expected="held", status="clawed_back", now=now, review_id=review_id
        ):
            raise Conflict("redemption_state", "the hold changed meanwhile; look again")
        entry = clawback_entry(amount_fen=held.amount_fen, payable=held.payable, held=True)
        _post(uow, entry, held, now)
        return "clawed_back", {"amount_fen": held.amount_fen, "from": held_account(held.payable)}
    redemption = uow.vouchers.get_redemption(redemption_id)
    if redemption is None or redemption.status is not RedemptionStatus.REDEEMED:
        status = None if redemption is None else redemption.status.value
        return "nothing_to_claw_back", {"redemption_status": status}
    registered = uow.products.get_product(redemption_id)
    payable = _payable(redemption, registered.product if registered is not None else None)
    if held is None:
        held = PayableHoldRow(
            redemption_id=redemption.id,
            campaign_id=redemption.campaign_id,
            payable=payable,
            amount_fen=redemption.discount_fen,
            status="clawed_back",
            review_id=review_id,
            created_at=now,
            updated_at=now,
        )
        with uow.pipeline():
            uow.redemption_risk.add_holds([held])
    elif not uow.redemption_risk.move_hold(
        redemption_id, expected="released", status="clawed_back", now=now, review_id=review_id
    ):
        raise Conflict("redemption_state", "the hold changed meanwhile; look again")
    _post(uow, clawback_entry(amount_fen=held.amount_fen, payable=payable, held=False), held, now)
    return "clawed_back", {"amount_fen": held.amount_fen, "from": payable}
