"""The claim gate held in this process, for the embedded mode and the unit tests.

One process answers every claim in the embedded mode, so a dictionary behind
one lock is all the atomicity a flash sale needs there; the Redis gate gives
the same answers to many processes. Both pass ``tests/integration/
test_gate_contract.py``, which is the definition of the rules below.

The rules of one reservation, checked in this order:

1. no stock registered for (pool, template)        → ``UNKNOWN_STOCK``
2. ``campaign_limit > 0`` and the person's campaign
   count has reached it                             → ``CAMPAIGN_LIMIT``
3. the person's count in the pool has reached
   ``limit`` (whatever the template)                → ``ALREADY_CLAIMED``
4. the template's stock is 0                        → ``SOLD_OUT``
5. otherwise take one: stock - 1, pool count + 1,
   campaign count + 1 (only when the request
   carries a campaign limit)                        → ``OK``

A campaign count is kept only for requests that carry a campaign limit: a
campaign without one would otherwise hold one counter per person that
nothing ever reads (and the Redis gate would pay a round trip to keep it).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from lequan.ports import ReserveOutcome, ReserveRequest, ReserveResult

__all__ = ["MemoryGate", "checked_reset"]

BATCH_SIZE_MAX_DEFAULT = 10_000


class MemoryGate:
    """A ClaimGate in a dictionary; every call holds one lock from start to end."""

    def __init__(self, *, batch_size_max: int = BATCH_SIZE_MAX_DEFAULT) -> None:
        if batch_size_max < 1:
            raise ValueError(f"batch_size_max must be at least 1, got {batch_size_max}")
        self._batch_size_max = batch_size_max
        self._lock = threading.Lock()
        # pool → template_id → stock left
        self._stock: dict[str, dict[str, int]] = {}
        # pool → person_id → claims in the pool; a person at 0 has no entry
        self._pool_claimed: dict[str, dict[str, int]] = {}
        # campaign_id → person_id → claims in the campaign; a person at 0 has no entry
        self._campaign_claimed: dict[str, dict[str, int]] = {}

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        """Answer each request in order, as if each had come alone.

        The lock is held for the whole batch so a request sees every earlier
        one of its batch, as the Redis gate's scripts do.
        """
        self._check_batch_size(len(requests))
        with self._lock:
            return [self._reserve_one(request) for request in requests]

    def _reserve_one(self, request: ReserveRequest) -> ReserveResult:
        pool_stock = self._stock.get(request.pool)
        if pool_stock is None or request.template_id not in pool_stock:
            return ReserveResult(ReserveOutcome.UNKNOWN_STOCK, claim_seq=0, remaining=0)
        left = pool_stock[request.template_id]
        assert left >= 0, f"negative stock {left} in {request.pool}/{request.template_id}"

        campaign_claimed = self._campaign_claimed.get(request.campaign_id, {})
        if (
            request.campaign_limit > 0
            and campaign_claimed.get(request.person_id, 0) >= request.campaign_limit
        ):
            return ReserveResult(ReserveOutcome.CAMPAIGN_LIMIT, claim_seq=0, remaining=left)

        pool_claimed = self._pool_claimed.setdefault(request.pool, {})
        count = pool_claimed.get(request.person_id, 0)
        if count >= request.limit:
            return ReserveResult(ReserveOutcome.ALREADY_CLAIMED, claim_seq=0, remaining=left)
        if left == 0:
            return ReserveResult(ReserveOutcome.SOLD_OUT, claim_seq=0, remaining=0)

        pool_stock[request.template_id] = left - 1
        pool_claimed[request.person_id] = count + 1
        if request.campaign_limit > 0:
            campaign_claimed = self._campaign_claimed.setdefault(request.campaign_id, {})
            campaign_claimed[request.person_id] = campaign_claimed.get(request.person_id, 0) + 1
        return ReserveResult(ReserveOutcome.OK, claim_seq=count + 1, remaining=left - 1)

    def release(self, requests: Sequence[tuple[ReserveRequest, int]]) -> None:
        """Hand back reservations whose commit failed, so the stock is sold again.

        A release the gate cannot match must not corrupt it. Stock comes
        back only while the person still holds a claim in the pool: a
        release never reserved, or made before a reset that rebuilt the pool
        from the store (which never saw the failed commit), gives back
        nothing. Counts never go below zero.
        """
        self._check_batch_size(len(requests))
        with self._lock:
            for request, _claim_seq in requests:
                if _decrement(self._pool_claimed.get(request.pool), request.person_id):
                    pool_stock = self._stock.get(request.pool)
                    if pool_stock is not None and request.template_id in pool_stock:
                        pool_stock[request.template_id] += 1
                if request.campaign_limit > 0:
                    _decrement(self._campaign_claimed.get(request.campaign_id), request.person_id)

    def remaining(self, pool: str, template_id: str) -> int | None:
        with self._lock:
            pool_stock = self._stock.get(pool)
            return None if pool_stock is None else pool_stock.get(template_id)

    def reset_pool(
        self, pool: str, *, stock: Mapping[str, int], claimed: Mapping[str, int]
    ) -> None:
        """Replace the pool with the store's truth; empty ``stock`` forgets the pool."""
        new_stock = checked_reset(stock, what="stock", keep_zero=True)
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        with self._lock:
            if new_stock:
                self._stock[pool] = new_stock
            else:
                self._stock.pop(pool, None)
            self._pool_claimed[pool] = new_claimed

    def reset_campaign(self, campaign_id: str, *, claimed: Mapping[str, int]) -> None:
        new_claimed = checked_reset(claimed, what="claimed", keep_zero=False)
        with self._lock:
            self._campaign_claimed[campaign_id] = new_claimed

    def close(self) -> None:
        """Nothing to close; here so the embedded mode shuts down like the others."""

    def _check_batch_size(self, size: int) -> None:
        if size > self._batch_size_max:
            raise ValueError(f"batch of {size} exceeds batch_size_max {self._batch_size_max}")


def checked_reset(values: Mapping[str, int], *, what: str, keep_zero: bool) -> dict[str, int]:
    """Copy a reset's map, refusing negatives.

    A stock of 0 is kept (sold out is not unknown); a claim count of 0 is
    dropped, because an absent person already counts as 0.
    """
    copied: dict[str, int] = {}
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{what} for {key!r} must not be negative, got {value}")
        if value > 0 or keep_zero:
            copied[key] = value
    return copied


def _decrement(counts: dict[str, int] | None, person_id: str) -> bool:
    """Take one from the person's count if there is one to take; True if taken."""
    count = 0 if counts is None else counts.get(person_id, 0)
    if counts is None or count == 0:
        return False
    if count > 1:
        counts[person_id] = count - 1
    else:
        del counts[person_id]
    return True
