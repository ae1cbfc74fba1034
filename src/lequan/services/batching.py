"""Gathering a batch for a writer thread: what is waiting, up to a size and a wait."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["gather"]

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
