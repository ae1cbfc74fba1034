"""The store's own errors: what any store adapter raises, whatever its engine.

The adapter translates its driver's exceptions at the seam, as httpx does
with its transports, so services and the HTTP layer never see SQLAlchemy:

    StoreError                 the store could not do what was asked
    ├── ConstraintViolated     a CHECK or foreign key refused the row
    │   └── DuplicateKey       a unique key is taken (a race lost, a retry)
    ├── UnstorableValue        a value the store cannot hold slipped past validation
    └── StoreUnavailable       unreachable, timed out, a lock or deadlock victim:
                               nothing was done, retry shortly
"""

from __future__ import annotations

__all__ = [
    "ConstraintViolated",
    "DuplicateKey",
    "StoreError",
    "StoreUnavailable",
    "UnstorableValue",
]


class StoreError(Exception):
    """The store refused or failed a statement; the transaction is lost."""


class ConstraintViolated(StoreError):
    """A row broke one of the schema's rules (a CHECK, a foreign key, a unique key)."""


class DuplicateKey(ConstraintViolated):
    """A row with the same unique key exists: someone else wrote it first."""


class UnstorableValue(StoreError):
    """A value does not fit its column (too long, out of range): the caller's input."""


class StoreUnavailable(StoreError):
    """The store did not answer in time or dropped the connection; nothing was committed
    unless the failure came during COMMIT itself."""
