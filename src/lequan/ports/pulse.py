"""The pulse: live figures that every process adds to and any process reads.

The big screen and the public page show what the whole platform is doing
(claims per second, redemptions by district, the first redemption), not
what one worker saw. Each process counts into memory as it answers, which
costs the claim path a dictionary update, and a background loop flushes the
counts to where every process reads them (``flush``): Redis when the
platform runs several processes, this process's memory on the embedded
default (one process: its memory is the whole view).

Three kinds of figures, all named by services (``services/live.py``); the
adapters know nothing of what a name means:

- **per-second counters** (``per_second``): a name and a count for one Unix
  second, kept ``SECONDS_KEPT`` seconds (the screen's fifteen minutes);
- **totals** (``totals``): a count under a group and a field, kept for the
  campaign's life (a group is e.g. one campaign's redemptions by region);
- **per-minute totals** (``per_minute``): a count under a group and a field for
  one minute, kept ``MINUTES_KEPT`` minutes (a merchant's redemptions this
  minute against its own last half hour);
- **marks** (``marks``): the earliest instant something happened (the first
  redemption, a pool's sell-out), in milliseconds; the earliest mark wins
  whichever process made it.

Every name is bounded by what the platform has (campaigns, outcomes, apps,
regions, merchant categories, merchants), never by people or vouchers;
each adapter bounds its memory besides (``FIELDS_PER_SECOND_MAX``,
``TOTAL_FIELDS_MAX``), dropping what is past the bound and saying so in the
log, since a figure lost from a screen is better than a process out of memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

__all__ = [
    "FIELDS_PER_SECOND_MAX",
    "MINUTES_KEPT",
    "SECONDS_KEPT",
    "TOTAL_FIELDS_MAX",
    "Pulse",
    "PulseUnavailable",
]

# Fifteen minutes at one-second resolution, and a minute's slack for late flushes.
SECONDS_KEPT = 960
# An hour of per-minute totals.
MINUTES_KEPT = 60
# Names counted in one second: campaigns × outcomes, apps × status classes, codes.
FIELDS_PER_SECOND_MAX = 5_000
# Fields of one group of totals: a campaign's merchants are the largest group.
TOTAL_FIELDS_MAX = 200_000


class PulseUnavailable(Exception):
    """The shared pulse did not answer: the screen shows what it had, the claim goes on."""


class Pulse(Protocol):
    @property
    def shared(self) -> bool:
        """True when other processes read what this one flushes."""
        ...

    def add(
        self,
        at_s: int,
        per_second: Mapping[str, int],
        totals: Mapping[tuple[str, str], int] = ...,
        per_minute: Mapping[tuple[str, str], int] = ...,
    ) -> None:
        """Count, in this process's memory only: never blocks on the network."""
        ...

    def mark(self, marks: Mapping[str, int]) -> None:
        """Remember each name's earliest instant (Unix milliseconds), in memory."""
        ...

    def flush(self) -> None:
        """Hand what this process counted to the shared view (a no-op when not shared);
        on ``PulseUnavailable`` the counts are kept and go with the next flush."""
        ...

    def seconds(self, start_s: int, end_s: int) -> dict[int, dict[str, int]]:
        """The per-second counters of every second in ``[start_s, end_s)`` that has any."""
        ...

    def totals(self, groups: Sequence[str]) -> dict[str, dict[str, int]]:
        """Each group's fields (a group never counted is an empty mapping)."""
        ...

    def minutes(self, group: str, start_min: int, end_min: int) -> dict[int, dict[str, int]]:
        """A group's per-minute fields for every minute (Unix minutes) in ``[start_min,
        end_min)`` that has any."""
        ...

    def marks(self, names: Sequence[str]) -> dict[str, int]:
        """The marks made among these names (a name never marked is absent)."""
        ...
