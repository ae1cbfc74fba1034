"""Claim-time risk: the features of a batch of claims, judged by the rules in force.

For a batch the claim service is about to reserve, ``ClaimScreen.screen``
computes every feature the rules in force need, for all the claims at once:
one call of the shared counters (the device's, the address's and the
network's claims lately; the identities a device showed and the devices an
identity used), one read of the store for the device and phone blacklists,
and the signals the channel sent. The domain judges each claim
(``CompiledClaimRules.judge``). A refused claim is answered ``risk_refused``
(403, ``details.reasons``); a held one gets a review item and the answer
``held_for_review`` (202, ``review_id``), both written in one transaction
with the answer stored under the claim's Idempotency-Key, so a retry replays
it. Neither reserves anything.

A signal the channel did not send, or a figure the counters could not give,
is unknown: a rule that needs it does not fire.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from lequan.domain.error_codes import ErrorCode
from lequan.domain.errors import AuthError, LequanError, Unavailable
from lequan.domain.risk import (
    ClaimBatch,
    ClaimVerdict,
    CompiledClaimRules,
    Fired,
    subnet_of,
)
from lequan.ports import StoreError
from lequan.ports.risk_counters import RiskCounters, RiskCountersUnavailable, Tallies
from lequan.rows import ReviewRow
from lequan.services.claim_answers import ClaimResult, refusal_answer
from lequan.services.claim_requests import ClaimRequest, ClaimSignals
from lequan.services.idempotency import Answer
from lequan.services.risk_rules import RiskRulebook
from lequan.services.runtime import Runtime
from lequan.services.views import http_status, new_ids

__all__ = ["HELD_FOR_REVIEW", "Candidate", "ClaimScreen", "ClaimSignals", "held_answer"]

log = structlog.get_logger(__name__)

HELD_FOR_REVIEW = "held_for_review"


_NO_SIGNALS = ClaimSignals()


@dataclass(slots=True)  # not frozen: a thousand a batch, and a frozen one is slower to make
class Candidate:
    """A claim about to be reserved, with what the claim service knows of it."""

    position: int  # among the batch's claims about to be reserved
    request: ClaimRequest
    person_id: str
    person_blacklisted: bool
    local_only: bool  # its campaign is open to some regions only
    release_at: datetime  # its round's release


def held_answer(review_id: str) -> Answer:
    """The answer to a claim a risk rule held: 202, the review it waits in."""
    return Answer.of(202, {"status": HELD_FOR_REVIEW, "review_id": review_id})


class ClaimScreen:
    """The risk rules' step of the claim path, for one process."""

    def __init__(self, rt: Runtime, rulebook: RiskRulebook, counters: RiskCounters) -> None:
        self._rt = rt
        self._rulebook = rulebook
        self._counters = counters

    @property
    def rules(self) -> CompiledClaimRules | None:
        """The claim rules in force; None when none is on (the claim path skips this step)."""
        return self._rulebook.current.claim

    def screen(
        self,
        channel_id: str,
        rules: CompiledClaimRules,
        candidates: Sequence[Candidate],
        now: datetime,
    ) -> list[ClaimResult | None]:
        """Each candidate's answer when a rule held or refused it; None where allowed."""
        signals = [c.request.signals or _NO_SIGNALS for c in candidates]
        verdicts = rules.judge_batch(self._features(channel_id, rules, candidates, signals, now))
        if not any(verdicts):
            return [None] * len(candidates)
        batch = _Batch(channel_id, candidates, signals, self._rulebook.current.version or 0, now)
        return self._answer(batch, verdicts)

    # -- the features --------------------------------------------------------------------

    def _features(
        self,
        channel_id: str,
        rules: CompiledClaimRules,
        candidates: Sequence[Candidate],
        signals: Sequence[ClaimSignals],
        now: datetime,
    ) -> ClaimBatch:
        """The features the rules in force read, a column each; the others left out."""
        size = len(candidates)
        devices = [s.device_id for s in signals]
        columns: dict[str, Sequence[Any]] = {"device_id": devices}
        if rules.ip_window_s is not None or rules.subnet_window_s is not None:
            columns["ip"] = [s.ip for s in signals]
        if rules.subnet_window_s is not None:
            v4, v6 = rules.ipv4_prefix, rules.ipv6_prefix
            columns["subnet"] = [
                None if s.ip is None else subnet_of(s.ip, ipv4_prefix=v4, ipv6_prefix=v6)
                for s in signals
            ]
        columns |= self._counted(rules, candidates, columns, now)
        if rules.region:
            columns["local_only"] = [c.local_only for c in candidates]
            columns["declared_region"] = [c.request.location_region for c in candidates]
            columns["network_region"] = [s.network_region for s in signals]
        if rules.person_blacklist:
            columns["person_blacklisted"] = [c.person_blacklisted for c in candidates]
        if rules.device_blacklist or rules.phone_blacklist:
            listed_devices, phones = self._blacklisted(channel_id, rules, candidates, devices)
            if listed_devices is not None:
                columns["device_blacklisted"] = [
                    None if d is None else d in listed_devices for d in devices
                ]
            if phones is not None:
                columns["phone_blacklisted"] = [
                    c.request.channel_user_id in phones for c in candidates
                ]
        if rules.new_account:
            ages = [s.account_age_s for s in signals]
            # Seconds since each round's release: a batch's claims share a round or two.
            since: dict[datetime, int] = {}
            for c in candidates:
                if c.release_at not in since:
                    since[c.release_at] = int((now - c.release_at).total_seconds())
            columns["account_age_s"] = ages
            columns["opened_before_release_s"] = [
                None if age is None else age - since[c.release_at]
                for age, c in zip(ages, candidates, strict=True)
            ]
        if rules.channel_risk:
            columns["channel_risk"] = [s.channel_risk for s in signals]
        return ClaimBatch(size, **columns)

    def _counted(
        self,
        rules: CompiledClaimRules,
        candidates: Sequence[Candidate],
        columns: Mapping[str, Sequence[Any]],
        now: datetime,
    ) -> dict[str, list[int | None]]:
        """The counted features of every candidate, from one call of the counters; a
        claim without the signal a count needs is left unknown."""
        size = len(candidates)
        groups: list[Tallies] = []
        places: list[tuple[tuple[str, ...], list[int]]] = []

        def tally(
            features: tuple[str, ...],
            window_s: int | None,
            prefix: str,
            keys: Sequence[str | None],
            members: Sequence[str | None] | None = None,
            *,
            mirror: str | None = None,
        ) -> None:
            if window_s is None:
                return
            if members is None:
                at = [n for n, key in enumerate(keys) if key is not None]
            else:
                at = [n for n, key in enumerate(keys) if key is not None and members[n]]
            if not at:
                return
            names = [prefix + str(keys[n]) for n in at]
            given = None if members is None else [str(members[n]) for n in at]
            groups.append(Tallies(window_s, names, given, mirror))
            places.append((features, at))

        devices = columns["device_id"]
        persons = [c.person_id for c in candidates]
        tally(("device_claims",), rules.device_window_s, "vd:", devices)
        tally(("ip_claims",), rules.ip_window_s, "vi:", columns.get("ip", ()))
        tally(("subnet_claims",), rules.subnet_window_s, "vn:", columns.get("subnet", ()))
        both = rules.device_identities_window_s
        if both is not None and both == rules.identity_devices_window_s:
            # One record of the (device, person) pairs counts both sides.
            pair = ("device_identities", "identity_devices")
            tally(pair, both, "dp:", devices, persons, mirror="pd:")
        else:
            tally(("device_identities",), both, "dp:", devices, persons)
            tally(("identity_devices",), rules.identity_devices_window_s, "pd:", persons, devices)
        counted: dict[str, list[int | None]] = {}
        if not groups:
            return counted
        try:
            figures = self._counters.count(groups, now_ms=int(now.timestamp() * 1000))
        except RiskCountersUnavailable as error:
            log.warning("risk_counters_unavailable", error_type=str(error), claims=size)
            return counted
        for (features, at), found in zip(places, figures, strict=True):
            for side, feature in enumerate(features):  # a mirrored group's: two sides
                column: list[int | None] = [None] * size
                for n, figure in zip(at, found[side * len(at) : (side + 1) * len(at)], strict=True):
                    column[n] = figure
                counted[feature] = column
        return counted

    def _blacklisted(
        self,
        channel_id: str,
        rules: CompiledClaimRules,
        candidates: Sequence[Candidate],
        devices: Sequence[str | None],
    ) -> tuple[set[str] | None, set[str] | None]:
        """(blacklisted devices among the candidates', accounts whose phone is
        blacklisted), each None when its rule is off or the store could not say."""
        device_ids = sorted({d for d in devices if d is not None}) if rules.device_blacklist else []
        if not device_ids and not rules.phone_blacklist:
            return None, None
        try:
            with self._rt.store.unit_of_work(readonly=True) as uow:
                listed = uow.risk.blacklisted_devices(device_ids) if device_ids else set()
                phones = (
                    uow.risk.blacklisted_phones(
                        channel_id, [c.request.channel_user_id for c in candidates]
                    )
                    if rules.phone_blacklist
                    else None
                )
        except StoreError as error:
            log.warning("risk_blacklists_unread", error_type=type(error).__name__)
            return None, None
        return (listed if rules.device_blacklist else None), phones

    # -- the answers ----------------------------------------------------------------------

    def _answer(
        self, batch: _Batch, verdicts: Sequence[ClaimVerdict | None]
    ) -> list[ClaimResult | None]:
        answers: list[ClaimResult | None] = [None] * len(batch.candidates)
        refusals: dict[tuple[str, ...], ClaimResult] = {}  # one answer per list of reasons
        held = [n for n, v in enumerate(verdicts) if v is not None and v.action == "review"]
        for n, verdict in enumerate(verdicts):
            if verdict is None or verdict.action != "refuse":
                continue
            codes = tuple(verdict.codes)
            answer = refusals.get(codes)
            if answer is None:
                answer = refusals[codes] = _refused(codes)
            answers[n] = answer
        if held:
            for n, result in zip(held, self._hold(batch, verdicts, held), strict=True):
                answers[n] = result
        log.info(
            "claims_screened",
            channel_id=batch.channel_id,
            claims=len(batch.candidates),
            refused=len(verdicts) - len(held) - verdicts.count(None),
            held=len(held),
            rules_version=batch.version,
        )
        return answers

    def _hold(
        self, batch: _Batch, verdicts: Sequence[ClaimVerdict | None], held: Sequence[int]
    ) -> list[ClaimResult]:
        """A review item for each held claim and its answer stored under its key, in one
        transaction; ``store_unavailable`` for them all if it fails (nothing held)."""
        review_ids = new_ids("rv", len(held))
        rows: list[ReviewRow] = []
        answers: list[Answer] = []
        keyed: list[dict[str, Any]] = []
        for n, review_id in zip(held, review_ids, strict=True):
            verdict = verdicts[n]
            assert verdict is not None
            request = batch.candidates[n].request
            rows.append(
                ReviewRow(
                    id=review_id,
                    kind="claim",
                    status="pending",
                    created_at=batch.now,
                    subject=_claim_subject(batch.channel_id, batch.candidates[n], batch.signals[n]),
                    reasons=[_fired_json(f) for f in verdict.fired],
                    rules_version=batch.version,
                    campaign_id=request.campaign_id,
                )
            )
            answer = held_answer(review_id)
            answers.append(answer)
            keyed.append(request.key.row(answer, batch.now))
        try:
            with self._rt.store.unit_of_work() as uow:
                with uow.pipeline():
                    uow.risk.add_reviews(rows)
                    uow.idempotency.store_answers(keyed)
                uow.commit()
        except StoreError as error:
            log.warning("claims_not_held", error_type=type(error).__name__, claims=len(held))
            down = Unavailable(ErrorCode.STORE_UNAVAILABLE, "the store cannot be written; retry")
            refused = refusal_answer(down, http_status(down))
            return [refused] * len(held)
        return [ClaimResult(HELD_FOR_REVIEW, answer) for answer in answers]


