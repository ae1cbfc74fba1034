"""The stock left of every pool now selling, as the gate holds it: what an operator
watches go during a release (``/metrics``' ``lequan_stock_remaining``).

The gate is asked, not the store: it is where a claim takes its voucher, and
the same for every API process (a shared gate). Only live and paused
campaigns are read; they are few, and their pools bounded by their files.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from lequan.domain.campaigns import CampaignStatus
from lequan.services.campaigns import pool_key
from lequan.services.runtime import Runtime

__all__ = ["PoolStock", "stock_left"]

log = structlog.get_logger(__name__)

_SELLING = (CampaignStatus.LIVE, CampaignStatus.PAUSED)


@dataclass(frozen=True, slots=True)
class PoolStock:
    """One template's stock in one pool (a round of a campaign in a channel)."""

    campaign_id: str
    round_id: str
    channel_id: str
    template_id: str
    initial: int
    remaining: int


def stock_left(rt: Runtime, *, series_max: int) -> list[PoolStock]:
    """The stock of every template of every pool of the live and paused campaigns, at
    most ``series_max`` of them (the rest are logged as left out); a pool the gate
    holds nothing for (being rebuilt) is left out.

    Raises the store's ``StoreError`` or the gate's ``GateUnavailable``.
    """
    with rt.store.unit_of_work(readonly=True) as uow:
        stocks = [
            (row.id, *stock)
            for row in uow.campaigns.list_campaigns(statuses=_SELLING)
            for stock in sorted(uow.campaigns.stock_initial(row.id))
        ]
    if len(stocks) > series_max:
        log.warning("stock_series_left_out", series=len(stocks), series_max=series_max)
    found = []
    for campaign_id, round_id, channel_id, template_id, initial in stocks[:series_max]:
        remaining = rt.gate.remaining(pool_key(campaign_id, round_id, channel_id), template_id)
        if remaining is not None:
            found.append(
                PoolStock(campaign_id, round_id, channel_id, template_id, initial, remaining)
            )
    return found
