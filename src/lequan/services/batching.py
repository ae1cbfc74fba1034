"""Writer threads that take what is waiting in batches: up to a size, waiting a
little for more. The claim committer and the redemption writer are two."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BatchWriter", "gather"]

T = TypeVar("T")


def gather(
    waiting: queue.SimpleQueue[T | None],
    first: T,
    *,
    size_max: int,
    wait_s: float,
    size: Callable[[T], int] = lambda _item: 1,
) -> tuple[list[T], bool]:
    """``first`` and what else arrives within ``wait_s`` of it, up to ``size_max``.

    Returns the batch and whether a ``None`` (the writer's signal to stop)
    was taken from the queue.
    """
    batch = [first]
    total = size(first)
    deadline = time.monotonic() + wait_s
    while total < size_max:
        remaining_s = deadline - time.monotonic()
        try:
            item = waiting.get(timeout=remaining_s) if remaining_s > 0 else waiting.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
        total += size(item)
    return batch, False


class BatchWriter(Generic[T]):
    """One thread writing the items put to it, a batch at a time (``_handle_batch``).

    A subclass sets itself up, then calls ``_start``; it counts what waits
    under ``_lock`` and refuses new items once ``_closed``.
    """

    def __init__(
        self,
        *,
        name: str,
        size_max: int,
        wait_s: float,
        size: Callable[[T], int] = lambda _item: 1,
    ) -> None:
        self._size_max = size_max
        self._wait_s = wait_s
        self._size = size
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def _put(self, item: T) -> None:
        self._queue.put(item)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what was put, then stop."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = gather(
                self._queue, first, size_max=self._size_max, wait_s=self._wait_s, size=self._size
            )
            self._handle_batch(batch)
            if stop:
                return

    def _handle_batch(self, batch: list[T]) -> None:
        raise NotImplementedError
