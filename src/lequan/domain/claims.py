"""Whether a campaign's round offers a template to a channel now: every refusal of
a claim that does not depend on the person who makes it.

Checked in the order an operator would explain it: the campaign (paused,
not live), the round (unknown, not started, ended), the channel, the
template, then what is left (budget, stock). The claim service asks once
per batch and template; the person's own refusals (eligibility, one per
round) come after, from the gate and the store.
"""

from __future__ import annotations

from datetime import datetime

from lequan.domain.campaigns import (
    CampaignConfig,
    CampaignStatus,
    RoundPhase,
    round_phase,
)
from lequan.domain.errors import Conflict, NotFound
from lequan.domain.templates import Template

__all__ = ["offered_template"]


def offered_template(
    *,
    status: CampaignStatus,
    config: CampaignConfig,
    round_times: tuple[datetime, datetime] | None,
    round_id: str,
    channel_id: str,
    template_id: str,
    budget_room_fen: int | None,
    sold_out: bool,
    now: datetime,
) -> Template:
    """The template a claim may take now; raises the refusal a caller acts on.

    ``round_times`` is the round's (release_at, ends_at) as stored (an
    operator may open a round early), None when the campaign has no such
    round. ``budget_room_fen`` is what the budget has left as last known
    (None: not known, the store decides); ``sold_out`` whether the pool's
    stock of the template is known to be gone.
    """
    if status is CampaignStatus.PAUSED:
        raise Conflict("campaign_paused", "the campaign is paused")
    if status is not CampaignStatus.LIVE:
        raise Conflict("campaign_not_live", f"the campaign is {status.value}")
    if round_times is None:
        raise NotFound("round_not_found", f"no round {round_id} in this campaign")
    release_at, ends_at = round_times
    phase = round_phase(release_at=release_at, ends_at=ends_at, now=now)
    if phase is RoundPhase.NOT_STARTED:
        raise Conflict(
            "not_started",
            f"the round opens at {release_at.isoformat()}",
            details={"release_at": release_at.isoformat()},
        )
    if phase is RoundPhase.ENDED:
        raise Conflict("round_ended", "the round has ended")
    if channel_id not in config.channels:
        raise Conflict("channel_not_in_campaign", "this campaign is not issued in this channel")
    template = config.template(template_id)
    if template is None:
        raise NotFound("template_not_found", f"no template {template_id}")
    if budget_room_fen is not None and template.face_fen > budget_room_fen:
        raise Conflict("budget_exhausted", "the campaign's budget is used up")
    if sold_out:
        raise Conflict("sold_out", "the vouchers of this round are gone")
    return template
