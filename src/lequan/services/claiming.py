"""First-come claiming: cheap refusals from memory, an atomic reservation in
the gate, then the group commit (``group_commit``) before anyone hears "issued".

A batch's claims are decided together: one offer per template (the
domain's ``offered_template``), one read of the claimants, one gate call,
and each claim handed to the writer with its reservation, its key held.

A round with a start window (``fair_start``) takes the claims of its first
seconds differently: each is entered in the round's draw and waits (``Pending``,
not a thread); the draw reserves for them in the order its seed gives, and
each is then committed like any other. A claim arriving after the window
waits until the draw has served every entry, then goes first come, first
served.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

import structlog

from lequan.domain.campaigns import (
    Eligibility,
    eligibility_reasons,
)
from lequan.domain.claims import offered_template
from lequan.domain.errors import Conflict, LequanError, NotFound, Unavailable
from lequan.domain.fair_start import START_WINDOW_INTAKE_S_MAX, START_WINDOW_S_MAX, score
from lequan.domain.risk import CompiledClaimRules
from lequan.domain.templates import TradeIn
from lequan.domain.vouchers import VoucherState
from lequan.ports import (
    DrawEntry,
    DrawResult,
    EntryOutcome,
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
from lequan.services.claim_requests import ClaimRequest
from lequan.services.fair_start import StartDraws, draw_id, ticket_of, window_close
from lequan.services.gatekeeper import CLAIMED_ALREADY, Refusal, Verdict, check_refusals
from lequan.services.group_commit import GroupCommitter, Outcome, PendingClaim, tell_gate
from lequan.services.idempotency import Answer, Idempotency, in_flight, replay_or_refuse
from lequan.services.live import record_claims
from lequan.services.risk import Candidate, ClaimScreen
from lequan.services.runtime import Runtime
from lequan.services.views import error_body, http_status, new_ids

__all__ = ["ClaimRequest", "ClaimService", "Pending", "Waiting", "wait_entered"]

log = structlog.get_logger(__name__)

# The answers at once for a claim that waits for a round's draw (``accepted``): the
# channel sends it again, with its key, for the answer.
ACCEPTED_STATUS = 202
ENTERED = "entered"  # entered in the draw, with its ticket
QUEUED = "queued"  # came after the window: served first come, first served after the draw
ACCEPTED_OUTCOMES = frozenset({ENTERED, QUEUED})

# One claim's answer slot while a batch is decided: answered, waiting for a draw, or not yet.
_Slot: TypeAlias = "ClaimResult | Pending | None"


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
        self.draws: StartDraws[_Entered] = StartDraws(
            rt, on_drawn=self._drawn, on_given_up=self._given_up
        )
        # Claims that waited for a round's draw, served once it is: threads as many as
        # the batch claims' (each waits for its commit), in the order they came.
        self._later_pool = ThreadPoolExecutor(
            s.claim_batch_threads_max, thread_name_prefix="lequan-after-draw"
        )

    def close(self) -> None:
        self.draws.close()
        self._later_pool.shutdown(wait=True)
        self.committer.close()

    @property
    def entered_wait_s(self) -> float:
        """The longest a claim entered in a draw may wait for its answer: the window, its
        intake, the draw, the commit."""
        s = self._rt.settings
        return (
            START_WINDOW_S_MAX
            + START_WINDOW_INTAKE_S_MAX
            + s.draw_wait_s
            + s.claim_commit_timeout_s
        )

    def claim(self, channel_id: str, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        """Answer every request, in order; refusals are answers too, never exceptions.

        A claim entered in a round's draw is waited for here, on the caller's thread
        (the HTTP layer waits with ``claim_or_hold`` instead, on its event loop).
        """
        got = self.claim_or_hold(channel_id, requests)
        waiting = next((g for g in got if isinstance(g, Pending)), None)
        if waiting is not None:  # one per call: wait for it once, then read each answer
            wait_entered(waiting, timeout_s=self.entered_wait_s)
        return [g if isinstance(g, ClaimResult) else wait_entered(g, timeout_s=0) for g in got]

    def accepted(self, pending: Pending) -> ClaimResult:
        """The answer at once (``Prefer: respond-async``) for a claim waiting for a
        round's draw: 202 ``entered`` with its ticket, or ``queued`` after the window,
        and when to send it again (its key) for the answer. The claim goes on."""
        assert pending.ready_at is not None, "a claim waits for a draw that has a close"
        s = self._rt.settings
        left_s = (pending.ready_at - self._rt.clock.now()).total_seconds()
        retry_after_s = max(1, math.ceil(left_s + s.draw_grace_ms / 1000))
        if pending.ticket is None:
            body: dict[str, object] = {"status": QUEUED, "retry_after_s": retry_after_s}
            return ClaimResult(QUEUED, Answer.of(ACCEPTED_STATUS, body))
        body = {"status": ENTERED, "draw_ticket": pending.ticket, "retry_after_s": retry_after_s}
        return ClaimResult(ENTERED, Answer.of(ACCEPTED_STATUS, body))

    def claim_or_hold(
        self, channel_id: str, requests: Sequence[ClaimRequest]
    ) -> list[ClaimResult | Pending]:
        """Answer every request, in order; for a claim entered in a round's draw (or
        waiting for it to be served), a ``Pending``: its ``Waiting`` is done once the
        claims of this call that wait are all answered."""
        assert len(requests) <= self._rt.settings.claim_batch_items_max
        rt = self._rt
        now = rt.clock.now()
        results: list[_Slot] = [None] * len(requests)
        held: list[int] = []
        handed: set[int] = set()  # their keys now belong to the group committer
        waiting = Waiting()
        try:
            self._hold_or_replay(channel_id, requests, results, held)
            self._claim_held(channel_id, requests, results, now, handed=handed, waiting=waiting)
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
            waiting.seal()
        answered = [r for r in results if r is not None]
        assert len(answered) == len(requests)
        record_claims(
            rt.pulse,
            now,
            channel_id,
            (
                (request.campaign_id, result.outcome)
                for request, result in zip(requests, answered, strict=True)
                if isinstance(result, ClaimResult) and not result.replayed
            ),
        )
        return answered

    def _hold_or_replay(
        self,
        channel_id: str,
        requests: Sequence[ClaimRequest],
        results: list[_Slot],
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
        results: list[_Slot],
        now: datetime,
        *,
        handed: set[int],
        waiting: Waiting,
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
        if any(offer.window_close is not None for _, _, offer, _ in reserve):
            reserve = self._fair_start(
                requests, results, reserve, now, handed=handed, waiting=waiting
            )
        self._first_come(requests, results, reserve, handed)

    def _first_come(
        self,
        requests: Sequence[ClaimRequest],
        results: list[_Slot],
        reserve: list[tuple[int, ReserveRequest, _Offer, str]],
        handed: set[int],
    ) -> None:
        """Reserve in the gate and commit, in order: room in the commit queue first."""
        rt = self._rt
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
        results: list[_Slot],
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
        results: list[_Slot],
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

    def _fair_start(
        self,
        requests: Sequence[ClaimRequest],
        results: list[_Slot],
        reserve: list[tuple[int, ReserveRequest, _Offer, str]],
        now: datetime,
        *,
        handed: set[int],
        waiting: Waiting,
    ) -> list[tuple[int, ReserveRequest, _Offer, str]]:
        """Enter the claims that came inside a round's start window in its draw (their
        slots become ``Pending``); those that came after it wait for its draw. The
        claims to serve first come, first served now, in order."""
        first_come: list[tuple[int, ReserveRequest, _Offer, str]] = []
        entering: dict[tuple[str, str, datetime], list[tuple[int, ReserveRequest, _Offer, str]]]
        entering = defaultdict(list)
        after: dict[tuple[str, str, datetime], list[tuple[int, ReserveRequest, _Offer, str]]]
        after = defaultdict(list)
        for item in reserve:
            offer = item[2]
            close, draw_close = offer.window_close, offer.draw_close
            if (
                close is None
                or draw_close is None
                or self.draws.is_drawn(draw_id(offer.campaign_id, offer.round_id))
            ):
                first_come.append(item)
                continue
            # Pressed inside the window by the channel's word, and here before the
            # draw stops taking entries; a time later than ours counts as now.
            pressed = requests[item[0]].pressed_at
            at = now if pressed is None else min(pressed, now)
            group = (offer.campaign_id, offer.round_id, draw_close)
            (entering if at < close and now < draw_close else after)[group].append(item)
        for group, items in entering.items():
            closed = self._enter(requests, results, items, group, handed=handed, waiting=waiting)
            if closed:
                after[group].extend(closed)
        for group, items in after.items():
            self._after_the_draw(requests, results, items, group, handed=handed, waiting=waiting)
        first_come.sort(key=lambda item: item[0])
        return first_come

    def _after_the_draw(
        self,
        requests: Sequence[ClaimRequest],
        results: list[_Slot],
        items: list[tuple[int, ReserveRequest, _Offer, str]],
        group: tuple[str, str, datetime],
        *,
        handed: set[int],
        waiting: Waiting,
    ) -> None:
        """Claims that came after a round's window while its draw is still serving: each
        waits (``Pending``, no thread) and is served first come, first served once the
        draw has served every entry, in the order they came; ``draw_pending`` if the
        draw stops moving ``draw_wait_s`` past its start (the window and its intake).
        ``group``'s time is that start: when the draw stops taking entries."""
        campaign_id, round_id, close = group
        room = self.draws.room(len(items))
        if room < len(items):
            full = refusal_answer(_WAITING_FULL, http_status(_WAITING_FULL))
            for i, _, _, _ in items[room:]:
                results[i] = full
            items = items[:room]
        if not items:
            return
        later = _Later(requests, items, waiting)
        waiting.expect(len(items))
        for i, _, _, _ in items:
            results[i] = Pending(waiting, i, ready_at=close)
            handed.add(i)  # its key is the later service's until it is answered
        self.draws.when_drawn(
            campaign_id=campaign_id,
            round_id=round_id,
            close_at=close,
            count=len(items),
            then=lambda drawn: self._resume(later, drawn=drawn),
        )

    def _resume(self, later: _Later, *, drawn: bool) -> None:
        """The draw is served (or will not be in time): claims that waited for it are
        served first come, first served on the pool of their own, in order."""
        if not drawn:
            self._answer_later(later, _DRAW_PENDING)
            return
        try:
            self._later_pool.submit(self._serve_later, later)
        except RuntimeError:  # the pool is shut down: the platform is stopping
            self._answer_later(later, _store_unavailable())

    def _serve_later(self, later: _Later) -> None:
        results: list[_Slot] = [None] * len(later.requests)
        handed: set[int] = set()
        # What the draw sold out is refused from memory, as a claim arriving now would be.
        gone = self._cache.sold_out
        to_serve = []
        for item in later.items:
            i, reserved, _offer, _person = item
            if (reserved.pool, reserved.template_id) in gone:
                results[i] = _SOLD_OUT_NOW
            else:
                to_serve.append(item)
        try:
            self._first_come(later.requests, results, to_serve, handed)
        except StoreError as error:
            log.warning("claim_store_unreadable", error_type=type(error).__name__)
            _answer_the_rest(results, _store_unavailable())
        except GateUnavailable as error:
            log.warning("gate_unavailable", error_type=str(error), claims=len(later.items))
            _answer_the_rest(results, _gate_unavailable())
        except Exception as error:  # every waiting claim gets an answer, whatever happened
            log.error("claims_after_the_draw_failed", error_type=type(error).__name__)
            _answer_the_rest(results, _store_unavailable())
        finally:
            self._rt.inflight.release_many(
                (later.requests[i].key.app_id, later.requests[i].key.key)
                for i, _, _, _ in later.items
                if i not in handed
            )
        answered = []
        for i, _, offer, _ in later.items:
            got = results[i]
            assert isinstance(got, ClaimResult), "a claim after the draw is answered"
            answered.append((offer, later.waiting, i, got))
        _answer_waiting(self._rt, answered)

    def _answer_later(self, later: _Later, refusal: LequanError) -> None:
        self._rt.inflight.release_many(
            (later.requests[i].key.app_id, later.requests[i].key.key) for i, _, _, _ in later.items
        )
        answer = refusal_answer(refusal, http_status(refusal))
        _answer_waiting(
            self._rt, [(offer, later.waiting, i, answer) for i, _, offer, _ in later.items]
        )

    def _enter(
        self,
        requests: Sequence[ClaimRequest],
        results: list[_Slot],
        items: list[tuple[int, ReserveRequest, _Offer, str]],
        group: tuple[str, str, datetime],
        *,
        handed: set[int],
        waiting: Waiting,
    ) -> list[tuple[int, ReserveRequest, _Offer, str]]:
        """Enter claims in one round's draw; those the draw has closed to, to be served
        after it (pressed in the window and here during its intake by this process's
        clock, but past it by the gate's turn)."""
        rt = self._rt
        campaign_id, round_id, close = group
        seed = self.draws.seed(campaign_id, round_id)
        if seed is None:  # approved without a draw (it cannot be, as approval draws): as before
            return items
        room = self.draws.room(len(items))
        if room < len(items):
            full = refusal_answer(_WAITING_FULL, http_status(_WAITING_FULL))
            for i, _, _, _ in items[room:]:
                results[i] = full
            items = items[:room]
        entries = []
        for i, reserved, _offer, _person in items:
            ticket = ticket_of(rt, campaign_id=campaign_id, round_id=round_id, key=requests[i].key)
            entries.append(DrawEntry(ticket, score(seed, ticket), reserved, self.draws.owner))
        try:
            outcomes = rt.gate.enter(
                draw_id(campaign_id, round_id), entries, entries_max=rt.settings.draw_entries_max
            )
        except GateUnavailable as error:
            log.warning("gate_unavailable", error_type=str(error), claims=len(entries))
            down = _gate_unavailable()
            refused = refusal_answer(down, http_status(down))
            for i, _, _, _ in items:
                results[i] = refused
            return []
        entered: list[_Entered] = []
        closed: list[tuple[int, ReserveRequest, _Offer, str]] = []
        for item, entry, outcome in zip(items, entries, outcomes, strict=True):
            i, reserved, offer, person_id = item
            if outcome in (EntryOutcome.ENTERED, EntryOutcome.REJOINED):
                entered.append(
                    _Entered(
                        entry.ticket,
                        entry.score,
                        reserved,
                        offer,
                        person_id,
                        requests[i].key,
                        waiting,
                        i,
                    )
                )
                results[i] = Pending(waiting, i, ticket=entry.ticket, ready_at=close)
                handed.add(i)  # its key is the draw's until it is answered
            elif outcome is EntryOutcome.CLOSED:
                closed.append(item)
            else:
                refusal = _ENTRY_REFUSALS[outcome]
                results[i] = _ticketed(refusal_answer(refusal, http_status(refusal)), entry.ticket)
        if entered:
            waiting.expect(len(entered))
            self.draws.add(
                campaign_id=campaign_id, round_id=round_id, close_at=close, items=entered
            )
        return closed

    def _drawn(self, drawn: list[tuple[_Entered, DrawResult]]) -> None:
        """What the draw gave claims this process holds: reservations go to the group
        commit, refusals are answered (on the drawer's thread; nothing here waits for
        the commit)."""
        now_s = time.monotonic()
        reserve = [(n, h.request, h.offer, h.person_id) for n, (h, _got) in enumerate(drawn)]
        gate_results: list[ReserveResult | LequanError] = [
            _DRAW_PENDING if got.outcome is None else ReserveResult(got.outcome, got.claim_seq, 0)
            for _h, got in drawn
        ]
        doubted = [
            n
            for n, got in enumerate(gate_results)
            if isinstance(got, ReserveResult) and got.outcome in CLAIMED_ALREADY
        ]
        if doubted:
            self._check_claimed_already(reserve, gate_results, doubted)
        answered: list[tuple[_Entered, ClaimResult]] = []
        pending: list[tuple[_Entered, PendingClaim]] = []
        voucher_ids = iter(new_ids("v", len(drawn)))
        # One refusal per kind and pool, shared by the claims it refuses (as ``_reserve``).
        refusals: dict[tuple[ReserveOutcome, str, str] | int, ClaimResult] = {}
        for (h, got), decided in zip(drawn, gate_results, strict=True):
            if isinstance(decided, LequanError):
                refused = refusals.get(id(decided))
                if refused is None:
                    refused = refusals[id(decided)] = refusal_answer(decided, http_status(decided))
                answered.append((h, _ticketed(refused, h.ticket)))
            elif decided.outcome is not ReserveOutcome.OK:
                alike = (decided.outcome, h.request.pool, h.request.template_id)
                refused = refusals.get(alike)
                if refused is None:
                    refused = refusals[alike] = self._gate_refusal(
                        h.request, h.offer, decided.outcome
                    )
                answered.append((h, _ticketed(refused, h.ticket)))
            else:
                voucher = h.offer.voucher(
                    next(voucher_ids), h.person_id, decided.claim_seq, draw_ticket=h.ticket
                )
                claim = PendingClaim(
                    request=h.request,
                    claim_seq=decided.claim_seq,
                    voucher=voucher,
                    key=h.key,
                    answer=h.offer.drawn_answer(voucher.id, h.ticket),
                    reserved_at=now_s - got.age_s,  # granted when the drawer served it
                )
                pending.append((h, claim))
        if answered:
            self._rt.inflight.release_many((h.key.app_id, h.key.key) for h, _ in answered)
            _resolve(self._rt, answered)
        if pending:
            self._commit_drawn(pending)

    def _commit_drawn(self, pending: list[tuple[_Entered, PendingClaim]]) -> None:
        rt = self._rt
        claims = [c for _, c in pending]
        try:
            self.committer.make_room(len(claims), wait_s=rt.settings.claim_queue_wait_ms / 1000)
            future = self.committer.submit(claims, room=len(claims))
        except Unavailable as refused:
            # Never reached the writer: the stock goes back, to the next in the order.
            tell_gate(rt.gate.release, "release", [(c.request, c.claim_seq) for c in claims])
            rt.inflight.release_many((c.key.app_id, c.key.key) for c in claims)
            answer = refusal_answer(refused, http_status(refused))
            _resolve(rt, [(h, _ticketed(answer, h.ticket)) for h, _ in pending])
            return

        def committed(done: Future[list[Outcome]]) -> None:
            outcomes = done.result()
            answered: list[tuple[_Entered, ClaimResult]] = []
            for (h, claim), outcome in zip(pending, outcomes, strict=True):
                if isinstance(outcome, Answer):
                    replayed = outcome is not claim.answer
                    answered.append(
                        (h, ClaimResult("replayed" if replayed else "issued", outcome, replayed))
                    )
                else:
                    assert outcome is not None
                    answer = refusal_answer(outcome, http_status(outcome))
                    answered.append((h, _ticketed(answer, h.ticket)))
            _resolve(rt, answered)

        future.add_done_callback(committed)

    def _given_up(self, entered: list[_Entered]) -> None:
        """Claims whose draw did not reach them in time (or the process is stopping):
        answered ``draw_pending``; their entries stay, and a retry with the same key
        finds its entry again while the window is open."""
        self._rt.inflight.release_many((h.key.app_id, h.key.key) for h in entered)
        late = refusal_answer(_DRAW_PENDING, http_status(_DRAW_PENDING))
        _resolve(self._rt, [(h, _ticketed(late, h.ticket)) for h in entered])

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

    def _recheck_sold_out(self, pool: str, template_id: str) -> None:
        """A pool known sold out before the campaign's last refresh: sold out still if
        the gate has none of the template left (one read), so its flood is refused
        from memory again before the risk rules judge and count it."""
        try:
            left = self._rt.gate.remaining(pool, template_id)
        except GateUnavailable:
            return  # the reservation will say
        self._cache.recheck.discard((pool, template_id))
        if left == 0:
            self._cache.sold_out.add((pool, template_id))

    def _mark_sold_out(self, pool: str, template_id: str) -> None:
        """Refuse the template of the pool from memory from now on, and tell the others once."""
        flag = (pool, template_id)
        if flag not in self._cache.sold_out:
            self._cache.sold_out.add(flag)
            self._on_sold_out(pool, template_id)

    def _commit(
        self,
        pending: list[tuple[int, PendingClaim]],
        results: list[_Slot],
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
        if (pool, request.template_id) in self._cache.recheck:
            self._recheck_sold_out(pool, request.template_id)
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
        release_at, _ends_at = row.rounds[request.round_id]
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
            window_close=window_close(config, release_at),
            draw_close=config.draw_close(release_at),
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
    # When the round's start window closes (the fair start); None: the round has none.
    window_close: datetime | None = None
    # When its draw stops taking entries pressed in the window (the intake's end).
    draw_close: datetime | None = None
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

    def voucher(
        self, voucher_id: str, person_id: str, claim_seq: int, *, draw_ticket: str | None = None
    ) -> VoucherRow:
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
            draw_ticket=draw_ticket,
        )

    def answer(self, voucher_id: str) -> Answer:
        """The "issued" answer (``views.voucher_body``), its shared parts made once per batch.

        Only the voucher id differs between the claims of one offer, so the
        stored JSON is the rendered template with the id put in.
        """
        if not self._text:
            self._text.append(issued_text(self.voucher(ID_SLOT, "", 0)))
        return Answer.rendered(201, self._text[0].replace(ID_SLOT, voucher_id, 1))

    def drawn_answer(self, voucher_id: str, ticket: str) -> Answer:
        """The "issued" answer of a claim a draw reserved for: ``answer`` with its ticket
        (the voucher's ``draw_ticket``) put in too."""
        if len(self._text) < 2:
            self._text[:] = [*self._text[:1]] or [issued_text(self.voucher(ID_SLOT, "", 0))]
            ticketed = self.voucher(ID_SLOT, "", 0, draw_ticket=_TICKET_SLOT)
            self._text.append(issued_text(ticketed))
        text = self._text[1].replace(ID_SLOT, voucher_id, 1).replace(_TICKET_SLOT, ticket, 1)
        return Answer.rendered(201, text)


