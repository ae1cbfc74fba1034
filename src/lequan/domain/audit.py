"""The audit log's hash chain: each line's digest covers the line and the one before.

One definition for every store, so an auditor's independent verifier can
walk any store's log: recompute each line's digest from its fields and the
previous digest, and compare.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["GENESIS_HASH", "AuditLine", "audit_line"]

# The "previous digest" of the first line.
GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditLine:
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    details_json: str
    prev_hash: str
    hash: str


def audit_line(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> AuditLine:
    """The next line of the chain: details as canonical JSON, and its digest."""
    details_json = json.dumps(details, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    text = "\n".join([str(seq), at.isoformat(), actor, action, target, details_json, prev_hash])
    digest = hashlib.sha256(text.encode()).hexdigest()
    return AuditLine(seq, at, actor, action, target, details_json, prev_hash, digest)
