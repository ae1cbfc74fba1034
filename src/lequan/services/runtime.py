"""What every service needs, built once by ``bootstrap`` and passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lequan.config import Settings
from lequan.metrics import Instruments, runtime_instruments
from lequan.ports import ClaimGate, Clock, KeyRing, NonceStore, Store
from lequan.ports.central import CentralPlatform
from lequan.ports.pulse import Pulse
from lequan.services.idempotency import InFlight

__all__ = ["Runtime"]


@dataclass
class Runtime:
    settings: Settings
    store: Store
    gate: ClaimGate
    keyring: KeyRing
    clock: Clock
    nonces: NonceStore
    # Live figures every process adds to and the big screen reads (``services/live.py``).
    pulse: Pulse
    inflight: InFlight = field(default_factory=InFlight)
    # What the services and the HTTP layer count and time (lequan.metrics).
    metrics: Instruments = field(default_factory=runtime_instruments)
    # The central (national) platform, when this province is connected to one.
    central: CentralPlatform | None = None
    # Told the id of every campaign an operator changed (caches drop it).
    campaign_listeners: list[Callable[[str], None]] = field(default_factory=list)

    # Told when an operator imported merchants (caches drop what they hold).
    merchant_listeners: list[Callable[[], None]] = field(default_factory=list)

    def campaign_changed(self, campaign_id: str) -> None:
        for listener in self.campaign_listeners:
            listener(campaign_id)

    def merchants_changed(self) -> None:
        for listener in self.merchant_listeners:
            listener()