def _answer_the_rest(results: list[_Slot], refusal: LequanError) -> None:
    answer = refusal_answer(refusal, http_status(refusal))
    for i, result in enumerate(results):
        if result is None:
            results[i] = answer


class Waiting:
    """The claims of one call that wait for a round's draw, answered one by one as the
    draw reaches them; ``done`` once every one is. One per call, not one per claim:
    a window holds a crowd of claims, and a future apiece (with its lock) was most of
    a claim's cost of entering and of the collector's time while it waited."""

    __slots__ = ("_left", "_lock", "done", "results")

    def __init__(self) -> None:
        self.results: dict[int, ClaimResult] = {}
        self._left = 1  # the call itself, until ``seal``: never done while being built
        self._lock = threading.Lock()
        self.done: Future[None] = Future()

    def expect(self, count: int) -> None:
        """``count`` more claims of the call wait (before any of them can be answered)."""
        with self._lock:
            self._left += count

    def seal(self) -> None:
        """The call has said which of its claims wait."""
        self._settle(1)

    def answer(self, index: int, result: ClaimResult) -> None:
        with self._lock:
            if index in self.results:
                return
            self.results[index] = result
        self._settle(1)

    def _settle(self, count: int) -> None:
        with self._lock:
            self._left -= count
            finished = self._left == 0
        if finished:
            self.done.set_result(None)


