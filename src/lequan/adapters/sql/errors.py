"""SQLAlchemy's and the drivers' exceptions, translated into the store port's.

Everything the SQL adapter runs goes through ``translated()``, so
``sqlalchemy.exc`` never leaves ``adapters/sql``. A unique violation is
told from other constraint failures by its SQLSTATE (PostgreSQL) or its
message (SQLite), the only place either driver says which rule refused.
A statement PostgreSQL gave up on (``lock_timeout``, ``statement_timeout``,
a deadlock or serialization victim) is ``StoreUnavailable``, by SQLSTATE
too: nothing was done, and the caller may retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from lequan.ports.errors import (
    ConstraintViolated,
    DuplicateKey,
    StoreError,
    StoreUnavailable,
    UnstorableValue,
)

__all__ = ["translate", "translated"]

_UNIQUE_VIOLATION = "23505"
# lock_not_available (lock_timeout), query_canceled (statement_timeout),
# deadlock_detected, serialization_failure.
_GAVE_UP = frozenset({"55P03", "57014", "40P01", "40001"})


def _is_unique_violation(error: sa.exc.IntegrityError) -> bool:
    original = error.orig
    if getattr(original, "sqlstate", None) == _UNIQUE_VIOLATION:
        return True
    text = str(original)
    return text.startswith("UNIQUE constraint failed")


def translate(error: sa.exc.SQLAlchemyError) -> StoreError:
    """The port's error for one of SQLAlchemy's; the original stays its ``__cause__``."""
    # Only the driver's exception type: its text can quote the values of the row.
    cause = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    message = type(cause).__name__
    if getattr(cause, "sqlstate", None) in _GAVE_UP:
        return StoreUnavailable(message)
    if isinstance(error, sa.exc.IntegrityError):
        if _is_unique_violation(error):
            return DuplicateKey(message)
        return ConstraintViolated(message)
    if isinstance(error, sa.exc.DataError):
        return UnstorableValue(message)
    if isinstance(
        error, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.DisconnectionError
    ):
        return StoreUnavailable(message)
    if isinstance(error, sa.exc.TimeoutError):  # the pool had no connection to give
        return StoreUnavailable(message)
    return StoreError(message)


@contextmanager
def translated() -> Iterator[None]:
    """Run a block whose SQLAlchemy errors leave as the port's."""
    try:
        yield
    except sa.exc.SQLAlchemyError as error:
        raise translate(error) from error
