"""Idempotency keys held in flight per batch: one step under the lock, all or nothing."""

from __future__ import annotations

import pytest

from lequan.services.idempotency import InFlight


def test_a_batch_holds_its_new_keys_and_not_a_key_twice() -> None:
    inflight = InFlight(entries_max=10)
    assert inflight.acquire_many([("wechat", "a")]) == [True]
    held = inflight.acquire_many([("wechat", "a"), ("wechat", "b"), ("wechat", "b")])
    assert held == [False, True, False]  # "a" is busy; "b" twice in one batch is one request
    inflight.release_many([("wechat", "a"), ("wechat", "b")])
    assert inflight.acquire_many([("wechat", "a"), ("wechat", "b")]) == [True, True]


def test_a_batch_beyond_the_bound_holds_nothing() -> None:
    """Over the bound is an impossible state (the request limits keep below it),
    asserted before any key is taken: no key is left held, answering 409 for ever."""
    inflight = InFlight(entries_max=2)
    with pytest.raises(AssertionError):
        inflight.acquire_many([("wechat", "a"), ("wechat", "b"), ("wechat", "c")])
    assert inflight.acquire_many([("wechat", "a"), ("wechat", "b")]) == [True, True]
