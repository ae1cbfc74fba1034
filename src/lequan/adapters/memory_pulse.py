"""The pulse held in this process: the embedded default's whole view, and the buffer
the Redis pulse counts into between flushes.

A dictionary per second, per minute and per group, behind one lock; old
seconds and minutes are dropped as new ones arrive. Past a bound a new name
is dropped (logged once per second or group), never the process's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import structlog

from lequan.ports.pulse import (
    FIELDS_PER_SECOND_MAX,
    MINUTES_KEPT,
    SECONDS_KEPT,
    TOTAL_FIELDS_MAX,
)

__all__ = ["MemoryPulse", "PulseCounts"]

log = structlog.get_logger("lequan.pulse")

_NO_TOTALS: Mapping[tuple[str, str], int] = {}


class PulseCounts:
    """Counts and marks, bounded; not locked (``MemoryPulse`` locks around it)."""

    def __init__(self) -> None:
        self.per_second: dict[int, dict[str, int]] = {}
        self.totals: dict[str, dict[str, int]] = {}
        self.per_minute: dict[tuple[int, str], dict[str, int]] = {}
        self.marks: dict[str, int] = {}
        self._newest_s = 0
        self._newest_min = 0

    def __bool__(self) -> bool:
        return bool(self.per_second or self.totals or self.per_minute or self.marks)

    def add(
        self,
        at_s: int,
        per_second: Mapping[str, int],
        totals: Mapping[tuple[str, str], int],
        per_minute: Mapping[tuple[str, str], int],
    ) -> None:
        if per_second:
            second = self.per_second.get(at_s)
            if second is None:
                second = self.per_second[at_s] = {}
                if at_s > self._newest_s:
                    self._newest_s = at_s
                    self._forget_seconds()
            _count(second, per_second, FIELDS_PER_SECOND_MAX, f"second {at_s}")
        for (group, field), count in totals.items():
            fields = self.totals.get(group)
            if fields is None:
                fields = self.totals[group] = {}
            _count(fields, {field: count}, TOTAL_FIELDS_MAX, group)
        if per_minute:
            minute = at_s // 60
            if minute > self._newest_min:
                self._newest_min = minute
                self._forget_minutes()
            for (group, field), count in per_minute.items():
                fields = self.per_minute.get((minute, group))
                if fields is None:
                    fields = self.per_minute[(minute, group)] = {}
                _count(fields, {field: count}, TOTAL_FIELDS_MAX, group)

    def mark(self, marks: Mapping[str, int]) -> None:
        for name, at_ms in marks.items():
            known = self.marks.get(name)
            if known is None or at_ms < known:
                self.marks[name] = at_ms

    def merge(self, other: PulseCounts) -> None:
        """Take back counts a failed flush could not hand over."""
        for at_s, fields in other.per_second.items():
            self.add(at_s, fields, _NO_TOTALS, _NO_TOTALS)
        for group, fields in other.totals.items():
            self.add(0, {}, {(group, f): n for f, n in fields.items()}, _NO_TOTALS)
        for (minute, group), fields in other.per_minute.items():
            self.add(minute * 60, {}, _NO_TOTALS, {(group, f): n for f, n in fields.items()})
        self.mark(other.marks)

    def _forget_seconds(self) -> None:
        oldest = self._newest_s - SECONDS_KEPT
        for at_s in [s for s in self.per_second if s <= oldest]:
            del self.per_second[at_s]

    def _forget_minutes(self) -> None:
        oldest = self._newest_min - MINUTES_KEPT
        for key in [k for k in self.per_minute if k[0] <= oldest]:
            del self.per_minute[key]


def _count(fields: dict[str, int], counts: Mapping[str, int], bound: int, where: str) -> None:
    for name, count in counts.items():
        if name in fields:
            fields[name] += count
        elif len(fields) < bound:
            fields[name] = count
        else:
            log.warning("pulse_field_dropped", where=where, field=name, bound=bound)


class MemoryPulse:
    """The Pulse port in this process's memory (``shared`` is False)."""

    shared = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = PulseCounts()

    def add(
        self,
        at_s: int,
        per_second: Mapping[str, int],
        totals: Mapping[tuple[str, str], int] = _NO_TOTALS,
        per_minute: Mapping[tuple[str, str], int] = _NO_TOTALS,
    ) -> None:
        with self._lock:
            self._counts.add(at_s, per_second, totals, per_minute)

    def mark(self, marks: Mapping[str, int]) -> None:
        with self._lock:
            self._counts.mark(marks)

    def flush(self) -> None:
        return None

    def seconds(self, start_s: int, end_s: int) -> dict[int, dict[str, int]]:
        with self._lock:
            return {
                at_s: dict(fields)
                for at_s, fields in self._counts.per_second.items()
                if start_s <= at_s < end_s
            }

    def totals(self, groups: Sequence[str]) -> dict[str, dict[str, int]]:
        with self._lock:
            return {group: dict(self._counts.totals.get(group, {})) for group in groups}

    def minutes(self, group: str, start_min: int, end_min: int) -> dict[int, dict[str, int]]:
        with self._lock:
            return {
                minute: dict(fields)
                for (minute, name), fields in self._counts.per_minute.items()
                if name == group and start_min <= minute < end_min
            }

    def marks(self, names: Sequence[str]) -> dict[str, int]:
        with self._lock:
            return {name: self._counts.marks[name] for name in names if name in self._counts.marks}

    def take(self) -> PulseCounts:
        """Everything counted since the last take (the Redis pulse's flush)."""
        with self._lock:
            counts, self._counts = self._counts, PulseCounts()
            return counts

    def give_back(self, counts: PulseCounts) -> None:
        with self._lock:
            self._counts.merge(counts)
