"""An in-process central for the province's unit tests: ``ports.central.CentralPlatform``
over central's own services and an in-memory store.

Not a mock: the same services and pure rules as the real central
(``lequan.central.services``, ``lequan.domain.qualification``), the same
input checks and codes, the real OPRF (so pseudonyms are what the HTTP
adapter would compute against a central with the same key). Only SQL and
HTTP are left out. Several provinces share one central::

    central = MemoryCentral.start(clock=clock)   # province "p1"
    other = central.as_province("p2")            # the same central, as p2

``down()`` and ``up()`` make every call raise ``CentralUnavailable``, as an
unreachable central does; ``calls`` counts the calls made, by method.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from datetime import date

from lequan.central.memory_store import MemoryCentralStore
from lequan.central.services import CentralService
from lequan.oprf import PseudonymKey
from lequan.ports import Clock
from lequan.ports.central import (
    CentralDay,
    CentralUnavailable,
    ConsumeRequest,
    ConsumeResult,
    EventResult,
    LockRequest,
    LockResult,
    SyncEvent,
)

__all__ = ["MemoryCentral"]


class _Switch:
    def __init__(self) -> None:
        self.up = True


class MemoryCentral:
    """One province's view of a central held in memory (implements ``CentralPlatform``)."""

    def __init__(
        self, service: CentralService, province: str, switch: _Switch | None = None
    ) -> None:
        self.service = service
        self.province = province
        self._switch = switch or _Switch()
        self.calls: Counter[str] = Counter()

    @classmethod
    def start(
        cls, *, clock: Clock, province: str = "p1", seed: bytes | None = None
    ) -> MemoryCentral:
        """A new central in memory, seen as ``province``; its OPRF key from ``seed``
        (32 bytes; random when None)."""
        store = MemoryCentralStore()
        key = PseudonymKey(store.oprf_seed(seed if seed is not None else os.urandom(32)))
        return cls(CentralService(store, clock, key), province)

    def as_province(self, province: str) -> MemoryCentral:
        """The same central, seen by another province (sharing its up or down)."""
        return MemoryCentral(self.service, province, self._switch)

    @property
    def store(self) -> MemoryCentralStore:
        store = self.service.store
        assert isinstance(store, MemoryCentralStore)
        return store

    def down(self) -> None:
        self._switch.up = False

    def up(self) -> None:
        self._switch.up = True

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if not self._switch.up:
            raise CentralUnavailable("central is down (MemoryCentral.down)")

    def pseudonyms(self, id_numbers: Sequence[str]) -> list[str]:
        from lequan import oprf

        self._call("pseudonyms")
        if not id_numbers:
            return []
        pseudonyms: list[str] = []
        for start in range(0, len(id_numbers), 1000):
            chunk = id_numbers[start : start + 1000]
            clients, blinded = oprf.blind(chunk)
            answer = self.service.key.evaluate(blinded)
            public_key = oprf.public_key_from_hex(self.service.key.public_key_hex)
            pseudonyms += oprf.finalize(clients, answer, public_key)
        return pseudonyms

    def lock(self, requests: Sequence[LockRequest]) -> list[LockResult]:
        self._call("lock")
        if not requests:
            return []
        return self.service.lock(self.province, requests)

    def consume(self, requests: Sequence[ConsumeRequest]) -> list[ConsumeResult]:
        self._call("consume")
        if not requests:
            return []
        return self.service.consume(self.province, requests)

    def release(self, lock_ids: Sequence[tuple[str, str]]) -> None:
        self._call("release")
        if lock_ids:
            self.service.release(self.province, lock_ids)

    def deliver(self, events: Sequence[SyncEvent]) -> list[EventResult]:
        self._call("deliver")
        if not events:
            return []
        return self.service.deliver(self.province, events)

    def ready(self) -> bool:
        self.calls["ready"] += 1
        return self._switch.up

    def day(self, day: date) -> CentralDay:
        self._call("day")
        return self.service.day(self.province, day)
