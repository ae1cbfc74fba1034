"""The risk review queue and the device and phone blacklists, worked by analysts.

Who may do what (docs/risk.md):

- an **analyst** decides review items (approve, reject) and keeps the
  blacklists; a **checker** may read the queue but not decide it, and a
  **maker** neither: those who write and approve the rules do not also
  decide the cases the rules hold. A viewer sees none of it (the queue
  holds addresses and device ids);
- makers, checkers and analysts keep the blacklists.

Every decision and every blacklist change is one transaction with its audit
entry naming the operator. Approving a held claim issues it through the
claim path like any claim (the gate, the group commit), under a key of the
review's own (``review:<id>``): it may still be refused (sold out, claimed
meanwhile), and that outcome is recorded on the item. An approval whose
claim could not be decided yet (the gate or the store down) leaves the item
approved without an outcome; approving it again finishes it. A review
``kind`` names what approving and rejecting mean: ``claim`` (issue it or
refuse it for good), ``redemption`` (release the held payable or claw it
back, ``services/redemption_risk.py``): a redemption's decision and the money
it moves are one transaction, its outcome recorded on the item at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from lequan.domain.error_codes import ErrorCode
from lequan.domain.errors import Conflict, IdempotencyError, InvalidInput, NotFound, Unavailable
from lequan.domain.identity import normalize_phone
from lequan.ports import UnitOfWork
from lequan.rows import ReviewRow, RiskBlacklistRow
from lequan.services.campaigns import require_operator_role
from lequan.services.claim_answers import ClaimResult
from lequan.services.claim_requests import ClaimSignals
from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Idempotency
from lequan.services.redemption_risk import claw_back, release
from lequan.services.runtime import Runtime

__all__ = [
    "ROLES_THAT_BLACKLIST",
    "ROLES_THAT_DECIDE",
    "ROLES_THAT_READ",
    "Claims",
    "approve_review",
    "blacklist_add",
    "blacklist_list",
    "blacklist_remove",
    "get_review",
    "list_reviews",
    "reject_review",
]

ROLES_THAT_DECIDE = frozenset({"analyst"})
ROLES_THAT_READ = frozenset({"analyst", "checker"})
ROLES_THAT_BLACKLIST = frozenset({"maker", "checker", "analyst"})
REVIEW_STATUSES = ("pending", "approved", "rejected")
REVIEW_KINDS = ("claim", "redemption")
BLACKLIST_KINDS = ("device", "phone")
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")
REASON = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


class Claims(Protocol):
    """The claim path an approval goes through (``ClaimService``)."""

    def claim(self, channel_id: str, requests: list[ClaimRequest]) -> list[ClaimResult]: ...


def _reason(reason: str) -> str:
    if not REASON.match(reason):
        raise InvalidInput(ErrorCode.INVALID_REASON, "a reason is 1-200 printable characters")
    return reason


def list_reviews(
    rt: Runtime,
    *,
    actor: str,
    status: str | None,
    kind: str | None,
    after_id: str | None,
    limit: int,
) -> list[ReviewRow]:
    """The queue oldest first, of one status and kind if given, a page at a time."""
    assert status is None or status in REVIEW_STATUSES
    assert kind is None or kind in REVIEW_KINDS
    assert 1 <= limit <= rt.settings.page_size_max
    with rt.store.unit_of_work(readonly=True) as uow:
        require_operator_role(uow, actor, ROLES_THAT_READ)
        return uow.risk.list_reviews(status=status, kind=kind, after_id=after_id, limit=limit)


def get_review(rt: Runtime, review_id: str, *, actor: str) -> ReviewRow:
    with rt.store.unit_of_work(readonly=True) as uow:
        require_operator_role(uow, actor, ROLES_THAT_READ)
        row = uow.risk.get_review(review_id)
    if row is None:
        raise NotFound(ErrorCode.REVIEW_NOT_FOUND, f"no review {review_id}")
    return row


def reject_review(rt: Runtime, review_id: str, *, actor: str, reason: str) -> ReviewRow:
    """Refuse what the item holds, for good: a held claim is never issued; a redemption's
    payable (held, or still owed) is clawed back to the budget, in the same transaction
    as the decision, and what was clawed back recorded on the item."""
    _reason(reason)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_DECIDE)
        row = _pending(uow.risk.get_review(review_id), review_id)
        if not uow.risk.decide_review(
            review_id,
            expected="pending",
            status="rejected",
            decided_by=actor,
            reason=reason,
            now=now,
        ):
            raise _decided(review_id, "decided meanwhile")
        details: dict[str, Any] = {"kind": row.kind, "reason": reason}
        if row.kind == "redemption":
            outcome, detail = claw_back(
                uow, str(row.subject["redemption_id"]), review_id=review_id, now=now
            )
            uow.risk.set_review_outcome(review_id, outcome=outcome, detail=detail)
            details |= {"outcome": outcome, **detail}
        uow.ledger.append_audit(
            actor=actor,
            action="review.reject",
            target=review_id,
            details=details,
            now=now,
        )
        decided = uow.risk.get_review(review_id)
        uow.commit()
    assert decided is not None
    return decided


def approve_review(
    rt: Runtime, claims: Claims, review_id: str, *, actor: str, reason: str
) -> ReviewRow:
    """Let what the item holds go on: a held claim is issued through the claim path,
    and what came of it recorded on the item; a redemption's held payable is released
    (owed again) in the same transaction as the decision."""
    _reason(reason)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_DECIDE)
        row = uow.risk.get_review(review_id)
        if row is None:
            raise NotFound(ErrorCode.REVIEW_NOT_FOUND, f"no review {review_id}")
        if row.kind == "redemption":
            return _release_redemption(uow, row, actor=actor, reason=reason, now=now)
        again = row.status == "approved" and row.outcome is None
        if not again:
            _pending(row, review_id)
            if not uow.risk.decide_review(
                review_id,
                expected="pending",
                status="approved",
                decided_by=actor,
                reason=reason,
                now=now,
            ):
                raise _decided(review_id, "decided meanwhile")
        uow.ledger.append_audit(
            actor=actor,
            action="review.approve",
            target=review_id,
            details={"kind": row.kind, "reason": reason, "again": again},
            now=now,
        )
        uow.commit()
    outcome, detail = _APPROVALS[row.kind](claims, row)
    with rt.store.unit_of_work() as uow:
        uow.risk.set_review_outcome(review_id, outcome=outcome, detail=detail)
        decided = uow.risk.get_review(review_id)
        uow.commit()
    assert decided is not None
    return decided


def _release_redemption(
    uow: UnitOfWork, row: ReviewRow, *, actor: str, reason: str, now: datetime
) -> ReviewRow:
    """Approve a redemption's item: its held payable released, all in ``uow``."""
    _pending(row, row.id)
    if not uow.risk.decide_review(
        row.id, expected="pending", status="approved", decided_by=actor, reason=reason, now=now
    ):
        raise _decided(row.id, "decided meanwhile")
    outcome, detail = release(uow, str(row.subject["redemption_id"]), review_id=row.id, now=now)
    uow.risk.set_review_outcome(row.id, outcome=outcome, detail=detail)
    uow.ledger.append_audit(
        actor=actor,
        action="review.approve",
        target=row.id,
        details={"kind": row.kind, "reason": reason, "outcome": outcome, **detail},
        now=now,
    )
    decided = uow.risk.get_review(row.id)
    uow.commit()
    assert decided is not None
    return decided


