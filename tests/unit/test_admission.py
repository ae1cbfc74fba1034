"""Admission control: an app over its allowance hears 429 at once, and recovers."""

from __future__ import annotations

import asyncio

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
    async def scenario() -> None:
        limit = InFlightLimit(3)
        async with limit.admit(2):
            with pytest.raises(Unavailable) as refused:
                async with limit.admit(2):
                    pass
            assert refused.value.code == "overloaded"
            assert refused.value.retry_after_s == 1
            async with limit.admit(1):
                assert limit.in_flight == 3
        assert limit.in_flight == 0
        # A failure inside gives its places back too.
        with pytest.raises(RuntimeError):
            async with limit.admit(3):
                raise RuntimeError("the claim service failed")
        assert limit.in_flight == 0

    asyncio.run(scenario())


def test_a_call_without_room_waits_for_places_given_back() -> None:
    """A batch that finds the bound full is admitted when another call ends, within
    its wait, rather than told to send itself again."""

    async def scenario() -> None:
        limit = InFlightLimit(3, wait_s=30)
        first_done = asyncio.Event()
        order: list[str] = []

        async def first() -> None:
            async with limit.admit(3):
                await first_done.wait()
                order.append("first ends")

        async def second() -> None:
            async with limit.admit(2):
                order.append("second admitted")
                assert limit.in_flight == 2

        running = asyncio.create_task(first())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(second())
        while limit.waiting == 0:
            await asyncio.sleep(0)
        assert limit.in_flight == 3
        first_done.set()
        await asyncio.gather(running, waiting)
        assert order == ["first ends", "second admitted"]
        assert (limit.in_flight, limit.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_call_that_waited_its_time_is_refused_and_holds_nothing() -> None:
    async def scenario() -> None:
        limit = InFlightLimit(3, wait_s=0.01)
        async with limit.admit(2):
            with pytest.raises(Unavailable) as refused:
                async with limit.admit(2):
                    pass
            assert refused.value.code == "overloaded"
            assert (limit.in_flight, limit.waiting) == (2, 0)
            # A call larger than the bound can never fit: refused without waiting.
            with pytest.raises(Unavailable):
                async with limit.admit(4):
                    pass
        assert limit.in_flight == 0

    asyncio.run(scenario())
