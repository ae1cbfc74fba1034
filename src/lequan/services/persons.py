"""Sign-up through a channel: real-name registration with consent, an
eligibility verdict with reasons, and a person's wallet.

A person is one human, found by the blind index of their ID number, however
many channel accounts they use; each channel binds one account to a person,
so limits per person cannot be dodged with a second account.

What a channel registers a person with (name, phone, residence region) is
that channel's account's own: another channel that knows the ID number
registers its own account and cannot change it, and eligibility in a
channel is decided on what that channel registered. A channel never learns
whether another registered the person: ``created`` says whether *its*
account is new, and it is answered an id of the person its own
(``channel_person_id``), never the internal one other channels share.
"""

from __future__ import annotations

from dataclasses import dataclass

from lequan.data import province_codes
from lequan.domain.campaigns import CampaignStatus, Reason, eligibility_reasons
from lequan.domain.errors import Conflict, InvalidInput, NotFound
from lequan.domain.identity import (
    mask_id_number,
    mask_name,
    mask_phone,
    normalize_id_number,
    normalize_name,
    normalize_phone,
)
from lequan.ports import DuplicateKey, KeyRing, UnitOfWork
from lequan.rows import VoucherRow
from lequan.services.idempotency import RecordAnswer
from lequan.services.runtime import Runtime

__all__ = [
    "Registration",
    "Verdict",
    "channel_person_id",
    "person_id_for",
    "register",
    "validate_region",
    "wallet",
]

CONSENT_VERSIONS = frozenset({"2024-01"})
PERSON_ID_PREFIX = "p_"


@dataclass(frozen=True, slots=True)
class Verdict:
    campaign_id: str
    eligible: bool
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True)
class Registration:
    # The person as this channel knows them (``channel_person_id``), and whether this
    # channel's account is new: nothing about other channels.
    person_id: str
    created: bool
    id_number_masked: str
    name_masked: str
    phone_masked: str
    region_code: str
    verdicts: tuple[Verdict, ...]


def validate_region(code: str | None, *, field: str) -> str | None:
    if code is None:
        return None
    if (
        len(code) != 6
        or not code.isascii()
        or not code.isdigit()
        or code[:2] not in province_codes()
    ):
        raise InvalidInput("invalid_region", f"{field} must be a 6-digit GB/T 2260 region code")
    return code


def person_id_for(bidx: str) -> str:
    """A stable, non-identifying person id derived from the blind index (internal:
    vouchers and limits are kept per person by it; no channel is told it)."""
    return PERSON_ID_PREFIX + bidx[:24]


def channel_person_id(keyring: KeyRing, *, channel_id: str, person_id: str) -> str:
    """The id a channel knows a person by: stable within the channel, and without the
    blind-index key nobody can tell whether two channels' ids are the same human."""
    return (
        PERSON_ID_PREFIX + keyring.blind_index("channel_person", f"{channel_id}:{person_id}")[:24]
    )


def register(
    rt: Runtime,
    *,
    channel_id: str,
    channel_user_id: str,
    id_number: str,
    name: str,
    phone: str,
    region_code: str,
    location_region: str | None,
    consent: bool,
    consent_version: str,
    record: RecordAnswer | None = None,
) -> Registration:
    """Register (or find) the person behind a channel account and say where they may claim."""
    id_number = normalize_id_number(id_number)
    name = normalize_name(name)
    phone = normalize_phone(phone)
    region = validate_region(region_code, field="region_code")
    assert region is not None
    location = validate_region(location_region, field="location_region")
    if not consent:
        raise InvalidInput("consent_required", "the person must consent to the use of their data")
    if consent_version not in CONSENT_VERSIONS:
        raise InvalidInput("invalid_consent_version", "unknown consent text version")
    keyring = rt.keyring
    bidx = keyring.blind_index("id_number", id_number)
    person_id = person_id_for(bidx)
    for attempt in range(2):
        with rt.store.unit_of_work() as uow:
            try:
                created = _bind(
                    uow,
                    rt,
                    channel_id=channel_id,
                    channel_user_id=channel_user_id,
                    person_id=person_id,
                    bidx=bidx,
                    id_number=id_number,
                    name=name,
                    phone=phone,
                    region=region,
                    consent_version=consent_version,
                )
                verdicts = _verdicts(uow, rt, bidx=bidx, region=region, location=location)
                registration = Registration(
                    person_id=channel_person_id(
                        keyring, channel_id=channel_id, person_id=person_id
                    ),
                    created=created,
                    id_number_masked=mask_id_number(id_number),
                    name_masked=mask_name(name),
                    phone_masked=mask_phone(phone),
                    region_code=region,
                    verdicts=verdicts,
                )
                if record is not None:
                    record(uow, registration)
                uow.commit()
                return registration
            except DuplicateKey:
                # Two registrations of the same person raced; the second look sees the first.
                if attempt == 1:
                    raise Conflict(
                        "registration_conflict", "the person was registered concurrently; retry"
                    ) from None
    raise AssertionError("unreachable")