def _pending(row: ReviewRow | None, review_id: str) -> ReviewRow:
    if row is None:
        raise NotFound(ErrorCode.REVIEW_NOT_FOUND, f"no review {review_id}")
    if row.status != "pending":
        raise _decided(review_id, f"is {row.status} already", status=row.status)
    return row


def _decided(review_id: str, why: str, *, status: str | None = None) -> Conflict:
    return Conflict(
        ErrorCode.REVIEW_STATE,
        f"review {review_id} {why}",
        details={} if status is None else {"status": status},
    )


def _issue_claim(claims: Claims, row: ReviewRow) -> tuple[str, Mapping[str, Any] | None]:
    """Issue a held claim as the channel asked for it, the rules not asked again.

    A refusal for now (the gate or the store down, the key busy) is raised:
    the item stays approved without an outcome, and approving it again
    finishes it under the same key (a voucher issued meanwhile is replayed).
    """
    subject = row.subject
    channel_id = str(subject["channel_id"])
    signals = subject.get("signals") or {}
    request = ClaimRequest(
        channel_user_id=str(subject["channel_user_id"]),
        campaign_id=str(subject["campaign_id"]),
        round_id=str(subject["round_id"]),
        template_id=str(subject["template_id"]),
        location_region=subject.get("location_region"),
        key=Idempotency(channel_id, f"review:{row.id}", str(subject["request_hash"])),
        signals=ClaimSignals(**signals),
        reviewed=True,
    )
    [result] = claims.claim(channel_id, [request])
    answer = result.answer
    if answer.status_code == 201:
        return "issued", {"voucher_id": answer.body["voucher"]["voucher_id"]}
    error = result.error
    if isinstance(error, Unavailable | IdempotencyError):
        raise error
    code = str(answer.body.get("code", result.outcome))
    return code, {"message": str(answer.body.get("message", ""))}