@dataclass(frozen=True, slots=True)
class Pending:
    """A claim's answer to come, in its call's ``Waiting``."""

    waiting: Waiting
    index: int
    # Entered in a round's draw: its ticket (None: it came after the window and waits
    # for the draw to be served).
    ticket: str | None = None
    # When the draw it waits for stops taking entries and begins to be served.
    ready_at: datetime | None = None


@dataclass(slots=True)
class _Entered:
    """A claim entered in a round's draw, waiting for what the draw gives it."""

    ticket: str
    score: int
    request: ReserveRequest
    offer: _Offer
    person_id: str
    key: Idempotency
    waiting: Waiting
    index: int


@dataclass(slots=True)
class _Later:
    """Claims that came after a round's window, waiting for its draw to be served."""

    requests: Sequence[ClaimRequest]
    items: list[tuple[int, ReserveRequest, _Offer, str]]
    waiting: Waiting


def wait_entered(pending: Pending, *, timeout_s: float) -> ClaimResult:
    """A waiting claim's answer; ``commit_timeout`` if it has none within ``timeout_s``
    (the claim goes on: a retry with the same key hears it)."""
    waiting = pending.waiting
    if not waiting.done.done():
        with contextlib.suppress(FutureTimeout):
            waiting.done.result(timeout=timeout_s)
    found = waiting.results.get(pending.index)
    return (
        found if found is not None else refusal_answer(_STILL_WAITING, http_status(_STILL_WAITING))
    )


