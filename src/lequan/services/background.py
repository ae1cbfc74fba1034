"""A step of work run over and over in a background thread until stopped (the
sweeper, the relay): the step says how long to pause before it runs again; a
step that fails is logged and tried again after ``retry_pause_s``."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

__all__ = ["Loop"]

log = structlog.get_logger(__name__)

# How long ``stop`` waits for a step in progress to finish.
STOP_JOIN_S = 10.0


class Loop:
    """Runs ``step`` in a daemon thread named ``name``: first after ``first_pause_s``,
    then after the pause each run returns."""

    def __init__(
        self,
        name: str,
        step: Callable[[], float],
        *,
        first_pause_s: float,
        retry_pause_s: float,
    ) -> None:
        self._step = step
        self._first_pause_s = first_pause_s
        self._retry_pause_s = retry_pause_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)

    def _run(self) -> None:
        pause_s = self._first_pause_s
        while not self._stop.wait(pause_s):
            try:
                pause_s = self._step()
            except Exception as error:  # keep going: the next run retries
                log.error(
                    f"{self._thread.name.removeprefix('lequan-')}_failed",
                    error_type=type(error).__name__,
                )
                pause_s = self._retry_pause_s
