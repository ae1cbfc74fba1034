"""Admission control: an app over its allowance hears 429 at once, and recovers."""

from __future__ import annotations

import pytest

from lequan.domain.errors import Unavailable
from lequan.http.admission import InFlightLimit, TokenBuckets


class Ticks:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_burst_is_served_then_throttled_with_a_retry_after() -> None:
    ticks = Ticks()
    buckets = TokenBuckets(rate_per_s=10, burst=20, monotonic=ticks)
    for _ in range(20):
        buckets.take("wechat")
    with pytest.raises(Unavailable) as refused:
        buckets.take("wechat")
    assert refused.value.code == "throttled"
    assert refused.value.retry_after_s == 1


def test_apps_have_separate_allowances() -> None:
    buckets = TokenBuckets(rate_per_s=1, burst=3, monotonic=Ticks())
    buckets.take("wechat", cost=3)
    buckets.take("alipay", cost=3)  # wechat's flood does not starve alipay
    with pytest.raises(Unavailable):
        buckets.take("wechat")


def test_tokens_come_back_with_time_and_a_refusal_spends_nothing() -> None:
    ticks = Ticks()
    buckets = TokenBuckets(rate_per_s=100, burst=1000, monotonic=ticks)
    buckets.take("unionpay", cost=1000)
    with pytest.raises(Unavailable) as refused:
        buckets.take("unionpay", cost=500)
    assert refused.value.retry_after_s == 5
    ticks.now_s += 5
    buckets.take("unionpay", cost=500)  # the refused 500 were not taken
    with pytest.raises(Unavailable):
        buckets.take("unionpay")


def test_a_batch_larger_than_the_burst_is_told_to_wait_no_longer_than_a_full_bucket() -> None:
    buckets = TokenBuckets(rate_per_s=100, burst=200, monotonic=Ticks())
    buckets.take("wechat", cost=200)
    with pytest.raises(Unavailable) as refused:
        buckets.take("wechat", cost=10_000)
    assert refused.value.retry_after_s == 2


def test_in_flight_claims_are_bounded_and_the_places_come_back() -> None:
    limit = InFlightLimit(3)
    with limit.admit(2):
        with pytest.raises(Unavailable) as refused, limit.admit(2):
            pass
        assert refused.value.code == "overloaded"
        assert refused.value.retry_after_s == 1
        with limit.admit(1):
            assert limit.in_flight == 3
    assert limit.in_flight == 0
    # A failure inside gives its places back too.
    with pytest.raises(RuntimeError), limit.admit(3):
        raise RuntimeError("the claim service failed")
    assert limit.in_flight == 0