def _resolve(rt: Runtime, answered: list[tuple[_Entered, ClaimResult]]) -> None:
    """Answer entered claims, and count them on the live figures per channel."""
    _answer_waiting(rt, [(h.offer, h.waiting, h.index, result) for h, result in answered])


def _answer_waiting(
    rt: Runtime, answered: Sequence[tuple[_Offer, Waiting, int, ClaimResult]]
) -> None:
    """Answer claims that waited, and count them on the live figures per channel."""
    now = rt.clock.now()
    by_channel: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for offer, _waiting, _index, result in answered:
        if not result.replayed:
            by_channel[offer.channel_id].append((offer.campaign_id, result.outcome))
    for channel_id, outcomes in by_channel.items():
        record_claims(rt.pulse, now, channel_id, outcomes)
    for _offer, waiting, index, result in answered:
        waiting.answer(index, result)


def _ticketed(result: ClaimResult, ticket: str) -> ClaimResult:
    """A refusal of a claim entered in a draw, with its ticket in ``details``: the
    person can find it in the published draw.

    Rendered from the refusal's text with the ticket put in: a window's losers are
    most of a crowd, and a ``json.dumps`` apiece was a good part of answering them.
    """
    if result.error is None or result.replayed:
        return result
    template = _TICKETED.get(id(result.answer))
    if template is None or template[0] is not result.answer:
        body = error_body(result.error)
        body["details"] = {**body.get("details", {}), "draw_ticket": _TICKET_SLOT}
        text = Answer.of(result.answer.status_code, body).json()
        if len(_TICKETED) >= _TICKETED_MAX:
            _TICKETED.clear()
        template = _TICKETED[id(result.answer)] = (result.answer, text)
    text = template[1].replace(_TICKET_SLOT, ticket, 1)
    answer = Answer.rendered(result.answer.status_code, text)
    return ClaimResult(result.outcome, answer, result.replayed, result.error)