@dataclass(frozen=True, slots=True)
class _Batch:
    """The claims a rule held or refused, as one screening saw them."""

    channel_id: str
    candidates: Sequence[Candidate]
    signals: Sequence[ClaimSignals]
    version: int  # the rules' (0: none approved, which cannot hold anything)
    now: datetime


def _fired_json(fired: Fired) -> dict[str, Any]:
    """A rule that fired as its review keeps it: its reason code (a rule's, not an
    error's), its action and its figures.

    Built with ``dict(...)``: the error-code check reads every dict literal with a
    ``"code"`` key as an error body (tests/unit/test_error_codes.py).
    """
    return dict(code=fired.code.value, action=fired.action, figures=dict(fired.figures))


def _refused(codes: tuple[str, ...]) -> ClaimResult:
    error: LequanError = AuthError(
        ErrorCode.RISK_REFUSED,
        "the claim is refused by the platform's risk rules",
        details={"reasons": list(codes)},
    )
    return refusal_answer(error, http_status(error))


def _claim_subject(channel_id: str, candidate: Candidate, signals: ClaimSignals) -> dict[str, Any]:
    """What a held claim is, as its review keeps it: enough to issue it on approval."""
    request = candidate.request
    return {
        "channel_id": channel_id,
        "channel_user_id": request.channel_user_id,
        "person_id": candidate.person_id,
        "campaign_id": request.campaign_id,
        "round_id": request.round_id,
        "template_id": request.template_id,
        "location_region": request.location_region,
        "idempotency_key": request.key.key,
        "request_hash": request.key.request_hash,
        "signals": signals.as_json(),
    }
