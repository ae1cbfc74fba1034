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
                accepted.append(channel.resend_later(item, "overloaded"))
                idle_while_waiting.append(channel.idle())
                if accepted[-1]:
                    assert await asyncio.wait_for(channel.queue.get(), timeout=5) == item
            assert channel.resent_for == {"overloaded": RESENDS_MAX}
            return accepted, idle_while_waiting, channel.resending

    accepted, idle_while_waiting, resending = asyncio.run(scenario())

    assert accepted == [True] * RESENDS_MAX + [False, False]
    assert idle_while_waiting[:RESENDS_MAX] == [False] * RESENDS_MAX
    assert resending == 0


def test_a_claim_waiting_for_the_draw_is_parked_until_it_is_published() -> None:
    """Answered at once (entered), a claim waits in its channel, which is not done
    meanwhile; once the draw is published it goes again, with its key and the time
    it was pressed."""

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            channel = _Channel("wechat", client, started_wall=1_733_000_000.0, started_perf=5.0)
            item = (7, "sim-7", 0, 5.25, False)
            channel.polls["sim-7"] = 1
            channel.park(item, 30.0)
            assert not channel.idle()
            assert channel.queue.empty()
            channel.unpark()  # published: at once, whatever the Retry-After said
            assert await asyncio.wait_for(channel.queue.get(), timeout=5) == item
            assert channel.idle()
            assert channel.pressed_at("sim-7", item[3]) == "2024-11-30T20:53:20.250+00:00"
            channel.pressed_s["sim-7"] = 0.125  # as the crowd's schedule had it
            assert channel.pressed_at("sim-7", item[3]) == "2024-11-30T20:53:20.125+00:00"

    asyncio.run(scenario())
