"""Waiting for what another thread, process or server does: on the condition
itself, polled until a deadline, never on a sleep guessed long enough.

A guessed sleep is too long on a quiet machine and too short on a busy one;
a condition returns as soon as it holds, so its deadline can be generous:
it bounds a broken test and says what never happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]

# From a millisecond, doubling to this: quick to notice, light on what is polled
# (some conditions are a query to the store).
POLL_INTERVAL_MAX_S = 0.05


def wait_until(condition: Callable[[], object], *, what: str, timeout_s: float = 30.0) -> None:
    """Return once ``condition()`` is true; fail saying ``what`` did not happen in time.

    ``what`` names the awaited fact ("the writer handed the stock back"), so a
    failure reads as the expectation that was not met.
    """
    assert timeout_s > 0, timeout_s
    deadline = time.monotonic() + timeout_s
    interval_s = 0.001
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(interval_s)
        interval_s = min(2 * interval_s, POLL_INTERVAL_MAX_S)
