"""What ``/metrics`` reads at each scrape besides the instruments: figures that live
in shared state (the store, the gate), the same from whichever worker answers.

Each collector gives up quietly when its source does not answer: the scrape
goes on without that family, and ``/readyz`` says what is down.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lequan.bootstrap import Platform
from lequan.metrics import Exposition
from lequan.ports import GateUnavailable, StoreError
from lequan.services import relay
from lequan.services.runtime import Runtime
from lequan.services.stock import stock_left

__all__ = ["OutboxCollector", "StockCollector", "exposition"]

_POOL_LABELS = ["campaign", "round", "channel", "template"]


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


def exposition(platform: Platform) -> Exposition:
    """What the platform's ``/metrics`` answers: the instruments of every worker, the
    outbox backlog and the stock left."""
    rt = platform.rt
    return Exposition(rt.metrics, [OutboxCollector(rt), StockCollector(rt)])
