"""Nonces of requests that arrive together are checked with one call to the store,
off the event loop, and each request still gets its own answer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

from lequan.adapters.nonces import MemoryNonceStore
from lequan.domain.errors import Unavailable
from lequan.http.deps import NonceChecks

TTL_S = 600


class FixedClock:
    def now(self) -> datetime:
        return datetime(2024, 11, 30, 2, 0, tzinfo=UTC)


class RecordingStore:
    """A NonceStore over the memory store that records each call and the thread it came on."""

    in_process = False  # a store with I/O behind it: the checks go to their thread

    def __init__(self, *, fail: bool = False) -> None:
        self.inner = MemoryNonceStore(10_000, clock=FixedClock())
        self.calls: list[tuple[str, int]] = []  # (method, how many nonces)
        self.threads: set[int] = set()
        self.fail = fail

    def remember(self, app_id: str, nonce: str, ttl_s: int) -> bool:
        self.calls.append(("remember", 1))
        self.threads.add(threading.get_ident())
        return self.inner.remember(app_id, nonce, ttl_s)

    @property
    def epoch_s(self) -> int:
        return self.inner.epoch_s

    def remember_many(self, nonces: Sequence[tuple[str, str]], ttl_s: int) -> list[bool]:
        self.calls.append(("remember_many", len(nonces)))
        self.threads.add(threading.get_ident())
        if self.fail:
            raise Unavailable("store_unavailable", "the nonce store does not answer")
        return self.inner.remember_many(nonces, ttl_s)


def _crowd(checks: NonceChecks, nonces: list[tuple[str, str]]) -> list[bool | BaseException]:
    async def run() -> list[bool | BaseException]:
        return await asyncio.gather(
            *(checks.remember(app_id, nonce, TTL_S) for app_id, nonce in nonces),
            return_exceptions=True,
        )

    try:
        return asyncio.run(run())
    finally:
        checks.close()


def test_requests_arriving_together_cost_one_store_call_off_the_loop() -> None:
    store = RecordingStore()
    store.inner.remember("wechat", "seen-before-01", TTL_S)
    checks = NonceChecks(store, inline=False)
    nonces = [("wechat", f"nonce-{n:04d}") for n in range(50)]
    nonces += [("wechat", "seen-before-01"), ("alipay", "nonce-0000"), ("wechat", "nonce-0000")]
    answers = _crowd(checks, nonces)
    assert answers == [True] * 50 + [False, True, False]
    assert store.calls == [("remember_many", 53)]
    assert threading.get_ident() not in store.threads, "the event loop never waits on the store"


def test_a_call_never_carries_more_than_batch_max() -> None:
    store = RecordingStore()
    checks = NonceChecks(store, inline=False, batch_max=10)
    answers = _crowd(checks, [("wechat", f"nonce-{n:04d}") for n in range(25)])
    assert answers == [True] * 25
    assert sorted(n for _, n in store.calls) == [5, 10, 10]


def test_a_store_that_fails_answers_every_waiter_with_its_error() -> None:
    store = RecordingStore(fail=True)
    checks = NonceChecks(store, inline=False)
    answers = _crowd(checks, [("wechat", f"nonce-{n:04d}") for n in range(5)])
    assert len(answers) == 5
    for answer in answers:
        assert isinstance(answer, Unavailable)
        assert answer.code == "store_unavailable"


def test_a_store_in_this_process_is_asked_at_once_on_the_loop() -> None:
    store = RecordingStore()
    checks = NonceChecks(store, inline=True)
    answers = _crowd(checks, [("wechat", "nonce-0001"), ("wechat", "nonce-0001")])
    assert answers == [True, False]
    assert store.calls == [("remember", 1), ("remember", 1)]
    assert store.threads == {threading.get_ident()}
