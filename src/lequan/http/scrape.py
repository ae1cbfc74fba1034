"""What ``/metrics`` reads at each scrape besides the instruments: figures that live
in shared state (the store, the gate), the same from whichever worker answers.

Each collector gives up quietly when its source does not answer: the scrape
goes on without that family, and ``/readyz`` says what is down.
"""

from __future__ import annotations

from collections.abc import Iterator

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lequan.bootstrap import Platform
from lequan.http.routes.risk import RulesCollector
from lequan.metrics import Exposition
from lequan.ports import GateUnavailable, StoreError
from lequan.services import relay
from lequan.services.runtime import Runtime
from lequan.services.screen import Screen
from lequan.services.stock import stock_left

__all__ = ["OutboxCollector", "ScreenCollector", "StockCollector", "exposition"]

_POOL_LABELS = ["campaign", "round", "channel", "template"]

log = structlog.get_logger(__name__)


class OutboxCollector(Collector):
    """The outbox's backlog, read from the store at each scrape: what every process's
    relay has left, the same figure from any process."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "lequan_outbox_events",
            "Outbox events by status (pending: not yet delivered to central)",
            labels=["status"],
        )
        try:
            counts = relay.backlog(self._rt)
        except StoreError:
            return  # the scrape goes on without it; /readyz says why
        gauge.add_metric(["pending"], counts.pending)
        gauge.add_metric(["dead"], counts.dead)
        yield gauge


class StockCollector(Collector):
    """The stock left and the stock put up, per template of each pool of the live and
    paused campaigns, read from the gate at each scrape (``services/stock.py``)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def collect(self) -> Iterator[Metric]:
        try:
            stocks = stock_left(self._rt, series_max=self._rt.settings.metrics_stock_series_max)
        except (StoreError, GateUnavailable):
            return  # the scrape goes on without it; /readyz says why
        remaining = GaugeMetricFamily(
            "lequan_stock_remaining",
            "Vouchers left in a pool for a template, as the claim gate holds them",
            labels=_POOL_LABELS,
        )
        initial = GaugeMetricFamily(
            "lequan_stock_initial",
            "Vouchers a pool put up for a template",
            labels=_POOL_LABELS,
        )
        for stock in stocks:
            labels = [stock.campaign_id, stock.round_id, stock.channel_id, stock.template_id]
            remaining.add_metric(labels, stock.remaining)
            initial.add_metric(labels, stock.initial)
        yield remaining
        yield initial


class ScreenCollector(Collector):
    """The big screen's figures, read at scrape time from the process's ``Screen``
    (itself summed over every process through the pulse), so the shipped alert rules
    watch what the screen shows:

    - ``lequan_merchants_spiking``: merchants whose redemptions in the last whole
      minute are far above their own baseline (no merchant label: they are unbounded);
    - ``lequan_pool_sold_out_after_seconds{campaign,round,channel,template}``: seconds
      from a round's release to its pool's sell-out, absent until it sold out.
    """

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


def exposition(platform: Platform, screen: Screen) -> Exposition:
    """What the platform's ``/metrics`` answers: the instruments of every worker, the
    outbox backlog, the stock left and the screen's figures."""
    rt = platform.rt
    live: list[Collector] = [OutboxCollector(rt), StockCollector(rt), ScreenCollector(screen)]
    if platform.risk is not None:
        live.append(RulesCollector(platform.risk))
    return Exposition(rt.metrics, live)
