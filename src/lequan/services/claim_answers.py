"""What a claim is answered: the refusals as the gate and the store give them, the
"issued" answer rendered once per offer, and the answers stored for a key.

Shared by the claim service, the group committer and the HTTP fast path, so
an answer and its replay are the same bytes on every path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from lequan.domain.errors import Conflict, LequanError
from lequan.domain.vouchers import VoucherState
from lequan.ports import (
    ReserveOutcome,
    UnitOfWork,
)
from lequan.rows import VoucherRow
from lequan.services.idempotency import Answer
from lequan.services.views import error_body, http_status, voucher_body

__all__ = [
    "GATE_REFUSALS",
    "ID_SLOT",
    "SOLD_OUT_IN_STORE",
    "ClaimResult",
    "answered",
    "gate_refusal",
    "issued_answer",
    "issued_text",
    "issued_voucher_json",
    "refusal_answer",
]


GATE_REFUSALS: dict[ReserveOutcome, tuple[str, str]] = {
    ReserveOutcome.SOLD_OUT: ("sold_out", "the vouchers of this round are gone"),
    ReserveOutcome.ALREADY_CLAIMED: (
        "already_claimed",
        "the person has already claimed in this round through this channel",
    ),
    ReserveOutcome.CAMPAIGN_LIMIT: (
        "claim_limit_reached",
        "the person has claimed as many vouchers as this campaign allows",
    ),
    ReserveOutcome.UNKNOWN_STOCK: ("sold_out", "this round offers no such voucher here"),
}


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The answer for one claim; ``outcome`` is ``issued`` or an error code."""

    outcome: str
    answer: Answer
    replayed: bool = False
    error: LequanError | None = None  # a refusal's, for its HTTP headers (Retry-After)


# The store's answer to a claim its stock no longer holds, whatever the gate said.
SOLD_OUT_IN_STORE = Conflict(*GATE_REFUSALS[ReserveOutcome.SOLD_OUT])


def gate_refusal(outcome: ReserveOutcome) -> Conflict:
    """Why the gate did not reserve: what the person is told."""
    code, message = GATE_REFUSALS[outcome]
    return Conflict(code, message)


def refusal_answer(error: LequanError, status_code: int) -> ClaimResult:
    """A refusal, rendered once: the claims of a batch refused alike share it."""
    expected = http_status(error)
    assert status_code == expected
    return ClaimResult(error.code, Answer.of(status_code, error_body(error)), error=error)


# Stands for the voucher id in an offer's rendered answer; never a real id ("v" + hex).
ID_SLOT = "@voucher-id@"


# How an offer's rendered "issued" answer begins (sorted keys): the voucher follows.
_ISSUED_PREFIX = '{"status":"issued","voucher":'


def issued_answer(voucher: VoucherRow) -> Answer:
    """The "issued" answer of the claim that made ``voucher``, rebuilt from its row.

    Only as-issued fields are read (the state is the one it was issued in),
    so a retry long after the voucher was spent gets, byte for byte, the
    answer its first request got (``_Offer.answer``).
    """
    as_issued = replace(voucher, state=VoucherState.ISSUED)
    return Answer.rendered(201, issued_text(as_issued))


def issued_text(voucher: VoucherRow) -> str:
    body = {"status": "issued", "voucher": voucher_body(voucher)}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def answered(uow: UnitOfWork, app_id: str, keys: Sequence[str]) -> dict[str, tuple[str, int, str]]:
    """key -> (request_hash, status_code, response_json) of the keys already answered.

    A claim's answer is rebuilt from the voucher its key is on; any other
    answer (and a claim's from before migration 0002) was stored as such.
    """
    rows = uow.idempotency.answered_keys(app_id, keys)
    # The vouchers of a batch sent again are read in one query, not one each.
    vouchers = uow.vouchers.get_vouchers([vid for _, _, _, vid in rows.values() if vid is not None])
    found: dict[str, tuple[str, int, str]] = {}
    for key, (request_hash, status_code, body, voucher_id) in rows.items():
        if voucher_id is None:
            assert body is not None
            found[key] = (request_hash, status_code, body)
            continue
        voucher = vouchers.get(voucher_id)
        assert voucher is not None, "a voucher found by its key is there"
        found[key] = (request_hash, status_code, issued_answer(voucher).json())
    return found


def issued_voucher_json(answer: Answer) -> str | None:
    """The voucher of an "issued" answer as JSON text, when it was rendered already."""
    text = answer.text
    if text is None or not text.startswith(_ISSUED_PREFIX):
        return None
    return text[len(_ISSUED_PREFIX) : -1]
