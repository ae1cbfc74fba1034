"""The refusals of a claim that do not depend on the person, in the order an operator
explains them: campaign, round, channel, template, budget, stock."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from lequan.domain.campaigns import CampaignStatus
from lequan.domain.claims import offered_template
from lequan.domain.errors import Conflict, LequanError, NotFound
from tests.factories import T0, dining_config

CONFIG = dining_config()
ROUND = (T0, T0 + timedelta(days=7))
OPEN = T0 + timedelta(seconds=15)


def offer(**changes: Any) -> Any:
    arguments: dict[str, Any] = {
        "status": CampaignStatus.LIVE,
        "config": CONFIG,
        "round_times": ROUND,
        "round_id": "r1",
        "channel_id": "wechat",
        "template_id": "d300-90",
        "budget_room_fen": None,
        "sold_out": False,
        "now": OPEN,
    }
    arguments.update(changes)
    return offered_template(**arguments)


def refusal(**changes: Any) -> LequanError:
    with pytest.raises(LequanError) as refused:
        offer(**changes)
    return refused.value


def test_a_live_round_offers_the_template() -> None:
    template = offer()
    assert template.id == "d300-90"
    assert template.face_fen == 9_000
    assert offer(budget_room_fen=9_000).id == "d300-90"  # exactly the face still fits


@pytest.mark.parametrize(
    ("changes", "kind", "code"),
    [
        ({"status": CampaignStatus.PAUSED}, Conflict, "campaign_paused"),
        ({"status": CampaignStatus.APPROVED}, Conflict, "campaign_not_live"),
        ({"status": CampaignStatus.ENDED}, Conflict, "campaign_not_live"),
        ({"round_times": None, "round_id": "r9"}, NotFound, "round_not_found"),
        ({"now": T0 - timedelta(microseconds=1)}, Conflict, "not_started"),
        ({"now": ROUND[1]}, Conflict, "round_ended"),
        ({"channel_id": "douyin"}, Conflict, "channel_not_in_campaign"),
        ({"template_id": "d9999-1"}, NotFound, "template_not_found"),
        ({"budget_room_fen": 8_999}, Conflict, "budget_exhausted"),
        ({"sold_out": True}, Conflict, "sold_out"),
    ],
)
def test_each_refusal_has_its_code(
    changes: dict[str, Any], kind: type[LequanError], code: str
) -> None:
    error = refusal(**changes)
    assert isinstance(error, kind)
    assert error.code == code


def test_not_started_says_when_the_round_opens() -> None:
    error = refusal(now=T0 - timedelta(seconds=1))
    assert error.details == {"release_at": T0.isoformat()}


def test_the_campaign_is_explained_before_the_round_and_the_stock() -> None:
    """A paused campaign whose round has not started and whose stock is gone is
    paused, first: the refusal the operator can act on."""
    everything_wrong = {
        "status": CampaignStatus.PAUSED,
        "now": T0 - timedelta(days=1),
        "channel_id": "douyin",
        "budget_room_fen": 0,
        "sold_out": True,
    }
    assert refusal(**everything_wrong).code == "campaign_paused"
    everything_wrong["status"] = CampaignStatus.LIVE
    assert refusal(**everything_wrong).code == "not_started"
    everything_wrong["now"] = OPEN
    assert refusal(**everything_wrong).code == "channel_not_in_campaign"
    everything_wrong["channel_id"] = "wechat"
    assert refusal(**everything_wrong).code == "budget_exhausted"
    everything_wrong["budget_room_fen"] = None
    assert refusal(**everything_wrong).code == "sold_out"
