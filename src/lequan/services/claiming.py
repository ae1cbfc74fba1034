"""First-come claiming: cheap refusals from memory, an atomic reservation in
the gate, then the group commit (``group_commit``) before anyone hears "issued".

A batch's claims are decided together: one offer per template (the
domain's ``offered_template``), one read of the claimants, one gate call,
and each claim handed to the writer with its reservation, its key held.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from lequan.domain.campaigns import (
    Eligibility,
    eligibility_reasons,
)
from lequan.domain.claims import offered_template
from lequan.domain.errors import Conflict, LequanError, NotFound, Unavailable
from lequan.domain.risk import CompiledClaimRules
from lequan.domain.templates import TradeIn
from lequan.domain.vouchers import VoucherState
from lequan.ports import (
    GateUnavailable,
    ReserveOutcome,
    ReserveRequest,
    ReserveResult,
    StoreError,
)
from lequan.rows import VoucherRow
from lequan.services.campaigns import CampaignCache, pool_key
from lequan.services.claim_answers import (
    ID_SLOT,
    ClaimResult,
    answered,
    gate_refusal,
    issued_text,
    refusal_answer,
)
from lequan.services.gatekeeper import CLAIMED_ALREADY, Refusal, Verdict, check_refusals
from lequan.services.group_commit import GroupCommitter, PendingClaim, tell_gate
from lequan.services.idempotency import Answer, Idempotency, in_flight, replay_or_refuse
from lequan.services.live import record_claims
from lequan.services.risk import Candidate, ClaimScreen, ClaimSignals
from lequan.services.runtime import Runtime
from lequan.services.views import http_status, new_ids

__all__ = ["ClaimRequest", "ClaimService"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    channel_user_id: str
    campaign_id: str
    round_id: str
    template_id: str
    location_region: str | None
    key: Idempotency
    # What the channel knows of the claim besides the person (risk rules, docs/risk.md).
    signals: ClaimSignals | None = None
    # An analyst approved it after a risk rule held it: the rules are not asked again.
    reviewed: bool = False


class ClaimService:
    """Claims for one process: the campaign cache, the gate and the group committer."""

    def __init__(
        self,
        rt: Runtime,
        cache: CampaignCache,
        *,
        on_gate_lost: Callable[[str], None] = lambda _campaign_id: None,
        on_sold_out: Callable[[str, str], None] = lambda _pool, _template_id: None,
        screen: ClaimScreen | None = None,
    ) -> None:
        self._rt = rt
        self._cache = cache
        self._screen = screen
        self._on_gate_lost = on_gate_lost
        self._on_sold_out = on_sold_out
        s = rt.settings
        self.committer = GroupCommitter(
            rt,
            batch_size_max=s.claim_batch_size_max,
            wait_ms=s.claim_batch_wait_ms,
            queue_max=s.claim_queue_max,
            on_budget_exhausted=cache.budget_room.__setitem__,
            on_sold_out=self._mark_sold_out,
        )

    def close(self) -> None:
        self.committer.close()

    def claim(self, channel_id: str, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """Answer every request, in order; refusals are answers too, never exceptions."""
        assert len(requests) <= self._rt.settings.claim_batch_items_max
        rt = self._rt
        now = rt.clock.now()
        results: list[ClaimResult | None] = [None] * len(requests)
        held: list[int] = []
        handed: set[int] = set()  # their keys now belong to the group committer
        try:
            self._hold_or_replay(channel_id, requests, results, held)
            self._claim_held(channel_id, requests, results, now, handed)
        except StoreError as error:
            log.warning("claim_store_unreadable", error_type=type(error).__name__)
            _answer_the_rest(results, _store_unavailable())
        except GateUnavailable as error:  # the keys' holds live beside the gate
            log.warning("gate_unavailable", error_type=str(error), claims=len(requests))
            _answer_the_rest(results, _gate_unavailable())
        finally:
            rt.inflight.release_many(
                (requests[i].key.app_id, requests[i].key.key) for i in held if i not in handed
            )
        answered = [r for r in results if r is not None]
        assert len(answered) == len(requests)
        record_claims(
            rt.pulse,
            now,
            channel_id,
            (
                (request.campaign_id, result.outcome)
                for request, result in zip(requests, answered, strict=True)
                if not result.replayed
            ),
        )
        return answered

    def _hold_or_replay(
        self,
        channel_id: str,
        requests: Sequence[ClaimRequest],
        results: list[ClaimResult | None],
        held: list[int],
    ) -> None:
        """Hold each key in flight first, then look for stored answers.

        In this order a key's earlier request has either let go (and its
        answer is stored, since the committer stores before letting go) or
        still holds it (409): one query, no window in between.
        """
        holds = self._rt.inflight.acquire_many([(r.key.app_id, r.key.key) for r in requests])
        busy: ClaimResult | None = None
        for i, now_held in enumerate(holds):
            if now_held:
                held.append(i)
                continue
            if busy is None:
                error = in_flight()
                busy = refusal_answer(error, http_status(error))
            results[i] = busy
        if not held:
            return
        with self._rt.store.unit_of_work(readonly=True) as uow:
            stored = answered(uow, channel_id, [requests[i].key.key for i in held])
        for i in held:
            request = requests[i]
            try:
                replay = replay_or_refuse(stored.get(request.key.key), request.key)
            except LequanError as error:
                results[i] = refusal_answer(error, http_status(error))
                continue
            if replay is not None:
                results[i] = ClaimResult("replayed", replay, replayed=True)

    def _claim_held(
        self,
        channel_id: str,
        requests: Sequence[ClaimRequest],
        results: list[ClaimResult | None],
        now: datetime,
        handed: set[int],
    ) -> None:
        rt = self._rt
        # What is on offer first: after a sell-out (or before a release) the
        # whole flood is answered from memory, without reading the store.
        offers: dict[tuple[str, str, str], _Offer | ClaimResult] = {}
        todo: list[tuple[int, _Offer]] = []
        for i, result in enumerate(results):
            if result is not None:
                continue
            request = requests[i]
            group = (request.campaign_id, request.round_id, request.template_id)
            offer = offers.get(group)
            if offer is None:
                made = self._offer(channel_id, request, now)
                offer = offers[group] = (
                    refusal_answer(made, http_status(made))
                    if isinstance(made, LequanError)
                    else made
                )
            if isinstance(offer, ClaimResult):
                results[i] = offer
            else:
                todo.append((i, offer))
        if not todo:
            return
        with rt.store.unit_of_work(readonly=True) as uow:
            claimants = uow.people.claimants(
                channel_id, [requests[i].channel_user_id for i, _ in todo]
            )
        # The risk rules in force for the whole batch (None: no claim rule is on).
        rules = None if self._screen is None else self._screen.rules
        candidates: list[Candidate] = []
        verdicts: dict[tuple[str, str, str | None, bool], ClaimResult | None] = {}
        unknown: ClaimResult | None = None
        reserve: list[tuple[int, ReserveRequest, _Offer, str]] = []
        for i, offer in todo:
            request = requests[i]
            claimant = claimants.get(request.channel_user_id)
            if claimant is None:
                if unknown is None:
                    error = NotFound("not_registered", "this channel account is not registered")
                    unknown = refusal_answer(error, http_status(error))
                results[i] = unknown
                continue
            person_id, residence, blacklisted = claimant
            listed = blacklisted
            if rules is not None and rules.person_blacklist:
                blacklisted = False  # the risk rule's action decides, not eligibility
            verdict_key = (request.campaign_id, residence, request.location_region, blacklisted)
            if verdict_key not in verdicts:
                refusal = _ineligible(offer, residence, request.location_region, blacklisted)
                verdicts[verdict_key] = (
                    None if refusal is None else refusal_answer(refusal, http_status(refusal))
                )
            verdict = verdicts[verdict_key]
            if verdict is not None:
                results[i] = verdict
                continue
            if rules is not None and not request.reviewed:
                candidates.append(
                    Candidate(
                        position=len(reserve),
                        request=request,
                        person_id=person_id,
                        person_blacklisted=listed,
                        local_only=bool(offer.eligibility.regions),
                        release_at=offer.release_at,
                    )
                )
            reserve.append((i, offer.reserve_request(person_id), offer, person_id))
        if rules is not None and candidates:
            assert self._screen is not None
            reserve = self._screened(
                channel_id, rules, candidates, reserve, results=results, now=now
            )
        if not reserve:
            return
        try:
            self.committer.make_room(len(reserve), wait_s=rt.settings.claim_queue_wait_ms / 1000)
        except Unavailable as full:  # nothing reserved yet: nothing to hand back
            refused = refusal_answer(full, http_status(full))
            for i, _, _, _ in reserve:
                results[i] = refused
            return
        # The places made are the gate's reservations' until they reach the committer.
        try:
            pending = self._reserve(requests, results, reserve)
        except GateUnavailable as error:
            self.committer.give_back(len(reserve))
            log.warning("gate_unavailable", error_type=str(error), claims=len(reserve))
            down = _gate_unavailable()
            refused = refusal_answer(down, http_status(down))
            for i, _, _, _ in reserve:
                results[i] = refused
            return
        except BaseException:
            self.committer.give_back(len(reserve))
            raise
        if not pending:
            self.committer.give_back(len(reserve))
            return
        self._commit(pending, results, handed, room=len(reserve))

    def _screened(
        self,
        channel_id: str,
        rules: CompiledClaimRules,
        candidates: list[Candidate],
        reserve: list[tuple[int, ReserveRequest, _Offer, str]],
        *,
        results: list[ClaimResult | None],
        now: datetime,
    ) -> list[tuple[int, ReserveRequest, _Offer, str]]:
        """The claims about to be reserved the risk rules allow; the others answered
        (refused, or held for review with nothing reserved)."""
        assert self._screen is not None
        answered = self._screen.screen(channel_id, rules, candidates, now)
        for candidate, answer in zip(candidates, answered, strict=True):
            if answer is not None:
                results[reserve[candidate.position][0]] = answer
        judged = {c.position for c, a in zip(candidates, answered, strict=True) if a is not None}
        return [r for n, r in enumerate(reserve) if n not in judged]

    def _reserve(
        self,
        requests: Sequence[ClaimRequest],
        results: list[ClaimResult | None],
        reserve: list[tuple[int, ReserveRequest, _Offer, str]],
    ) -> list[tuple[int, PendingClaim]]:
        rt = self._rt
        reserved_at = time.monotonic()
        gate_results: list[ReserveResult | LequanError] = list(
            rt.gate.reserve([r for _, r, _, _ in reserve])
        )
        doubted = [
            n
            for n, got in enumerate(gate_results)
            if isinstance(got, ReserveResult) and got.outcome in CLAIMED_ALREADY
        ]
        if doubted:
            self._check_claimed_already(reserve, gate_results, doubted)
        pending: list[tuple[int, PendingClaim]] = []
        voucher_ids = iter(new_ids("v", len(reserve)))
        gate_refusals: dict[tuple[ReserveOutcome, str, str], ClaimResult] = {}
        answers: dict[int, ClaimResult] = {}  # one per refusal, shared by the claims it refuses
        for (i, reserved, offer, person_id), got in zip(reserve, gate_results, strict=True):
            if isinstance(got, LequanError):
                answer = answers.get(id(got))
                if answer is None:
                    answer = answers[id(got)] = refusal_answer(got, http_status(got))
                results[i] = answer
                continue
            if got.outcome is not ReserveOutcome.OK:
                alike = (got.outcome, reserved.pool, reserved.template_id)
                refused = gate_refusals.get(alike)
                if refused is None:
                    refused = gate_refusals[alike] = self._gate_refusal(
                        reserved, offer, got.outcome
                    )
                results[i] = refused
                continue
            voucher = offer.voucher(next(voucher_ids), person_id, got.claim_seq)
            pending.append(
                (
                    i,
                    PendingClaim(
                        request=reserved,
                        claim_seq=got.claim_seq,
                        voucher=voucher,
                        key=requests[i].key,
                        answer=offer.answer(voucher.id),
                        reserved_at=reserved_at,
                    ),
                )
            )
        return pending

    def _check_claimed_already(
        self,
        reserve: list[tuple[int, ReserveRequest, _Offer, str]],
        gate_results: list[ReserveResult | LequanError],
        doubted: list[int],
    ) -> None:
        """Keep the gate's "claimed already" refusals the store bears out; reserve again
        those it mended, and answer the rest retryably (``check_refusals``).

        The claims it reserved already are not touched, whatever fails here:
        they go on to be committed.
        """
        pending = Unavailable(
            "claim_pending",
            "an earlier claim of this person is not decided yet; retry shortly",
        )
        try:
            refusals = []
            for n in doubted:
                got = gate_results[n]
                assert isinstance(got, ReserveResult)
                _i, reserved, offer, _person = reserve[n]
                pools = self._counted_in(offer, got.outcome)
                refusals.append(Refusal(reserved, got.outcome, pools))
            verdicts = check_refusals(self._rt, refusals)
            again = [n for n, v in zip(doubted, verdicts, strict=True) if v is Verdict.RETRY]
            retried = self._rt.gate.reserve([reserve[n][1] for n in again]) if again else []
        except GateUnavailable as error:
            log.warning("gate_unavailable", error_type=str(error), claims=len(doubted))
            down = _gate_unavailable()
            for n in doubted:
                gate_results[n] = down
            return
        except StoreError as error:
            log.warning("claim_store_unreadable", error_type=type(error).__name__)
            unread = _store_unavailable()
            for n in doubted:
                gate_results[n] = unread
            return
        for n, verdict in zip(doubted, verdicts, strict=True):
            if verdict is Verdict.PENDING:
                gate_results[n] = pending
        for n, got in zip(again, retried, strict=True):
            # Refused as claimed already again: another claim of theirs came between.
            gate_results[n] = pending if got.outcome in CLAIMED_ALREADY else got

    def _counted_in(self, offer: _Offer, outcome: ReserveOutcome) -> dict[str, tuple[str, str]]:
        """The pools a refusal counts the person's vouchers in: the offer's own for the
        pool's limit, every pool of the campaign for the campaign's."""
        if outcome is ReserveOutcome.ALREADY_CLAIMED:
            return {offer.pool: (offer.round_id, offer.channel_id)}
        row = self._cache.get(offer.campaign_id)
        assert row is not None, "the campaign made the offer a moment ago"
        return {
            pool_key(offer.campaign_id, r.id, channel_id): (r.id, channel_id)
            for r in row.config.rounds
            for channel_id in r.stock
        }

    def _gate_refusal(
        self, reserved: ReserveRequest, offer: _Offer, outcome: ReserveOutcome
    ) -> ClaimResult:
        if outcome is ReserveOutcome.UNKNOWN_STOCK and offer.stocked:
            # The campaign stocks it, the gate does not hold it: the gate lost
            # it (Redis restarted or flushed). Never a guess: retry shortly.
            self._on_gate_lost(offer.campaign_id)
            lost = Unavailable("gate_rebuilding", "the claim gate is being rebuilt; retry")
            return refusal_answer(lost, http_status(lost))
        if outcome is ReserveOutcome.SOLD_OUT:
            self._mark_sold_out(reserved.pool, reserved.template_id)
        elif outcome is ReserveOutcome.UNKNOWN_STOCK:
            self._cache.sold_out.add((reserved.pool, reserved.template_id))
        refused = gate_refusal(outcome)
        return refusal_answer(refused, http_status(refused))

    def _mark_sold_out(self, pool: str, template_id: str) -> None:
        """Refuse the template of the pool from memory from now on, and tell the others once."""
        flag = (pool, template_id)
        if flag not in self._cache.sold_out:
            self._cache.sold_out.add(flag)
            self._on_sold_out(pool, template_id)

    def _commit(
        self,
        pending: list[tuple[int, PendingClaim]],
        results: list[ClaimResult | None],
        handed: set[int],
        room: int,
    ) -> None:
        rt = self._rt
        claims = [p for _, p in pending]
        try:
            future = self.committer.submit(claims, room=room)
        except Unavailable as closing:
            # It never reached the writer: the stock goes straight back.
            tell_gate(rt.gate.release, "release", [(c.request, c.claim_seq) for c in claims])
            refused = refusal_answer(closing, http_status(closing))
            for i, _ in pending:
                results[i] = refused
            return
        handed.update(i for i, _ in pending)
        try:
            outcomes = future.result(timeout=rt.settings.claim_commit_timeout_s)
        except FutureTimeout:
            # Still being written: the committer will settle it either way.
            pending_refusal = Unavailable(
                "commit_timeout",
                "the claim is still being committed; retry with the same Idempotency-Key",
            )
            refused = refusal_answer(pending_refusal, http_status(pending_refusal))
            for i, _ in pending:
                results[i] = refused
            return
        refusals: dict[int, ClaimResult] = {}  # the committer refuses many claims with one error
        for (i, claim), outcome in zip(pending, outcomes, strict=True):
            if isinstance(outcome, Answer):
                replayed = outcome is not claim.answer
                results[i] = ClaimResult(
                    "replayed" if replayed else "issued", outcome, replayed=replayed
                )
            else:
                assert outcome is not None
                alike = refusals.get(id(outcome))
                if alike is None:
                    alike = refusals[id(outcome)] = refusal_answer(outcome, http_status(outcome))
                results[i] = alike

    def _offer(self, channel_id: str, request: ClaimRequest, now: datetime) -> _Offer | LequanError:
        """What a campaign's round offers of one template in this channel now, or why not.

        Decided once per batch for every claim of the same template: none of
        it depends on the person.
        """
        row = self._cache.get(request.campaign_id)
        if row is None:
            return NotFound("campaign_not_found", f"no campaign {request.campaign_id}")
        config = row.config
        pool = pool_key(request.campaign_id, request.round_id, channel_id)
        try:
            template = offered_template(
                status=row.status,
                config=config,
                round_times=row.rounds.get(request.round_id),
                round_id=request.round_id,
                channel_id=channel_id,
                template_id=request.template_id,
                budget_room_fen=self._cache.budget_room.get(request.campaign_id),
                sold_out=(pool, request.template_id) in self._cache.sold_out,
                now=now,
            )
        except LequanError as refusal:
            return refusal
        if isinstance(template, TradeIn):
            return _TRADE_IN_IS_APPLIED_FOR
        release_at = row.rounds[request.round_id][0]
        valid_from, valid_until = config.validity.window(now)
        stocked = any(
            r.id == request.round_id and template.id in r.stock.get(channel_id, {})
            for r in config.rounds
        )
        return _Offer(
            campaign_id=request.campaign_id,
            round_id=request.round_id,
            channel_id=channel_id,
            template_id=template.id,
            face_fen=template.face_fen,
            pool=pool,
            limit=config.limits.per_person_per_round_per_channel,
            campaign_limit=config.limits.per_person_per_campaign,
            eligibility=config.eligibility,
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=now,
            stocked=stocked,
            release_at=release_at,
        )


@dataclass(frozen=True, slots=True)
class _Offer:
    """One template of one round in one channel, as a batch of claims sees it."""

    campaign_id: str
    round_id: str
    channel_id: str
    template_id: str
    face_fen: int
    pool: str
    limit: int
    campaign_limit: int
    eligibility: Eligibility
    valid_from: datetime
    valid_until: datetime
    issued_at: datetime
    stocked: bool  # the campaign's configuration gives this pool stock of the template
    release_at: datetime  # the round's, as stored (the risk rules' new_account reads it)
    _text: list[str] = field(default_factory=list, compare=False)

    def reserve_request(self, person_id: str) -> ReserveRequest:
        return ReserveRequest(
            pool=self.pool,
            template_id=self.template_id,
            person_id=person_id,
            limit=self.limit,
            campaign_id=self.campaign_id,
            campaign_limit=self.campaign_limit,
        )

    def voucher(self, voucher_id: str, person_id: str, claim_seq: int) -> VoucherRow:
        return VoucherRow(
            id=voucher_id,
            campaign_id=self.campaign_id,
            round_id=self.round_id,
            channel_id=self.channel_id,
            template_id=self.template_id,
            person_id=person_id,
            claim_seq=claim_seq,
            face_fen=self.face_fen,
            state=VoucherState.ISSUED,
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            issued_at=self.issued_at,
            version=1,
            redemption_id=None,
        )

    def answer(self, voucher_id: str) -> Answer:
        """The "issued" answer (``views.voucher_body``), its shared parts made once per batch.

        Only the voucher id differs between the claims of one offer, so the
        stored JSON is the rendered template with the id put in.
        """
        if not self._text:
            self._text.append(issued_text(self.voucher(ID_SLOT, "", 0)))
        return Answer.rendered(201, self._text[0].replace(ID_SLOT, voucher_id, 1))


def _answer_the_rest(results: list[ClaimResult | None], refusal: LequanError) -> None:
    answer = refusal_answer(refusal, http_status(refusal))
    for i, result in enumerate(results):
        if result is None:
            results[i] = answer


_TRADE_IN_IS_APPLIED_FOR = Conflict(
    "trade_in_is_applied_for",
    "a trade-in voucher is applied for at /v1/trade-in/applications, never claimed",
)


def _gate_unavailable() -> Unavailable:
    return Unavailable("gate_unavailable", "the claim gate cannot be reached; retry shortly")


def _store_unavailable() -> Unavailable:
    return Unavailable("store_unavailable", "the store cannot be read; retry")


def _ineligible(
    offer: _Offer, residence: str, location: str | None, blacklisted: bool
) -> LequanError | None:
    reasons = eligibility_reasons(
        offer.eligibility,
        residence_region=residence,
        location_region=location,
        blacklisted=blacklisted,
    )
    if not reasons:
        return None
    return Conflict(
        "ineligible",
        "; ".join(r.message for r in reasons),
        details={"reasons": [{"code": r.code, "message": r.message} for r in reasons]},
    )
