"""Expected failures of lequan, each with a stable code that channels and acquirers code against.

Operating errors are values the caller can act on; they are never used for
programmer mistakes (those are assertions). Every code, with its HTTP
status and meaning, is in one registry, ``lequan.domain.error_codes``; a
kind only says what sort of refusal it is.

    LequanError                   (bootstrap.SetupError: setup_error, shown by the CLI)
    ├── InvalidInput              422: invalid_*, consent_required, idempotency_key_required,
    │                             batch_too_large, partial_refund_unsupported,
    │                             product_required, energy_grade_required,
    │                             serial_reused_in_request;
    │                             413: body_too_large
    ├── NotFound                  404: *_not_found, not_registered
    ├── Conflict                  409: the state of things forbids it
    │   ├── claiming: sold_out, already_claimed, claim_limit_reached, not_started,
    │   │            round_ended, campaign_paused, campaign_not_live,
    │   │            channel_not_in_campaign, budget_exhausted, ineligible
    │   ├── vouchers: voucher_not_yet_valid, voucher_expired, voucher_locked,
    │   │            voucher_not_locked, already_redeemed, voucher_not_redeemed,
    │   │            voucher_revoked, voucher_void, invalid_transition, voucher_busy
    │   ├── redemption: below_threshold, merchant_not_in_scope, channel_mismatch,
    │   │            mode_not_in_scope, order_type_excluded, lock_expired,
    │   │            reversal_window_passed, redemption_state, merchant_suspended,
    │   │            redemptions_paused
    │   ├── trade-in: product_category_mismatch, energy_grade_not_subsidised,
    │   │            price_above_category_limit, serial_already_subsidised,
    │   │            invoice_already_subsidised
    │   ├── risk: risk_rules_version, risk_rules_state, review_state
    │   └── lifecycle: campaign_state, account_already_bound,
    │                person_already_bound, registration_conflict, *_exists
    ├── AuthError                 401: invalid_signature, missing_signature, invalid_timestamp,
    │                             stale_timestamp, invalid_nonce, nonce_reused, unknown_app,
    │                             unauthenticated, unknown_operator;
    │                             403: forbidden, wrong_app_kind, maker_cannot_approve,
    │                             risk_refused (a claim a risk rule refused)
    ├── IdempotencyError          409: idempotency_in_flight; 422: idempotency_mismatch
    └── Unavailable               429: throttled, overloaded; 503: store_unavailable,
                                  commit_timeout, gate_unavailable, gate_rebuilding,
                                  key_mismatch (ports.KeyMismatch)
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
    """The request is well formed but a value breaks a rule (HTTP 422; 413 for a body too large)."""

    kind = "invalid"


class NotFound(LequanError):
    """The thing named does not exist for this caller (HTTP 404)."""

    kind = "not_found"


class Conflict(LequanError):
    """The current state of things forbids the action (HTTP 409)."""

    kind = "conflict"


class AuthError(LequanError):
    """The caller is not who they claim or may not do this (HTTP 401/403)."""

    kind = "auth"


class IdempotencyError(LequanError):
    """An Idempotency-Key was reused while in flight (HTTP 409) or with another body (422)."""

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
