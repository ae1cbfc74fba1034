"""Plain views of lequan's records, as channels and acquirers see them.

They never carry personal data in the clear; ids are opaque.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC
from typing import Any

from lequan.domain.error_codes import spec_of
from lequan.domain.errors import (
    AuthError,
    Conflict,
    IdempotencyError,
    InvalidInput,
    LequanError,
    NotFound,
    Unavailable,
)
from lequan.rows import OutboxRow, RedemptionRow, VoucherRow

__all__ = [
    "error_body",
    "http_status",
    "new_id",
    "new_ids",
    "outbox_event_body",
    "redemption_body",
    "voucher_body",
]


def new_id(prefix: str) -> str:
    """A unique id that sorts by creation time (for cursor pagination)."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids as ``new_id`` makes them, from one read of the system's randomness."""
    stamp = f"{prefix}{time.time_ns() // 1_000_000:012x}"
    random = secrets.token_hex(6 * count)
    return [stamp + random[12 * i : 12 * i + 12] for i in range(count)]


def voucher_body(v: VoucherRow) -> dict[str, Any]:
    body = {
        "voucher_id": v.id,
        "campaign_id": v.campaign_id,
        "round_id": v.round_id,
        "template_id": v.template_id,
        "channel_id": v.channel_id,
        "face_fen": v.face_fen,
        "state": v.state.value,
        # In UTC whatever zone the campaign wrote them in: a claim's answer, the
        # wallet and a retry's answer (rebuilt from the row) read the same.
        "valid_from": v.valid_from.astimezone(UTC).isoformat(),
        "valid_until": v.valid_until.astimezone(UTC).isoformat(),
        "issued_at": v.issued_at.astimezone(UTC).isoformat(),
    }
    if v.draw_ticket is not None:
        # Issued by a round's fair start: the ticket to find in its published draw.
        body["draw_ticket"] = v.draw_ticket
    return body


def redemption_body(r: RedemptionRow, *, voucher_state: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "redemption_id": r.id,
        "voucher_id": r.voucher_id,
        "campaign_id": r.campaign_id,
        "merchant_id": r.merchant_id,
        "order_id": r.order_id,
        "mode": r.mode,
        "order_amount_fen": r.order_amount_fen,
        "discount_fen": r.discount_fen,
        "pay_fen": r.pay_fen,
        "status": r.status,
        "lock_expires_at": r.lock_expires_at.isoformat() if r.lock_expires_at else None,
        "created_at": r.created_at.isoformat(),
    }
    if voucher_state is not None:
        body["voucher_state"] = voucher_state
    return body


def error_body(error: LequanError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.details:
        body["details"] = error.details
    return body


# A code missing from the registry (tests/unit/test_error_codes.py forbids one) still
# answers with the status of its kind rather than a 500.
_STATUS_BY_KIND: tuple[tuple[type[LequanError], int], ...] = (
    (InvalidInput, 422),
    (NotFound, 404),
    (Conflict, 409),
    (AuthError, 401),
    (IdempotencyError, 409),
    (Unavailable, 503),
)


def http_status(error: LequanError) -> int:
    """The HTTP status for an error code, read from the registry
    (``lequan.domain.error_codes``); every response and stored answer uses this."""
    spec = spec_of(error.code)
    if spec is not None and spec.status is not None:
        return spec.status
    for kind, kind_status in _STATUS_BY_KIND:
        if isinstance(error, kind):
            return kind_status
    return 400


def outbox_event_body(row: OutboxRow) -> dict[str, Any]:
    """An outbox event as operators see it (without its payload: it may hold product
    details, and is central's business)."""
    return {
        "event_id": row.id,
        "topic": row.topic,
        "voucher_id": row.voucher_id,
        "seq": row.seq,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": row.created_at.isoformat(),
    }
