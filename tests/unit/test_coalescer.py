"""Single claims that arrive together are served as one batch, each answered alone
(``Coalescer``, as ``FastClaims`` uses it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from lequan.http.coalescing import Coalescer
from lequan.services.claim_answers import ClaimResult
from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Answer, Idempotency


class RecordingClaims:
    """Stands in for ClaimService: answers each claim with its own user id."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    def claim(self, channel_id: str, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        with self.lock:
            self.batches.append((channel_id, [r.channel_user_id for r in requests]))
        return [ClaimResult("issued", Answer(201, {"user": r.channel_user_id})) for r in requests]


def _request(user: str) -> ClaimRequest:
    return ClaimRequest(user, "c", "r1", "t", None, Idempotency("wechat", f"k-{user}", "h"))


def test_concurrent_claims_become_one_batch_per_channel_and_each_gets_its_answer() -> None:
    claims = RecordingClaims()
    coalescer = Coalescer(claims.claim, wait_s=0.01, batch_max=1000, workers=4, name="test")

    async def crowd() -> list[ClaimResult]:
        wechat = [coalescer.submit("wechat", _request(f"w{i}")) for i in range(50)]
        alipay = [coalescer.submit("alipay", _request(f"a{i}")) for i in range(20)]
        return await asyncio.gather(*wechat, *alipay)

    results = asyncio.run(crowd())
    coalescer.close()
    assert [r.answer.body["user"] for r in results] == [f"w{i}" for i in range(50)] + [
        f"a{i}" for i in range(20)
    ]
    assert sorted((channel, len(users)) for channel, users in claims.batches) == [
        ("alipay", 20),
        ("wechat", 50),
    ]


def test_a_full_batch_goes_at_once_and_never_exceeds_the_limit() -> None:
    claims = RecordingClaims()
    coalescer = Coalescer(claims.claim, wait_s=5.0, batch_max=10, workers=4, name="test")

    async def crowd() -> list[ClaimResult]:
        return await asyncio.wait_for(
            asyncio.gather(*(coalescer.submit("wechat", _request(f"u{i}")) for i in range(30))),
            timeout=2.0,  # far below wait_s: full batches did not wait for the timer
        )

    results = asyncio.run(crowd())
    coalescer.close()
    assert len(results) == 30
    assert [len(users) for _, users in claims.batches] == [10, 10, 10]


def test_a_failing_batch_answers_every_waiter_with_the_error() -> None:
    class Broken(RecordingClaims):
        def claim(self, channel_id: str, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
            raise RuntimeError("store gone")

    coalescer = Coalescer(Broken().claim, wait_s=0.001, batch_max=100, workers=4, name="test")

    async def crowd() -> list[ClaimResult | BaseException]:
        return await asyncio.gather(
            *(coalescer.submit("wechat", _request(f"u{i}")) for i in range(5)),
            return_exceptions=True,
        )

    results = asyncio.run(crowd())
    coalescer.close()
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_handler_that_answers_too_few_fails_every_waiter_instead_of_leaving_some() -> None:
    def short(_channel: str, requests: Sequence[ClaimRequest]) -> list[ClaimResult]:
        return [ClaimResult("issued", Answer(201, {})) for _ in requests[1:]]

    coalescer = Coalescer(short, wait_s=0.001, batch_max=100, workers=1, name="test")

    async def crowd() -> list[ClaimResult | BaseException]:
        return await asyncio.wait_for(
            asyncio.gather(
                *(coalescer.submit("wechat", _request(f"u{i}")) for i in range(5)),
                return_exceptions=True,
            ),
            timeout=2.0,  # a waiter left without an answer would hang here
        )

    results = asyncio.run(crowd())
    coalescer.close()
    assert len(results) == 5
    assert all(isinstance(r, AssertionError) for r in results)


def test_a_full_batch_leaves_no_timer_behind_to_cut_the_next_one_short() -> None:
    claims = RecordingClaims()
    coalescer = Coalescer(claims.claim, wait_s=0.5, batch_max=3, workers=1, name="test")

    async def crowd() -> list[ClaimResult]:
        first = [coalescer.submit("wechat", _request(f"a{i}")) for i in range(3)]
        done = await asyncio.gather(*first)  # a full batch: went at once
        await asyncio.sleep(0.3)  # the first batch's timer would fire 0.2 s from now
        started = asyncio.get_running_loop().time()
        late = await asyncio.gather(coalescer.submit("wechat", _request("b0")))
        # The second batch waited its own wait_s, not what was left of the first's.
        assert asyncio.get_running_loop().time() - started >= 0.45
        return [*done, *late]

    results = asyncio.run(crowd())
    coalescer.close()
    assert len(results) == 4
    assert [len(users) for _, users in claims.batches] == [3, 1]
