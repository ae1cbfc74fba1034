"""Single claims that arrive together are served as one batch, each answered alone
(``Coalescer``, as ``FastClaims`` uses it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from lequan.http.coalescing import Coalescer
from lequan.services.claiming import ClaimRequest, ClaimResult
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
