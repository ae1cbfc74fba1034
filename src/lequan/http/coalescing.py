"""Requests that arrive together on the event loop, handed on in batches.

A blocking call (the claim service, the nonce store) is paid once per
batch instead of once per request, from a thread, so the event loop keeps
serving; each request still waits for, and gets, its own result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

G = TypeVar("G", bound=Hashable)
I = TypeVar("I")  # noqa: E741  # the item, as in the type's own name
R = TypeVar("R")


class Coalescer(Generic[G, I, R]):
    """Gathers items per group and hands each group's batch to ``handle`` in a thread.

    A group's items go once the first of them has waited ``wait_s`` (0: at
    the next turn of the event loop) or they fill a batch. ``handle(group,
    items)`` answers every item, in order. Bounded: a batch holds at most
    ``batch_max`` items; at most ``workers`` batches run at once (more wait
    for a thread).
    """

    def __init__(
        self,
        handle: Callable[[G, list[I]], Sequence[R]],
        *,
        wait_s: float,
        batch_max: int,
        workers: int,
        name: str,
    ) -> None:
        assert wait_s >= 0
        assert batch_max >= 1
        self._handle = handle
        self._wait_s = wait_s
        self._batch_max = batch_max
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._pending: dict[G, list[tuple[I, asyncio.Future[R]]]] = {}
        self._timers: dict[G, asyncio.TimerHandle] = {}

    async def submit(self, group: G, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        pending = self._pending.setdefault(group, [])
        pending.append((item, future))
        if len(pending) == 1:
            self._timers[group] = loop.call_later(self._wait_s, self._flush, group)
        elif len(pending) >= self._batch_max:
            self._flush(group)
        return await future

    def _flush(self, group: G) -> None:
        timer = self._timers.pop(group, None)
        if timer is not None:  # a full batch goes early: its timer must not cut the next short
            timer.cancel()
        batch = self._pending.pop(group, None)
        if batch:
            asyncio.get_running_loop().create_task(self._run(group, batch))

    async def _run(self, group: G, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self._handle, group, [item for item, _ in batch]
            )
            assert len(results) == len(batch), "a handler answers every item"
        except Exception as error:  # every waiter gets an answer, whatever happened
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
