"""The big screen's figures as Prometheus gauges, read at scrape time from the
process's ``Screen`` (itself summed over every process through the pulse), so the
shipped alert rules (deploy/prometheus/) watch what the screen shows:

- ``lequan_merchants_spiking``: merchants whose redemptions in the last whole minute
  are far above their own baseline (no merchant label: merchants are unbounded);
- ``lequan_pool_sold_out_after_seconds{campaign,round,channel,template}``: seconds
  from a round's release to its pool's sell-out, absent until it sold out.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lequan.services.screen import Screen

__all__ = ["ScreenCollector"]

log = structlog.get_logger(__name__)


class ScreenCollector(Collector):
    def __init__(self, screen: Screen) -> None:
        self._screen = screen

    def collect(self) -> Iterator[Metric]:
        try:
            spiking, sold_out_after = self._screen.figures()
        except Exception as error:  # a scrape goes on without the screen's figures
            log.warning("screen_metrics_unavailable", error_type=type(error).__name__)
            return
        merchants = GaugeMetricFamily(
            "lequan_merchants_spiking",
            "Merchants whose redemptions in the last minute are far above their baseline",
        )
        merchants.add_metric([], spiking)
        yield merchants
        pools = GaugeMetricFamily(
            "lequan_pool_sold_out_after_seconds",
            "Seconds from the round's release to the pool's sell-out (absent until sold out)",
            labels=["campaign", "round", "channel", "template"],
        )
        for label, after_s in sorted(sold_out_after.items()):
            campaign, round_id, channel, template = label.split(":", 3)
            pools.add_metric([campaign, round_id, channel, template], after_s)
        yield pools
