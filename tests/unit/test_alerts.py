"""The big screen's alerts: each fires at its edge and not below it."""

from __future__ import annotations

from dataclasses import replace

from lequan.domain.alerts import AlertLimits, AppMinute, Readings, evaluate, spiking

QUIET = Readings(
    answers=1000,
    errors=0,
    gate_unavailable=0,
    store_unavailable=0,
    apps=[AppMinute("wechat", 1000, 0)],
    sold_out_after_s={},
    merchants_spiking=[],
    outbox_pending=0,
    outbox_growing=False,
)
LIMITS = AlertLimits()


def names(readings: Readings) -> list[str]:
    return [f.name for f in evaluate(readings, LIMITS)]


def test_a_quiet_minute_fires_nothing() -> None:
    assert names(QUIET) == []


def test_the_error_rate_fires_above_its_share_and_its_floor() -> None:
    assert names(replace(QUIET, errors=10)) == []  # 1% of 1000 is 10: not above it
    assert names(replace(QUIET, answers=1000, errors=11, apps=[])) == ["LequanHttp5xx"]
    assert "LequanHttp5xx" not in names(replace(QUIET, answers=100, errors=9, apps=[]))
    assert "LequanHttp5xx" not in names(replace(QUIET, answers=5000, errors=50, apps=[]))


def test_one_gate_refusal_pages() -> None:
    fired = evaluate(replace(QUIET, gate_unavailable=1), LIMITS)
    assert [(f.name, f.severity) for f in fired] == [("LequanGateUnavailable", "page")]


def test_an_app_erroring_is_named() -> None:
    apps = [AppMinute("acq-unionpay", 20, 2), AppMinute("wechat", 19, 19)]
    assert names(replace(QUIET, apps=apps)) == ["LequanAppErrors:acq-unionpay"]
    assert names(replace(QUIET, apps=[AppMinute("acq-unionpay", 20, 1)])) == []


def test_a_pool_gone_too_fast_warns() -> None:
    readings = replace(QUIET, sold_out_after_s={"c:r1:*/t": 29.9, "c:r2:*/t": 30.0})
    fired = evaluate(readings, LIMITS)
    assert [(f.name, f.severity) for f in fired] == [("LequanPoolSoldOutEarly:c:r1:*/t", "warn")]


def test_pages_come_before_warnings() -> None:
    readings = replace(QUIET, merchants_spiking=["咖啡店"], gate_unavailable=3)
    assert names(readings) == ["LequanGateUnavailable", "LequanMerchantSpiking"]


def test_the_outbox_warns_only_when_big_and_growing() -> None:
    assert names(replace(QUIET, outbox_pending=10_001, outbox_growing=True)) == [
        "LequanOutboxBacklogGrowing"
    ]
    assert names(replace(QUIET, outbox_pending=10_001, outbox_growing=False)) == []
    assert names(replace(QUIET, outbox_pending=10_000, outbox_growing=True)) == []
    assert names(replace(QUIET, outbox_pending=None, outbox_growing=True)) == []


def test_a_merchant_spikes_against_its_own_baseline() -> None:
    before = [{"m1": 4, "m2": 1}] * 30
    found = spiking({"m1": 30, "m2": 30, "m3": 29}, before, ratio=5, floor=30)
    assert set(found) == {"m1", "m2"}  # 30 >= 5 × 4 and 5 × 1; m3 below the floor
    assert spiking({"m1": 19}, [{"m1": 4}] * 30, ratio=5, floor=10) == []
    assert spiking({"m1": 20}, [{"m1": 4}] * 30, ratio=5, floor=10) == ["m1"]


def test_no_baseline_no_spike() -> None:
    """The first minutes of a release are everyone's spike."""
    assert spiking({"m1": 500}, [{}] * 26 + [{"m1": 1}] * 4, ratio=5, floor=30) == []
    assert spiking({"m1": 500}, [{}] * 25 + [{"m1": 1}] * 5, ratio=5, floor=30) == ["m1"]
