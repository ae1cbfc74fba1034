"""A PostgreSQL that may lose a commit it acknowledged is refused at start.

The durability rule says an issued answer means a committed voucher; that
holds only if the database's COMMIT waits for the disk. ``synchronous_commit``
is set off for the test's own database (``ALTER DATABASE``), as a DBA
tuning for speed would; ``fsync`` is the server's and is checked by table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs
from typer.testing import CliRunner

from lequan.adapters.crypto import generate_key_file, generate_keyring
from lequan.adapters.sql import migrate
from lequan.adapters.sql.engine import create_engine, unsafe_durability
from lequan.bootstrap import SetupError, build_runtime, start_platform
from lequan.cli import app
from lequan.config import Settings
from tests.factories import make_world


@pytest.fixture
def careless_postgres_url(fresh_postgres_url: str) -> str:
    """A fresh database whose sessions commit without waiting for the disk."""
    engine = sa.create_engine(fresh_postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            name = connection.exec_driver_sql("SELECT current_database()").scalar_one()
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        engine.dispose()
    return fresh_postgres_url


@pytest.mark.postgres
def test_a_platform_on_a_database_that_commits_before_the_disk_refuses_to_start(
    careless_postgres_url: str, tmp_path: Path
) -> None:
    engine = create_engine(careless_postgres_url)
    migrate.upgrade(engine)
    engine.dispose()
    rt = build_runtime(
        Settings(data_dir=tmp_path, database_url=careless_postgres_url),
        keyring=generate_keyring(),
    )
    try:
        with pytest.raises(SetupError, match="synchronous_commit is off") as refused:
            start_platform(rt, sweep=False)
    finally:
        rt.store.dispose()
    assert "LEQUAN_ALLOW_UNSAFE_DURABILITY" in refused.value.message


@pytest.mark.postgres
def test_an_operator_may_allow_it_and_is_told_loudly(
    careless_postgres_url: str, tmp_path: Path
) -> None:
    with (
        capture_logs() as logs,
        make_world(
            database_url=careless_postgres_url, tmp_path=tmp_path, allow_unsafe_durability=True
        ),
    ):
        pass
    [allowed] = [line for line in logs if line["event"] == "durability_unsafe_allowed"]
    assert allowed["log_level"] == "critical"
    assert "synchronous_commit is off" in allowed["problems"][0]


@pytest.mark.postgres
def test_serve_refuses_before_it_starts_a_worker(
    careless_postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_key_file(tmp_path / "keys.json")
    monkeypatch.delenv("LEQUAN_REDIS_URL", raising=False)
    monkeypatch.setenv("LEQUAN_DATABASE_URL", careless_postgres_url)
    monkeypatch.setenv("LEQUAN_KEY_FILE", str(tmp_path / "keys.json"))
    runner = CliRunner()
    assert runner.invoke(app, ["migrate"]).exit_code == 0
    # An address no interface has: were it not refused first, the bind would fail.
    result = runner.invoke(app, ["serve", "--host", "203.0.113.1", "--port", "8000"])
    assert result.exit_code == 2, result.output
    assert "setup_error" in result.stderr
    assert "synchronous_commit is off" in result.stderr


@pytest.mark.parametrize(
    ("settings", "unsafe"),
    [
        ({"fsync": "on", "synchronous_commit": "on", "synchronous_standby_names": ""}, []),
        ({"fsync": "off", "synchronous_commit": "on"}, ["fsync"]),
        ({"fsync": "on", "synchronous_commit": "off"}, ["synchronous_commit is off"]),
        ({"fsync": "off", "synchronous_commit": "off"}, ["fsync", "synchronous_commit is off"]),
        # Without synchronous standbys, local waits for the same flush as on.
        ({"fsync": "on", "synchronous_commit": "local", "synchronous_standby_names": ""}, []),
        (
            {"fsync": "on", "synchronous_commit": "local", "synchronous_standby_names": "s1"},
            ["synchronous_commit is local"],
        ),
        (
            {
                "fsync": "on",
                "synchronous_commit": "remote_write",
                "synchronous_standby_names": "s1",
            },
            [],
        ),
        ({"fsync": "on", "synchronous_commit": "remote_apply"}, []),
    ],
)
def test_which_settings_may_lose_an_acknowledged_commit(
    settings: dict[str, str], unsafe: list[str]
) -> None:
    problems = unsafe_durability(settings)
    assert len(problems) == len(unsafe)
    for problem, start in zip(problems, unsafe, strict=True):
        assert problem.startswith(start)
