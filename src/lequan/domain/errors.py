"""Expected failures of lequan, each with a stable code that channels and acquirers code against.

Operating errors are values the caller can act on; they are never used for
programmer mistakes (those are assertions). The HTTP status of each code is
decided in one place, ``lequan.http.errors``.

    LequanError
    ├── InvalidInput              invalid_* — malformed but well-typed input
    │   ├── InvalidIdNumber       invalid_id_number
    │   ├── InvalidPhone          invalid_phone
    │   ├── InvalidRegion         invalid_region
    │   └── InvalidCampaignConfig invalid_campaign_config
    ├── NotFound                  *_not_found, not_registered
    ├── Conflict                  the state of things forbids it
    │   ├── claiming: sold_out, already_claimed, claim_limit_reached, not_started,
    │   │            round_ended, campaign_not_live, budget_exhausted, ineligible
    │   ├── vouchers: voucher_expired, voucher_locked, voucher_not_usable,
    │   │            already_redeemed, voucher_revoked, voucher_void, invalid_transition
    │   ├── redemption: below_threshold, merchant_not_in_scope, channel_mismatch,
    │   │            mode_not_in_scope, lock_expired, reversal_window_passed,
    │   │            partial_refund_unsupported, redemption_state
    │   └── lifecycle: campaign_state, maker_cannot_approve, account_already_bound,
    │                person_already_bound
    ├── AuthError                 invalid_signature, stale_timestamp, nonce_reused,
    │                             unknown_app, unauthenticated, forbidden
    ├── IdempotencyError          idempotency_in_flight, idempotency_mismatch
    └── Unavailable               throttled, store_unavailable, overloaded
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "Conflict",
    "IdempotencyError",
    "InvalidInput",
    "LequanError",
    "NotFound",
    "Unavailable",
]


class LequanError(Exception):
    """An expected failure with a stable ``code`` and a human ``message``."""

    kind: ClassVar[str] = "error"

    def __init__(
        self, code: str, message: str, *, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class InvalidInput(LequanError):
    """The request is well formed but a value breaks a rule (HTTP 422)."""

    kind = "invalid"


class NotFound(LequanError):
    """The thing named does not exist for this caller (HTTP 404)."""

    kind = "not_found"


class Conflict(LequanError):
    """The current state of things forbids the action (HTTP 409, some 410/422)."""

    kind = "conflict"


class AuthError(LequanError):
    """The caller is not who they claim or may not do this (HTTP 401/403)."""

    kind = "auth"


class IdempotencyError(LequanError):
    """An Idempotency-Key was reused while in flight or with another body."""

    kind = "idempotency"


class Unavailable(LequanError):
    """The platform refuses for now; retry later (HTTP 429/503)."""

    kind = "unavailable"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after_s: int = 1,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(code, message, details=details)
        self.retry_after_s = retry_after_s
