"""The simulator's channel sends "retry later" answers again, as a channel's client does:
same key, after the wait, a bounded number of times, and it is not done while any wait."""

from __future__ import annotations

import asyncio

import httpx

from benchmarks.simulate import RESENDS_MAX, _Channel


def test_a_retry_later_answer_is_sent_again_with_its_key_until_the_bound() -> None:
    async def scenario() -> tuple[list[bool], list[bool], int]:
        async with httpx.AsyncClient() as client:
            channel = _Channel("wechat", client, retry_after_s=0.01)
            item = (7, "sim-7", 0, 0.0, False)
            idle_while_waiting = []
            accepted = []
            for _ in range(RESENDS_MAX + 2):
                accepted.append(channel.resend_later(item))
                idle_while_waiting.append(channel.idle())
                if accepted[-1]:
                    assert await asyncio.wait_for(channel.queue.get(), timeout=5) == item
            return accepted, idle_while_waiting, channel.resending

    accepted, idle_while_waiting, resending = asyncio.run(scenario())

    assert accepted == [True] * RESENDS_MAX + [False, False]
    assert idle_while_waiting[:RESENDS_MAX] == [False] * RESENDS_MAX
    assert resending == 0