def _bind(
    uow: UnitOfWork,
    rt: Runtime,
    *,
    channel_id: str,
    channel_user_id: str,
    person_id: str,
    bidx: str,
    id_number: str,
    name: str,
    phone: str,
    region: str,
    consent_version: str,
) -> bool:
    """Find or file the person, and bind this channel account to them with what this
    channel registered; True when the account is new."""
    now = rt.clock.now()
    bound = uow.people.account_person(channel_id, channel_user_id)
    if bound is not None and bound != person_id:
        raise Conflict("account_already_bound", "this channel account is bound to another person")
    if uow.people.person_by_id_number_bidx(bidx) is None:
        key_id, id_enc = rt.keyring.encrypt("id_number", id_number)
        uow.people.insert_person(
            {
                "id": person_id,
                "id_number_bidx": bidx,
                "id_number_enc": id_enc,
                "key_id": key_id,
                "consent_version": consent_version,
                "consent_at": now,
                "created_at": now,
            }
        )
    key_id, name_enc = rt.keyring.encrypt("name", name)
    _, phone_enc = rt.keyring.encrypt("phone", phone)
    identity = {
        "name_enc": name_enc,
        "phone_enc": phone_enc,
        "phone_bidx": rt.keyring.blind_index("phone", phone),
        "key_id": key_id,  # all of an account's fields share one key id
        "residence_region": region,
        "consent_version": consent_version,
        "consent_at": now,
    }
    if bound is not None:
        # The account that gave these attributes may change them; no other can.
        uow.people.update_account_identity(channel_id, channel_user_id, identity)
        return False
    if uow.people.person_account_in_channel(channel_id, person_id) is not None:
        raise Conflict(
            "person_already_bound",
            "this person is already registered in this channel with another account",
        )
    uow.people.insert_account(
        channel_id=channel_id,
        channel_user_id=channel_user_id,
        person_id=person_id,
        identity=identity,
        now=now,
    )
    return True


def _verdicts(
    uow: UnitOfWork, rt: Runtime, *, bidx: str, region: str, location: str | None
) -> tuple[Verdict, ...]:
    blacklisted = bool(uow.people.blacklisted([bidx]))
    verdicts = []
    for row in uow.campaigns.list_campaigns(
        statuses=(CampaignStatus.APPROVED, CampaignStatus.LIVE, CampaignStatus.PAUSED)
    ):
        reasons = eligibility_reasons(
            row.config.eligibility,
            residence_region=region,
            location_region=location,
            blacklisted=blacklisted,
        )
        verdicts.append(Verdict(row.id, not reasons, tuple(reasons)))
    return tuple(verdicts)


def wallet(
    rt: Runtime,
    *,
    channel_id: str,
    channel_user_id: str,
    after_id: str | None,
    limit: int,
) -> tuple[list[VoucherRow], str | None]:
    """The person's vouchers claimed in this channel, one page and the next cursor."""
    limit = max(1, min(limit, rt.settings.page_size_max))
    with rt.store.unit_of_work(readonly=True) as uow:
        person_id = uow.people.account_person(channel_id, channel_user_id)
        if person_id is None:
            raise NotFound("not_registered", "this channel account is not registered")
        rows = uow.vouchers.person_vouchers(
            person_id, channel_id=channel_id, after_id=after_id, limit=limit + 1
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)
