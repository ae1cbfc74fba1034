"""Engines for the two dialects, tuned for what the services do with them.

SQLite runs in WAL mode with ``synchronous=FULL`` (a committed claim
survives a power cut) and every transaction begins IMMEDIATE, so that two
writers queue on the lock instead of failing on an upgrade deadlock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import QueuePool, StaticPool

from lequan.adapters.sql.errors import translated

__all__ = ["create_engine", "durability_settings", "unsafe_durability"]

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Pages read through a memory map instead of a read() call each: the claim
# path's lookups (a thousand people per batch, at random in a table of a
# million) go about a quarter faster. Address space only; the OS page cache
# holds the pages either way. SQLite caps it at its build's maximum (2 GiB
# in Debian's).
SQLITE_MMAP_BYTES = 2 << 30
SQLITE_POOL_SIZE = 4


# Enough connections for every thread that may hold one at once (the HTTP
# thread pool of 40, the group committer, the sweeper) so none is opened and
# closed per request: an overflow connection costs a connect (and on SQLite,
# its pragmas) every time.
POOL_SIZE = 48
POOL_OVERFLOW = 16


# PostgreSQL plans lequan's sessions as for data in memory or on SSD, where a page
# read at random costs about what one read in sequence does. With the default
# (4, a spinning disk), a batch's lookup of a thousand keys in a young table
# (the vouchers of a first sale, growing by thousands a second) was planned as
# a scan of the whole table until autovacuum's next ANALYZE: 30 ms against
# 1.7 ms by the unique index at 100,000 vouchers (EXPLAIN ANALYZE, ad hoc).
POSTGRES_RANDOM_PAGE_COST = 1.1


def create_engine(
    url: str,
    *,
    pool_size: int = POOL_SIZE,
    lock_timeout_ms: int | None = None,
    statement_timeout_ms: int | None = None,
) -> sa.Engine:
    """An engine for ``url``; ``sqlite://`` (no path) is a private in-memory store.

    On PostgreSQL, ``lock_timeout_ms`` and ``statement_timeout_ms`` bound every
    statement of every session (None: the server's setting, no limit by
    default). A claim writer waiting on a row someone else holds locked gives
    up after ``lock_timeout_ms`` (``StoreUnavailable``) instead of holding its
    writer thread, and the claims queued behind it, for as long as the lock.
    """
    if url.startswith("sqlite"):
        return _sqlite_engine(url, pool_size=pool_size)
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=POOL_OVERFLOW,
        pool_pre_ping=True,
        pool_timeout=30,
    )

    settings = [("random_page_cost", str(POSTGRES_RANDOM_PAGE_COST))]
    if lock_timeout_ms is not None:
        assert lock_timeout_ms > 0, "0 would mean no limit"
        settings.append(("lock_timeout", f"{lock_timeout_ms}ms"))
    if statement_timeout_ms is not None:
        assert statement_timeout_ms > 0, "0 would mean no limit"
        settings.append(("statement_timeout", f"{statement_timeout_ms}ms"))

    # One round trip for all of them, each for the whole session (is_local false).
    set_all = "SELECT " + ", ".join(["set_config(%s, %s, false)"] * len(settings))
    values = [part for setting in settings for part in setting]

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(set_all, values)
        dbapi_connection.commit()

    return engine


# The server settings that decide whether a COMMIT that returned is on disk.
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "synchronous_standby_names")


def durability_settings(engine: sa.Engine) -> dict[str, str]:
    """The durability settings as the engine's sessions see them (a role's or a
    database's own ``synchronous_commit`` included); empty for SQLite, whose
    ``synchronous=FULL`` lequan sets itself."""
    if engine.dialect.name != "postgresql":
        return {}
    with translated(), engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (list(DURABILITY_SETTINGS),),
        ).all()
    return {name: setting for name, setting in rows}


def unsafe_durability(settings: Mapping[str, str]) -> list[str]:
    """What in PostgreSQL's settings lets a COMMIT return before the claim it wrote is
    safe, each said as the loss it allows; empty when a returned COMMIT is durable.

    The durability rule is "an issued answer means the voucher is committed":
    a voucher lost after its answer is one the person was told they hold, and
    one the gate, rebuilt from the store, sells again.

    * ``fsync = off``: the server never waits for the disk; a crash of the
      machine can lose any recent commit, or corrupt the database.
    * ``synchronous_commit = off``: COMMIT returns before its WAL is flushed;
      a server crash loses the last commits (up to three times
      ``wal_writer_delay``) though their claims were answered.
    * ``synchronous_commit = local`` with synchronous standbys named: COMMIT
      waits for the primary's disk only, so a failover to a standby loses
      commits already answered, which is what naming the standbys was to
      prevent. Without synchronous standbys, ``local`` is the same as ``on``.

    ``on``, ``remote_write`` and ``remote_apply`` all wait for the primary's
    own flush, and for the standbys as configured: safe.
    """
    problems: list[str] = []
    if settings.get("fsync") == "off":
        problems.append("fsync is off: a crash of the database's machine can lose committed claims")
    synchronous_commit = settings.get("synchronous_commit")
    if synchronous_commit == "off":
        problems.append(
            "synchronous_commit is off: COMMIT returns before it is on disk, "
            "so a crash of the database loses claims already answered"
        )
    elif synchronous_commit == "local" and settings.get("synchronous_standby_names"):
        problems.append(
            "synchronous_commit is local while synchronous standbys are named: "
            "a failover to a standby loses claims already answered"
        )
    return problems


def _private_database(path: Path) -> None:
    """The database file and its WAL companions readable by their owner alone (0600),
    in a directory made 0700 if lequan makes it: they hold every person's record.

    A file made by an older version (0644) is narrowed here. SQLite gives the
    -wal and -shm files it creates the database file's mode.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if each.stat().st_mode & 0o077:
                each.chmod(0o600)
        except FileNotFoundError:
            continue


def _sqlite_engine(url: str, *, pool_size: int) -> sa.Engine:
    memory = url in ("sqlite://", "sqlite:///:memory:")
    if memory:
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "isolation_level": None},
            poolclass=StaticPool,
        )
    else:
        path = sa.engine.make_url(url).database
        assert path
        _private_database(Path(path))
        # WAL is a property of the file: set once here, not on every connection
        # (switching needs a lock that would queue behind the writer).
        with sqlite3.connect(path) as first:
            first.execute("PRAGMA journal_mode=WAL")
        first.close()
        # Few connections: a WAL file has a handful of reader slots, and readers
        # of different snapshots beyond them spin in SQLite's busy handler
        # (sleeping milliseconds) while a writer commits every few. Queueing for
        # a pooled connection costs microseconds instead.
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "isolation_level": None},
            poolclass=QueuePool,
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=0,
            pool_timeout=30,
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # Readers must not take the write lock; writers take it up front.
        readonly = connection.info.get("lequan_readonly", False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine
