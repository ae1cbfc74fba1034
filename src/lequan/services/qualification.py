"""Trade-in applications: a voucher is issued only once central has locked the
person's qualification for its category.

One application, in the order a crash anywhere leaves nothing behind::

    1. read      the campaign offers the template now; the person is registered,
                 eligible and below the category's items in this province
    2. record    the lock (``held``) in the store, before central hears of it
    3. ask       central to verify and lock a slot of (pseudonym, category);
                 refused: the lock is ``refused`` and the resident told why;
                 no answer: 503 ``central_unavailable``, nothing issued
    4. issue     one transaction: the voucher, its stock, its budget, the lock
                 ``issued``, and the ``voucher.issued`` event that confirms the
                 hold at central (the relay delivers it)

The lock's id comes from the app and its Idempotency-Key, so a retry asks
central for the same lock, which central answers as before. A crash between
3 and 4 leaves a ``held`` lock: ``release_stale`` gives it back (and central
lets its hold expire anyway). A voucher that expires or is voided unused
gives its qualification back (``release_for_voucher``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from lequan.domain.campaigns import eligibility_reasons
from lequan.domain.claims import offered_template
from lequan.domain.errors import Conflict, NotFound, Unavailable
from lequan.domain.ledger import issue_entry
from lequan.domain.templates import TradeIn
from lequan.domain.vouchers import VoucherState
from lequan.ports import DuplicateKey, UnitOfWork
from lequan.ports.central import (
    CentralPlatform,
    CentralUnavailable,
    LockOutcome,
    LockRequest,
)
from lequan.rows import CampaignRow, QualificationLockRow, VoucherRow
from lequan.services.idempotency import Idempotency
from lequan.services.runtime import Runtime
from lequan.services.views import new_id

__all__ = [
    "Application",
    "apply",
    "lock_id_for",
    "pseudonym_of",
    "release_for_voucher",
    "release_lock_of",
    "release_stale",
]

log = structlog.get_logger(__name__)

# What each refusal of central tells the resident.
_REFUSALS: dict[LockOutcome, tuple[str, str]] = {
    LockOutcome.USED_ELSEWHERE: (
        "qualification_used_elsewhere",
        "the person's qualification for this category is used in another province",
    ),
    LockOutcome.LIMIT_REACHED: (
        "qualification_limit_reached",
        "the person has used every subsidy of this category nationwide",
    ),
    LockOutcome.REVOKED: (
        "qualification_revoked",
        "the person's qualification for this category was revoked",
    ),
}


# Transactions an application may lose to the same person's other application.
_ISSUE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Application:
    channel_user_id: str
    campaign_id: str
    round_id: str
    template_id: str
    location_region: str | None = None


def lock_id_for(province_code: str, app_id: str, key: str) -> str:
    """The lock an application asks for: the same for every retry of one request,
    unique nationwide (the province's code first)."""
    digest = hashlib.sha256(f"{app_id}\x00{key}".encode()).hexdigest()[:32]
    return f"{province_code}-{digest}"


def _central(rt: Runtime) -> CentralPlatform:
    if rt.central is None:
        raise Conflict(
            "central_not_configured",
            "this province is not connected to the central platform: no trade-in vouchers",
        )
    return rt.central


def pseudonym_of(rt: Runtime, person_id: str) -> str:
    """The person's national pseudonym: stored, or evaluated by central (OPRF) now and
    stored for next time."""
    with rt.store.unit_of_work(readonly=True) as uow:
        person = uow.people.get_person(person_id)
    assert person is not None, "an account's person exists"
    if person.pseudonym is not None:
        return person.pseudonym
    id_number = rt.keyring.decrypt("id_number", person.key_id, person.id_number_enc)
    try:
        (pseudonym,) = _central(rt).pseudonyms([id_number])
    except CentralUnavailable:
        raise _central_down() from None
    with rt.store.unit_of_work() as uow:
        uow.people.set_pseudonym(person_id, pseudonym)
        uow.commit()
    return pseudonym


def _central_down() -> Unavailable:
    return Unavailable(
        "central_unavailable",
        "the central platform cannot verify the qualification now; nothing was issued, "
        "retry with the same Idempotency-Key",
        retry_after_s=5,
    )


def apply(rt: Runtime, idem: Idempotency, application: Application) -> VoucherRow:
    """Issue a trade-in voucher once central locked the qualification; raise the refusal."""
    now = rt.clock.now()
    lock_id = lock_id_for(rt.settings.province_code, idem.app_id, idem.key)
    with rt.store.unit_of_work(readonly=True) as uow:
        campaign = uow.campaigns.get_campaign(application.campaign_id)
        if campaign is None:
            raise NotFound("campaign_not_found", f"no campaign {application.campaign_id}")
        template = _offered(uow, campaign, idem.app_id, application, now)
        person_id = _eligible_person(uow, campaign, idem.app_id, application)
        existing = uow.qualifications.get_lock(lock_id)
        live = uow.qualifications.live_locks(person_id, template.category.value)
    central = _central(rt)  # asked only for what is applied for, and may be
    if existing is None and live >= template.items_max:
        raise Conflict(
            "qualification_limit_reached",
            f"the person holds {live} of the {template.items_max} "
            f"{template.category.value} subsidies a person may have",
        )
    pseudonym = pseudonym_of(rt, person_id)
    if existing is None:
        _record_lock(
            rt,
            lock_id=lock_id,
            person_id=person_id,
            campaign=campaign,
            template=template,
            now=now,
        )
    elif existing.state == "released":
        # Given back meanwhile (its hold ran out, or the sweep released it): the same
        # request asks central for the same lock again, which central takes if it may.
        _record_again(rt, lock_id, now)
    elif existing.state not in ("held", "refused"):
        raise Conflict("qualification_lock_settled", "this application was settled already")
    try:
        (result,) = central.lock(
            [
                LockRequest(
                    lock_id=lock_id,
                    pseudonym=pseudonym,
                    category=template.category.value,
                    items_max=template.items_max,
                    hold_s=rt.settings.trade_in_hold_s,
                )
            ]
        )
    except CentralUnavailable:
        raise _central_down() from None
    if result.outcome is not LockOutcome.LOCKED:
        with rt.store.unit_of_work() as uow:
            uow.qualifications.move_lock(lock_id, from_states=["held"], to="refused", now=now)
            uow.commit()
        code, message = _REFUSALS[result.outcome]
        raise Conflict(code, message)
    voucher: VoucherRow | None = None
    for attempt in range(_ISSUE_ATTEMPTS):
        try:
            voucher = _issue(
                rt,
                idem,
                campaign=campaign,
                template=template,
                lock_id=lock_id,
                person_id=person_id,
                application=application,
            )
            break
        except DuplicateKey:
            # The person's other application in this pool took the same claim slot at
            # the same moment: read the slots again.
            if attempt + 1 == _ISSUE_ATTEMPTS:
                raise
    if voucher is None:
        _give_back(rt, lock_id, reason="not_issued")
        raise Conflict("sold_out", "the vouchers of this category are gone")
    return voucher


def _offered(
    uow: UnitOfWork, campaign: CampaignRow, app_id: str, application: Application, now: datetime
) -> TradeIn:
    template = offered_template(
        status=campaign.status,
        config=campaign.config,
        round_times=campaign.rounds.get(application.round_id),
        round_id=application.round_id,
        channel_id=app_id,
        template_id=application.template_id,
        budget_room_fen=campaign.budget_fen - campaign.committed_fen,
        sold_out=False,
        now=now,
    )
    if not isinstance(template, TradeIn):
        raise Conflict(
            "not_a_trade_in_template",
            "this template is claimed through /v1/claims, not applied for",
        )
    return template


def _eligible_person(
    uow: UnitOfWork, campaign: CampaignRow, app_id: str, application: Application
) -> str:
    found = uow.people.claimants(app_id, [application.channel_user_id]).get(
        application.channel_user_id
    )
    if found is None:
        raise NotFound("not_registered", "this channel account is not registered")
    person_id, residence, blacklisted = found
    reasons = eligibility_reasons(
        campaign.config.eligibility,
        residence_region=residence,
        location_region=application.location_region,
        blacklisted=blacklisted,
    )
    if reasons:
        raise Conflict(
            "ineligible",
            "; ".join(r.message for r in reasons),
            details={"reasons": [{"code": r.code, "message": r.message} for r in reasons]},
        )
    return person_id


def _record_lock(
    rt: Runtime,
    *,
    lock_id: str,
    person_id: str,
    campaign: CampaignRow,
    template: TradeIn,
    now: datetime,
) -> None:
    try:
        with rt.store.unit_of_work() as uow:
            uow.qualifications.add_lock(
                QualificationLockRow(
                    id=lock_id,
                    person_id=person_id,
                    campaign_id=campaign.id,
                    template_id=template.id,
                    category=template.category.value,
                    state="held",
                    voucher_id=None,
                    created_at=now,
                    updated_at=now,
                )
            )
            uow.commit()
    except DuplicateKey:
        pass  # the same request, retried at the same moment: one row is enough


def _record_again(rt: Runtime, lock_id: str, now: datetime) -> None:
    with rt.store.unit_of_work() as uow:
        uow.qualifications.move_lock(lock_id, from_states=["released"], to="held", now=now)
        uow.commit()


def _issue(
    rt: Runtime,
    idem: Idempotency,
    *,
    campaign: CampaignRow,
    template: TradeIn,
    lock_id: str,
    person_id: str,
    application: Application,
) -> VoucherRow | None:
    """The voucher, with its stock and budget taken and the lock issued, in one
    transaction; None when the stock or the budget is gone."""
    now = rt.clock.now()
    valid_from, valid_until = campaign.config.validity.window(now)
    stock_key = (campaign.id, application.round_id, idem.app_id, template.id)
    with rt.store.unit_of_work() as uow:
        slots = uow.vouchers.claimed_slots(
            campaign.id, application.round_id, idem.app_id, [person_id]
        )
        voucher = VoucherRow(
            id=new_id("v"),
            campaign_id=campaign.id,
            round_id=application.round_id,
            channel_id=idem.app_id,
            template_id=template.id,
            person_id=person_id,
            claim_seq=1 + max((seq for _, seq in slots), default=0),
            face_fen=template.face_fen,
            state=VoucherState.ISSUED,
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=now,
            version=1,
            redemption_id=None,
        )
        uow.vouchers.insert_claims([voucher], [(idem.app_id, idem.key, idem.request_hash)], now)
        if not uow.campaigns.take_stock(stock_key, 1):
            return None
        if not uow.ledger.record(issue_entry(voucher.face_fen), campaign_id=campaign.id, now=now):
            return None
        if not uow.qualifications.move_lock(
            lock_id, from_states=["held", "refused"], to="issued", now=now, voucher_id=voucher.id
        ):
            # The sweep gave the lock back while this application waited (longer than
            # trade_in_hold_s): nothing is issued; the same request asks again.
            raise Unavailable(
                "qualification_hold_expired",
                "the qualification's hold ran out before the voucher was issued; nothing was "
                "issued: retry with the same Idempotency-Key",
                retry_after_s=1,
            )
        uow.ledger.add_outbox(
            event_id=new_id("e"),
            topic="voucher.issued",
            payload={
                "voucher_id": voucher.id,
                "lock_id": lock_id,
                "category": template.category.value,
                "campaign_id": campaign.id,
                "template_id": template.id,
                "face_fen": voucher.face_fen,
            },
            now=now,
        )
        uow.commit()
    return voucher


def _give_back(rt: Runtime, lock_id: str, *, reason: str) -> bool:
    """Release a lock that never got its voucher: locally, and at central through the
    outbox (delivered however long central is away)."""
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        if not uow.qualifications.move_lock(
            lock_id, from_states=["held", "refused"], to="released", now=now
        ):
            return False
        uow.ledger.add_outbox(
            event_id=new_id("e"),
            topic="qualification.released",
            payload={"lock_id": lock_id, "reason": reason},
            now=now,
        )
        uow.commit()
    return True


def release_stale(rt: Runtime, *, older_than_s: float, limit: int) -> int:
    """Give back the locks still ``held`` after ``older_than_s``: their application
    died between central's lock and the voucher's commit."""
    before = rt.clock.now() - timedelta(seconds=older_than_s)
    with rt.store.unit_of_work(readonly=True) as uow:
        stale = uow.qualifications.locks_held_since(before, limit)
    released = sum(_give_back(rt, lock.id, reason="abandoned") for lock in stale)
    if released:
        log.info("qualification_locks_released", locks=released)
    return released


def release_lock_of(
    uow: UnitOfWork, voucher_id: str, *, now: datetime
) -> QualificationLockRow | None:
    """In the caller's transaction: the voucher's issued lock released here, and returned
    (None for a voucher that holds none). Central learns it from the caller's event."""
    lock = uow.qualifications.lock_of_voucher(voucher_id)
    if lock is None or lock.state != "issued":
        return None
    uow.qualifications.move_lock(lock.id, from_states=["issued"], to="released", now=now)
    return lock


def release_for_voucher(uow: UnitOfWork, voucher: VoucherRow, *, topic: str, now: datetime) -> bool:
    """In the caller's transaction (the voucher expired or was voided unused): its lock
    released and central told. False for a voucher that holds no qualification."""
    lock = release_lock_of(uow, voucher.id, now=now)
    if lock is None:
        return False
    uow.ledger.add_outbox(
        event_id=new_id("e"),
        topic=topic,
        payload={"voucher_id": voucher.id, "lock_id": lock.id, "category": lock.category},
        now=now,
    )
    return True
