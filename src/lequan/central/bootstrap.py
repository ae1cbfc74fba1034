"""Central's composition root: the one place that picks its adapters from settings.

SQLite in the data directory by default, PostgreSQL with
``LEQUAN_CENTRAL_DATABASE_URL``; nonces in memory, or Redis with
``LEQUAN_CENTRAL_REDIS_URL`` (needed for more than one worker). The key
file is made on first start when it is the default one in the data
directory, and so is the OPRF key (stored encrypted under it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lequan.adapters.clock import SystemClock
from lequan.adapters.crypto import (
    AesGcmKeyRing,
    KeyRingError,
    generate_key_file,
    is_example_keyring,
    load_key_file,
)
from lequan.adapters.nonces import MemoryNonceStore, RedisNonceStore
from lequan.adapters.sql.engine import create_engine
from lequan.central.config import CentralSettings
from lequan.central.services import CentralService
from lequan.central.store import SqlCentralStore
from lequan.central.store import migrate as central_migrate
from lequan.domain.errors import LequanError
from lequan.oprf import SEED_BYTES, PseudonymKey
from lequan.ports import Clock, NonceStore

__all__ = [
    "Central",
    "CentralSetupError",
    "build_central",
    "load_central_keyring",
    "migrate_central",
]


class CentralSetupError(LequanError):
    """Central cannot start as configured; the message says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__("setup_error", message)


@dataclass
class Central:
    """A wired central: its settings, service and nonce store."""

    settings: CentralSettings
    service: CentralService
    nonces: NonceStore

    def close(self) -> None:
        self.service.store.dispose()


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def load_central_keyring(settings: CentralSettings, *, create: bool) -> AesGcmKeyRing:
    """The key ring of central's key file; made on first start when it is the default."""
    path = settings.effective_key_file
    if not path.exists():
        if not (create and settings.key_file is None):
            raise CentralSetupError(
                f"no key file at {path}: give one with LEQUAN_CENTRAL_KEY_FILE "
                "(lequan keys generate PATH)"
            )
        _private_dir(path.parent)
        return generate_key_file(path)
    try:
        keyring = load_key_file(path)
    except KeyRingError as error:
        raise CentralSetupError(str(error)) from None
    if is_example_keyring(keyring):
        raise CentralSetupError(f"{path} holds the example key from the docs; generate a real one")
    return keyring


def migrate_central(
    settings: CentralSettings, *, revision: str = "head", downgrade: bool = False
) -> str | None:
    """Bring central's schema to ``revision``; the revision it is at after."""
    if not settings.database_url:
        _private_dir(settings.data_dir)
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        if downgrade:
            central_migrate.downgrade(engine, revision)
        else:
            central_migrate.upgrade(engine, revision)
        return central_migrate.current_revision(engine)
    finally:
        engine.dispose()


def build_central(
    settings: CentralSettings, *, clock: Clock | None = None, create_keys: bool = True
) -> Central:
    """Central's service over its store, its schema checked current and its OPRF key
    loaded (made on first start)."""
    keyring = load_central_keyring(settings, create=create_keys)
    if not settings.database_url:
        _private_dir(settings.data_dir)
    engine = create_engine(
        settings.effective_database_url,
        pool_size=settings.store_pool_size,
        lock_timeout_ms=settings.store_lock_timeout_ms,
        statement_timeout_ms=settings.store_statement_timeout_ms,
    )
    at = central_migrate.current_revision(engine)
    head = central_migrate.head_revision()
    if at != head:
        engine.dispose()
        raise CentralSetupError(
            f"central's store is at revision {at}, this lequan needs {head}: "
            "run `lequan central migrate`"
        )
    store = SqlCentralStore(engine, keyring)
    key = PseudonymKey(store.oprf_seed(os.urandom(SEED_BYTES)))
    clock = clock or SystemClock()
    nonces: NonceStore
    if settings.redis_url:
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        nonces = RedisNonceStore(client, settings.redis_key_prefix, clock=clock)
    else:
        nonces = MemoryNonceStore(settings.nonce_cache_entries_max, clock=clock)
    return Central(settings, CentralService(store, clock, key), nonces)
