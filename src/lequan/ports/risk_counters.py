"""The risk counters: how often a device, an address or a network claimed lately, and
how many identities a device (or devices an identity) showed, counted by every API
process together.

A claim batch counts all its claims in one call (``count``), its tallies
grouped by rule (``Tallies``): one round trip per batch on Redis, never one
per claim. Two kinds of tally:

- **counted** (no ``members``): events under a name in a sliding window of
  ``window_s``, kept as ``SUB_WINDOWS`` sub-windows of ``window_s /
  SUB_WINDOWS`` each; the figure is the events of the current sub-window and
  the ``SUB_WINDOWS - 1`` before it, so it never counts an event older than
  ``window_s`` and forgets one at most a sub-window early (with two, an event
  counts for at least half the window and at most all of it: four would cost
  Redis a third more for each batch, docs/risk.md);
- **distinct** (``members`` given): distinct members seen under a name in the
  fixed window of ``window_s`` the instant falls in (windows start at
  multiples of ``window_s`` since the Unix epoch); a member seen again is not
  counted again, so a family sharing a phone is never counted twice, and the
  count starts again with each window.

A figure includes the tally itself and the tallies of the same name before it
in its group, in order. A figure the counters cannot give (the in-memory bound reached)
is None: unknown, which fires no rule. Implementations: the in-process
``MemoryRiskCounters`` (the embedded default, bounded) and Redis
(``RedisRiskCounters``, keys that expire); one contract suite runs on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["SUB_WINDOWS", "RiskCounters", "RiskCountersUnavailable", "Tallies"]

# A counted window is kept as this many sub-windows (the last of them partial).
SUB_WINDOWS = 2


@dataclass(frozen=True, slots=True)
class Tallies:
    """Events to count in windows of ``window_s``, one under each name, in order; with
    ``members`` (one per name), distinct members under each name.

    Names of different rules must differ (a rule prefixes its own): two groups
    with one window share their counts by name.
    """

    window_s: int
    names: Sequence[str]
    members: Sequence[str] | None = None
    # Distinct tallies only: each pair counted from its member's side as well, under the
    # name ``mirror + member`` (its figures follow the names' in the group's list). It
    # is the same as a second group (``mirror + member``, with the names as members),
    # for one record of the pairs instead of two.
    mirror: str | None = None


class RiskCountersUnavailable(Exception):
    """The shared counters did not answer: the figures are unknown for this batch."""


class RiskCounters(Protocol):
    def count(self, groups: Sequence[Tallies], *, now_ms: int) -> list[list[int | None]]:
        """Count every tally at ``now_ms`` (Unix milliseconds); each one's figure, by group
        and name in the order given.

        Raises ``RiskCountersUnavailable`` when the shared store does not answer
        (nothing is known then of what it counted).
        """
        ...

    def close(self) -> None: ...