# Refusals' rendered texts with a slot for the ticket, by the refusal's answer (kept
# with it, so an id reused by another answer is never taken for it).
_TICKET_SLOT = "@draw-ticket@"
_TICKETED: dict[int, tuple[Answer, str]] = {}
_TICKETED_MAX = 1000


_SOLD_OUT_NOW = refusal_answer(
    gate_refusal(ReserveOutcome.SOLD_OUT), http_status(gate_refusal(ReserveOutcome.SOLD_OUT))
)
_DRAW_PENDING = Unavailable(
    "draw_pending",
    "the claim is entered in the round's fair start, whose draw has not reached it yet; "
    "retry with the same Idempotency-Key",
)
_WAITING_FULL = Unavailable(
    "overloaded", "too many claims are waiting for a draw; retry with the same Idempotency-Key"
)
_STILL_WAITING = Unavailable(
    "commit_timeout",
    "the claim is still waiting for its draw or its commit; retry with the same Idempotency-Key",
)
_ENTRY_REFUSALS: dict[EntryOutcome, LequanError] = {
    EntryOutcome.HELD_ELSEWHERE: in_flight(),
    EntryOutcome.FULL: Unavailable(
        "claim_pending",
        "this person's claims in this round's draw are entered already; each is answered "
        "when the draw reaches it",
    ),
    EntryOutcome.OVER: Unavailable(
        "overloaded", "the round's draw holds as many entries as it may; retry"
    ),
}


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