_APPROVALS: dict[str, Callable[[Claims, ReviewRow], tuple[str, Mapping[str, Any] | None]]] = {
    "claim": _issue_claim,
}


# -- the device and phone blacklists ---------------------------------------------------------


def _listed_value(rt: Runtime, kind: str, value: str) -> tuple[str, str]:
    """(what the list keeps, what the audit names) for a device id or a phone number."""
    assert kind in BLACKLIST_KINDS
    if kind == "device":
        if not DEVICE_ID.match(value):
            raise InvalidInput(
                ErrorCode.INVALID_DEVICE_ID, "a device id is 8-64 of A-Z a-z 0-9 _ . : -"
            )
        return value, value
    bidx = rt.keyring.blind_index("phone", normalize_phone(value))
    return bidx, bidx[:16]


def blacklist_add(rt: Runtime, *, kind: str, value: str, reason: str, actor: str) -> bool:
    """Put a device id or a phone number on its list; False when it is there already."""
    _reason(reason)
    listed, target = _listed_value(rt, kind, value)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_BLACKLIST)
        added = uow.risk.add_blacklisted(
            kind=kind, value=listed, reason=reason, created_by=actor, now=now
        )
        uow.ledger.append_audit(
            actor=actor,
            action=f"risk_blacklist.{kind}.add",
            target=target,
            details={"reason": reason, "added": added},
            now=now,
        )
        uow.commit()
    return added


def blacklist_remove(rt: Runtime, *, kind: str, value: str, actor: str, reason: str) -> bool:
    """Take a device id or a phone number off its list; False when it was not there."""
    _reason(reason)
    listed, target = _listed_value(rt, kind, value)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_BLACKLIST)
        removed = uow.risk.remove_blacklisted(kind=kind, value=listed)
        uow.ledger.append_audit(
            actor=actor,
            action=f"risk_blacklist.{kind}.remove",
            target=target,
            details={"reason": reason, "removed": removed},
            now=now,
        )
        uow.commit()
    return removed


def blacklist_list(
    rt: Runtime, *, kind: str, actor: str, after: str | None, limit: int
) -> list[RiskBlacklistRow]:
    """One list's entries by value (a phone's as its blind index), a page at a time."""
    assert kind in BLACKLIST_KINDS
    assert 1 <= limit <= rt.settings.page_size_max
    with rt.store.unit_of_work(readonly=True) as uow:
        require_operator_role(uow, actor, ROLES_THAT_BLACKLIST)
        return uow.risk.list_blacklisted(kind=kind, after=after, limit=limit)
