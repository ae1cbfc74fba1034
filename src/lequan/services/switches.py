"""The operators' switches: stop a campaign's redemptions, suspend a merchant.

Claims have their own switch (a campaign's ``pause``, in ``campaigns``); these
two stop spending. What each refuses, and why a capture of an earlier
authorization is or is not among it, is the domain's (``domain/redemption.py``).

Each action is one transaction with its audit line (the operator, the action,
the target, the reason), taken by a maker or a checker; refused (a viewer, an
unknown target, a bad reason) with nothing written. Pulling a switch that is
already where it is asked to be changes nothing and answers as things stand,
so two operators at two screens both see it done; the audit log keeps both
pulls (``changed``).

How soon it reaches a redemption: the process that took the action forgets
the campaign or its merchants at once (``rt.campaign_changed``,
``rt.merchants_changed``); every other process reads the store again within
``campaign_cache_ttl_s`` (the one-step redemption writer's caches, the only
ones on a redemption's path); quotes, authorizations, captures and the
one-step path a failed batch falls back to read the store in their own
transaction. A redemption already being decided when the switch commits may
still complete.
"""

from __future__ import annotations

import re
from dataclasses import replace

from lequan.domain.errors import InvalidInput, NotFound
from lequan.ports import UnitOfWork
from lequan.rows import CampaignRow, MerchantRow
from lequan.services.campaigns import ROLES_THAT_OPERATE, require_operator_role
from lequan.services.runtime import Runtime

__all__ = [
    "REASON_CHARS_MAX",
    "checked_reason",
    "get_merchant",
    "pause_redemptions",
    "reinstate_merchant",
    "resume_redemptions",
    "suspend_merchant",
]

REASON_CHARS_MAX = 200
# As a merchant file names a merchant (services/admin.py).
MERCHANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def checked_reason(reason: str | None, *, required: bool) -> str | None:
    """A reason as the audit log keeps it: 1-200 printable characters, trimmed."""
    if reason is None and not required:
        return None
    reason = (reason or "").strip()
    if not 1 <= len(reason) <= REASON_CHARS_MAX or not reason.isprintable():
        raise InvalidInput(
            "invalid_reason", f"a reason is 1-{REASON_CHARS_MAX} printable characters"
        )
    return reason


def pause_redemptions(
    rt: Runtime, campaign_id: str, *, actor: str, reason: str | None = None
) -> CampaignRow:
    """Refuse every new redemption and authorization of the campaign's vouchers
    (``redemptions_paused``); its claims are the other switch's."""
    return _switch_redemptions(rt, campaign_id, paused=True, actor=actor, reason=reason)


def resume_redemptions(
    rt: Runtime, campaign_id: str, *, actor: str, reason: str | None = None
) -> CampaignRow:
    """Let the campaign's vouchers be spent again."""
    return _switch_redemptions(rt, campaign_id, paused=False, actor=actor, reason=reason)


def _switch_redemptions(
    rt: Runtime, campaign_id: str, *, paused: bool, actor: str, reason: str | None
) -> CampaignRow:
    reason = checked_reason(reason, required=False)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_OPERATE)
        row = uow.campaigns.get_campaign(campaign_id)
        if row is None:
            raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
        # False: paused (or resumed) already, by this operator or another meanwhile.
        changed = uow.campaigns.set_redemptions_paused(campaign_id, paused=paused, now=now)
        uow.ledger.append_audit(
            actor=actor,
            action="campaign.redemptions_pause" if paused else "campaign.redemptions_resume",
            target=campaign_id,
            details=_details(reason, changed),
            now=now,
        )
        uow.commit()
    if changed:
        rt.campaign_changed(campaign_id)
    return replace(row, redemptions_paused=paused)


def suspend_merchant(rt: Runtime, merchant_id: str, *, reason: str, actor: str) -> MerchantRow:
    """Refuse the merchant's quotes, redemptions, authorizations and captures
    (``merchant_suspended``) until an operator reinstates it; a merchant import
    does not. A merchant suspended already keeps its first suspension."""
    checked = checked_reason(reason, required=True)
    assert checked is not None
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_OPERATE)
        _existing_merchant(uow, merchant_id)
        changed = uow.people.suspend_merchant(
            merchant_id, reason=checked, suspended_by=actor, now=now
        )
        uow.ledger.append_audit(
            actor=actor,
            action="merchant.suspend",
            target=merchant_id,
            details=_details(checked, changed),
            now=now,
        )
        after = _existing_merchant(uow, merchant_id)
        uow.commit()
    if changed:
        rt.merchants_changed()
    return after


def reinstate_merchant(rt: Runtime, merchant_id: str, *, reason: str, actor: str) -> MerchantRow:
    """Lift the merchant's suspension: it takes vouchers again."""
    checked = checked_reason(reason, required=True)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_OPERATE)
        _existing_merchant(uow, merchant_id)
        changed = uow.people.reinstate_merchant(merchant_id)
        uow.ledger.append_audit(
            actor=actor,
            action="merchant.reinstate",
            target=merchant_id,
            details=_details(checked, changed),
            now=now,
        )
        after = _existing_merchant(uow, merchant_id)
        uow.commit()
    if changed:
        rt.merchants_changed()
    return after


def get_merchant(rt: Runtime, merchant_id: str) -> MerchantRow:
    with rt.store.unit_of_work(readonly=True) as uow:
        return _existing_merchant(uow, merchant_id)


def _existing_merchant(uow: UnitOfWork, merchant_id: str) -> MerchantRow:
    if MERCHANT_ID.fullmatch(merchant_id) is None:
        raise InvalidInput("invalid_merchant", "a merchant id is 1-64 of letters, digits, _ -")
    merchant = uow.people.get_merchant(merchant_id)
    if merchant is None:
        raise NotFound("merchant_not_found", f"no merchant {merchant_id}")
    return merchant


def _details(reason: str | None, changed: bool) -> dict[str, object]:
    return {"changed": changed} if reason is None else {"changed": changed, "reason": reason}
