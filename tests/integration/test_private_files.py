"""What lequan keeps on disk is its owner's alone: the data directory 0700, the
SQLite file with its -wal and -shm 0600, the key file 0600, and a key file
that others may read or write is refused with the fix."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lequan.adapters.crypto import generate_key_file
from lequan.adapters.sql.engine import create_engine
from lequan.bootstrap import SetupError, build_runtime, load_keyring, migrate_store
from lequan.config import Settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The umask most systems start with (022): what is not narrowed on purpose is 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _embedded(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, database_url="", redis_url="", key_file=None)


@pytest.mark.usefixtures("loose_umask")
def test_the_embedded_store_and_its_keys_are_their_owners_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "lequan-data"
    settings = _embedded(data_dir)
    migrate_store(settings)
    rt = build_runtime(settings)
    try:
        assert _mode(data_dir) == 0o700
        assert _mode(data_dir / "keys.json") == 0o600
        assert _mode(data_dir / "lequan.db") == 0o600
        with rt.store.unit_of_work() as uow:  # a write while open: the WAL files exist
            uow.ledger.append_audit(
                actor="test", action="probe", target="-", details={}, now=rt.clock.now()
            )
            uow.commit()
            for companion in ("lequan.db-wal", "lequan.db-shm"):
                assert _mode(data_dir / companion) == 0o600, companion
    finally:
        rt.store.dispose()


@pytest.mark.usefixtures("loose_umask")
def test_files_an_older_version_left_open_are_narrowed(tmp_path: Path) -> None:
    data_dir = tmp_path / "lequan-data"
    data_dir.mkdir(mode=0o755)
    database = data_dir / "lequan.db"
    with sqlite3.connect(database) as made_before:  # 0644, as the umask left it
        made_before.execute("PRAGMA journal_mode=WAL")
    made_before.close()
    assert _mode(database) == 0o644
    migrate_store(_embedded(data_dir))
    assert _mode(data_dir) == 0o700
    assert _mode(database) == 0o600


@pytest.mark.usefixtures("loose_umask")
def test_a_sqlite_file_named_by_url_is_made_private_too(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "store.db"
    engine = create_engine(f"sqlite:///{database}")
    engine.dispose()
    assert _mode(database.parent) == 0o700
    assert _mode(database) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602], ids=oct)
def test_a_key_file_others_may_read_or_write_is_refused_with_the_fix(
    tmp_path: Path, mode: int
) -> None:
    key_file = tmp_path / "keys.json"
    generate_key_file(key_file)
    key_file.chmod(mode)
    settings = Settings(
        data_dir=tmp_path, database_url="postgresql+psycopg://lequan@db/lequan", key_file=key_file
    )
    with pytest.raises(SetupError, match=f"chmod 600 {key_file}"):
        load_keyring(settings, create=False)
    key_file.chmod(0o600)
    assert load_keyring(settings, create=False).active_key_id == "k1"
