"""Fixtures shared by every suite: the real servers, when the run has them.

PostgreSQL and Redis tests run when their servers answer. With
``LEQUAN_TEST_REQUIRE_SERVICES=1`` (as ``.ci/run`` sets) an unreachable
server fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.factories import PostgresStores

POSTGRES_URL = os.environ.get(
    "LEQUAN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("LEQUAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("LEQUAN_TEST_REQUIRE_SERVICES") == "1"


def _unreachable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable: {error}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (LEQUAN_TEST_REQUIRE_SERVICES=1: required)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """structlog's configuration put back after each test.

    A command run in this process (Typer's CliRunner: ``lequan demo``, ``serve``)
    configures structlog for the whole process, its level filter included; a
    later test capturing log events (``structlog.testing.capture_logs``) would
    then see none below that level, depending on which tests ran before it.
    """
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL that answers PING, or the test is skipped (failed in CI)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        _unreachable("Redis", error)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"lqtest:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL server's URL, or the test is skipped (failed in CI)."""
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as error:
        _unreachable("PostgreSQL", error)
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str) -> Iterator[str]:
    """A database migrated to head once per run, dropped at its end; each test that
    wants a store at head gets a copy (``migrated_postgres_url``)."""
    from tests.factories import postgres_template

    name, drop = postgres_template(postgres_url)
    try:
        yield name
    finally:
        drop()


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database of this test's own, dropped afterwards."""
    from tests.factories import postgres_database

    url, drop = postgres_database(postgres_url)
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="session")
def postgres_stores(postgres_url: str, postgres_template: str) -> Iterator[PostgresStores]:
    """This process's stores at head: taken by one test at a time, emptied in between."""
    from tests.factories import PostgresStores

    stores = PostgresStores(postgres_url, postgres_template)
    try:
        yield stores
    finally:
        stores.close()


@pytest.fixture
def migrated_postgres_url(postgres_stores: PostgresStores) -> Iterator[str]:
    """A PostgreSQL database at head with no rows, this test's alone: a copy of the run's
    template, or one an earlier test had, emptied (``tests.factories.PostgresStores``)."""
    url = postgres_stores.take()
    try:
        yield url
    finally:
        postgres_stores.give_back(url)


@pytest.fixture
def pristine_postgres_url(postgres_url: str, postgres_template: str) -> Iterator[str]:
    """A new copy of the run's template, dropped afterwards: no other test's rows were
    ever in it, so the planner has no statistics of them (the tests of query plans)."""
    from tests.factories import postgres_database

    url, drop = postgres_database(postgres_url, template=postgres_template)
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file migrated once; each store at head starts from a copy of it."""
    from lequan.adapters.sql import migrate
    from lequan.adapters.sql.engine import create_engine

    path = os.path.join(tmp_path_factory.mktemp("template"), "lequan.db")
    engine = create_engine(f"sqlite:///{path}")
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A fresh store at head on each dialect: a copy of a migrated SQLite file, or of
    the migrated PostgreSQL template. Tests of the migrations use ``empty_database_url``."""
    if request.param == "sqlite":
        import shutil

        path = os.path.join(tmp_path, "lequan.db")
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("migrated_postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """A fresh, empty store on each dialect, for the tests that run the migrations."""
    if request.param == "sqlite":
        return f"sqlite:///{os.fspath(tmp_path)}/lequan.db"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Redis Cluster of three primaries on loopback ports, started for this run.

    Made from the machine's ``redis-server`` and ``redis-cli``; if they are
    missing or the cluster does not form, the tests using it are skipped
    (failed with LEQUAN_TEST_REQUIRE_SERVICES=1).
    """
    from benchmarks.cluster import ClusterUnavailable, local_cluster

    try:
        cluster = local_cluster(tmp_path_factory.mktemp("redis-cluster"))
        node = cluster.__enter__()
    except ClusterUnavailable as error:
        _unreachable("Redis Cluster", error)
    try:
        yield node
    finally:
        cluster.__exit__(None, None, None)


# Tests whose figures depend on having the machine to themselves (claim races under lock
# timeouts, failovers, outages, crashes, whole crowds): `make test` (scripts/test) runs
# them alone, after the others have run in parallel. A file here is serial as a whole;
# elsewhere a test can be marked `serial` itself (test_claim_invariants.py, test_store_faults.py).
SERIAL_FILES = frozenset(
    {
        "tests/browser/test_screen.py",
        "tests/integration/test_cluster_failover.py",
        "tests/integration/test_gate_outage.py",
        "tests/integration/test_true_refusals.py",
        "tests/system/test_crash.py",
        "tests/system/test_workers.py",
    }
)


# The files that take longest, longest first: collected first, so the parallel run hands
# them out first (scripts/test turns off xdist's own order, by number of tests, which
# left the long files with few tests to the end) and the short ones fill in around them
# instead of one worker finishing the run alone on a long file (docs/testing.md).
LONG_FILES = (
    "tests/system/test_federation.py",
    "tests/e2e/test_http_contract.py",
    "tests/system/test_demo.py",
    "tests/integration/test_redemption_invariants.py",
    "tests/central/test_contract.py",
    "tests/central/test_central_process.py",
    "tests/integration/test_redemption_batches.py",
    "tests/e2e/test_http_input.py",
    "tests/integration/test_stock_in_store.py",
    "tests/system/test_province_init.py",
    "tests/system/test_bench.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
    rank = {path: n for n, path in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))
