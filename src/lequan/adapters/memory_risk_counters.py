"""The risk counters in this process's memory: the embedded default, and the model the
Redis counters are tested against (``tests/integration/test_risk_counters_contract.py``).

Kept as a ring of generations: one dictionary per sub-window (counted
tallies) or window (distinct ones), dropped whole once the instant has moved
past what any figure reads. Bounded by ``entries_max`` (a name in a
generation is one entry, a distinct member another): past it a new name or
member is not kept and its figure is unknown (None), said once per
generation in the log. A full ring lets a tally through rather than take
the process's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import structlog

from lequan.ports.risk_counters import SUB_WINDOWS, Tallies

__all__ = ["ENTRIES_MAX_DEFAULT", "MemoryRiskCounters"]

log = structlog.get_logger(__name__)

ENTRIES_MAX_DEFAULT = 1_000_000


class MemoryRiskCounters:
    """The RiskCounters port in memory, for one process."""

    def __init__(self, *, entries_max: int = ENTRIES_MAX_DEFAULT) -> None:
        if entries_max < 1:
            raise ValueError(f"entries_max must be positive, got {entries_max}")
        self._entries_max = entries_max
        self._lock = threading.Lock()
        # (sub-window ms, index) -> name -> events in that sub-window
        self._counts: dict[tuple[int, int], dict[str, int]] = {}
        # (window ms, index) -> name -> members seen in that window
        self._members: dict[tuple[int, int], dict[str, set[str]]] = {}
        self._sizes: dict[tuple[str, int, int], int] = {}
        self._entries = 0
        self._full_logged: set[tuple[str, int, int]] = set()

    @property
    def entries(self) -> int:
        """Names and members kept now (for tests and the bound)."""
        return self._entries

    def count(self, groups: Sequence[Tallies], *, now_ms: int) -> list[list[int | None]]:
        with self._lock:
            self._forget(now_ms)
            return [self._figures(group, now_ms) for group in groups]

    def _figures(self, group: Tallies, now_ms: int) -> list[int | None]:
        if group.members is None:
            return self._counted(group, now_ms)
        figures = self._distinct(group, group.members, now_ms)
        if group.mirror is not None:
            mirrored = Tallies(group.window_s, [group.mirror + m for m in group.members])
            figures += self._distinct(mirrored, group.names, now_ms)
        return figures

    def close(self) -> None:
        """Nothing to close."""

    def _counted(self, group: Tallies, now_ms: int) -> list[int | None]:
        span_ms = group.window_s * 1000 // SUB_WINDOWS
        index = now_ms // span_ms
        current = self._counts.setdefault((span_ms, index), {})
        earlier = [
            generation
            for k in range(1, SUB_WINDOWS)
            if (generation := self._counts.get((span_ms, index - k)))
        ]
        room = self._entries_max - self._entries
        added = 0
        dropped = False
        figures: list[int | None] = []
        for name in group.names:
            seen = current.get(name)
            if seen is None:
                if added == room:
                    figures.append(None)
                    dropped = True
                    continue
                added += 1
                seen = 0
            seen += 1
            current[name] = seen
            for generation in earlier:
                seen += generation.get(name, 0)
            figures.append(seen)
        self._took("c", span_ms, index, added, full=dropped)
        return figures

    def _distinct(self, group: Tallies, members: Sequence[str], now_ms: int) -> list[int | None]:
        window_ms = group.window_s * 1000
        index = now_ms // window_ms
        generation = self._members.setdefault((window_ms, index), {})
        room = self._entries_max - self._entries
        added = 0
        dropped = False
        figures: list[int | None] = []
        for name, member in zip(group.names, members, strict=True):
            known = generation.get(name)
            if known is None or member not in known:
                # A new name costs an entry for itself and one for its member.
                needed = 2 if known is None else 1
                if added + needed > room:
                    figures.append(None)
                    dropped = True
                    continue
                added += needed
                if known is None:
                    known = generation[name] = set()
                known.add(member)
            figures.append(len(known))
        self._took("d", window_ms, index, added, full=dropped)
        return figures

    def _took(self, kind: str, span_ms: int, index: int, added: int, *, full: bool) -> None:
        """Count a generation's new entries against the bound; say once if it dropped any."""
        self._entries += added
        key = (kind, span_ms, index)
        self._sizes[key] = self._sizes.get(key, 0) + added
        if full and key not in self._full_logged:
            self._full_logged.add(key)
            log.warning("risk_counters_full", entries_max=self._entries_max)

    def _forget(self, now_ms: int) -> None:
        """Drop every generation no figure reads at ``now_ms`` or later (a handful are
        kept: one per sub-window of each window in use)."""
        for span_ms, index in [
            key for key in self._counts if key[1] <= now_ms // key[0] - SUB_WINDOWS
        ]:
            del self._counts[span_ms, index]
            self._dropped("c", span_ms, index)
        for span_ms, index in [key for key in self._members if key[1] < now_ms // key[0]]:
            del self._members[span_ms, index]
            self._dropped("d", span_ms, index)

    def _dropped(self, kind: str, span_ms: int, index: int) -> None:
        self._entries -= self._sizes.pop((kind, span_ms, index), 0)
        self._full_logged.discard((kind, span_ms, index))
