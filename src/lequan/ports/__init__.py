"""The seams between lequan's services and the world, as Protocols.

Each port has a real adapter and an in-process one that ships in ``src``
(serving the embedded mode, the demo and the unit tests alike); one contract
suite in ``tests/integration`` runs against every implementation. Services
and the HTTP layer import ports, never adapters; only ``bootstrap`` picks the
adapters.
"""

from lequan.ports.errors import (
    ConstraintViolated,
    DuplicateKey,
    StoreError,
    StoreUnavailable,
    UnstorableValue,
)
from lequan.ports.gate import (
    ClaimGate,
    Clock,
    DrawEntry,
    DrawnEntry,
    DrawProgress,
    DrawResult,
    EntryOutcome,
    GateUnavailable,
    KeyHolds,
    KeyMismatch,
    KeyRing,
    NonceStore,
    PendingReservation,
    ReserveOutcome,
    ReserveRequest,
    ReserveResult,
)
from lequan.ports.store import (
    CampaignRepository,
    DrawRepository,
    IdempotencyRepository,
    KeyCheckRepository,
    LedgerRepository,
    OutboxRepository,
    PeopleRepository,
    ProductRepository,
    QualificationRepository,
    RedemptionRiskRepository,
    RiskRepository,
    Store,
    UnitOfWork,
    VoucherRepository,
)

__all__ = [
    "CampaignRepository",
    "ClaimGate",
    "Clock",
    "ConstraintViolated",
    "DrawEntry",
    "DrawProgress",
    "DrawRepository",
    "DrawResult",
    "DrawnEntry",
    "DuplicateKey",
    "EntryOutcome",
    "GateUnavailable",
    "IdempotencyRepository",
    "KeyCheckRepository",
    "KeyHolds",
    "KeyMismatch",
    "KeyRing",
    "LedgerRepository",
    "NonceStore",
    "OutboxRepository",
    "PendingReservation",
    "PeopleRepository",
    "ProductRepository",
    "QualificationRepository",
    "RedemptionRiskRepository",
    "ReserveOutcome",
    "ReserveRequest",
    "ReserveResult",
    "RiskRepository",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnitOfWork",
    "UnstorableValue",
    "VoucherRepository",
]
