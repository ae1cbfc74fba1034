"""What a channel asks for when it claims: the request and the risk signals it carries.

Its own module because two services read it and neither should import the other:
the claim service decides the request, and the risk rules judge it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lequan.services.idempotency import Idempotency

__all__ = ["ClaimRequest", "ClaimSignals"]


@dataclass(frozen=True, slots=True)
class ClaimSignals:
    """What the channel sent of the claim besides the person; None is unknown."""

    device_id: str | None = None
    ip: str | None = None
    account_age_s: int | None = None
    network_region: str | None = None
    channel_risk: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            name: value
            for name in ("device_id", "ip", "account_age_s", "network_region", "channel_risk")
            if (value := getattr(self, name)) is not None
        }


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    channel_user_id: str
    campaign_id: str
    round_id: str
    template_id: str
    location_region: str | None
    key: Idempotency
    # What the channel knows of the claim besides the person (risk rules, docs/risk.md).
    signals: ClaimSignals | None = None
    # An analyst approved it after a risk rule held it: the rules are not asked again.
    reviewed: bool = False
    # When the person pressed claim, by the channel's clock (a round's fair start).
    pressed_at: datetime | None = None
