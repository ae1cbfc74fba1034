"""The clocks: the system's, and one the caller sets (tests, simulations, replays)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["ManualClock", "SystemClock"]


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """Stands still until told to move; thread-safe."""

    def __init__(self, now: datetime) -> None:
        assert now.tzinfo is not None
        self._now = now
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now += delta
            return self._now

    def set(self, now: datetime) -> None:
        assert now.tzinfo is not None
        with self._lock:
            self._now = now
