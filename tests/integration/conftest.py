"""The two stacks every integration suite runs on: SQLite + the in-process
gate, and PostgreSQL + the Redis gate (required, not skipped, in CI)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.memory_store import MemoryStore
from lequan.adapters.redis_gate import RedisGate
from lequan.adapters.sql import migrate
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.engine import create_engine
from lequan.adapters.sql.unit_of_work import SqlStore
from lequan.ports import ClaimGate, Store
from tests.factories import World, make_world, postgres_database


@dataclass
class Stack:
    """Where a test's platform keeps its truth (store) and its cache (gate)."""

    name: str
    database_url: str
    redis_url: str | None = None
    redis_prefix: str | None = None
    gate_buckets: int = 1
    redis_cluster: bool = False

    @property
    def shared(self) -> bool:
        """The gate outlives a process and is shared by many (Redis)."""
        return self.redis_url is not None

    def new_gate(self) -> ClaimGate:
        if self.redis_url is None:
            return MemoryGate()
        assert self.redis_prefix is not None
        return RedisGate.from_url(
            self.redis_url,
            key_prefix=self.redis_prefix,
            buckets=self.gate_buckets,
            cluster=self.redis_cluster,
        )

    @contextmanager
    def world(self, tmp_path: Path, **settings: Any) -> Iterator[World]:
        with make_world(
            database_url=self.database_url, tmp_path=tmp_path, gate=self.new_gate(), **settings
        ) as world:
            yield world

    def lose_gate(self, world: World) -> None:
        """The gate's state is gone: Redis flushed or restarted, or a new process."""
        if self.redis_url is None:
            world.rt.gate = MemoryGate()
            return
        assert self.redis_prefix is not None
        client: redis.Redis | RedisCluster = (
            RedisCluster.from_url(self.redis_url)
            if self.redis_cluster
            else redis.Redis.from_url(self.redis_url)
        )
        try:
            keys = list(client.scan_iter(match=self.redis_prefix + "*", count=1000))
            assert keys, "the Redis gate held nothing to lose"
            for key in keys:  # one at a time: on a cluster they live in many slots
                client.delete(key)
        finally:
            client.close()


SHARED_STACKS = [
    pytest.param("postgres+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    pytest.param("postgres+redis-buckets", marks=[pytest.mark.postgres, pytest.mark.redis]),
    pytest.param("postgres+redis-cluster", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


def _stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "sqlite+memory":
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), tmp_path / "lequan.db")
        yield Stack(request.param, f"sqlite:///{tmp_path}/lequan.db")
        return
    url: str = request.getfixturevalue("migrated_postgres_url")
    cluster = request.param.endswith("-cluster")
    if cluster:  # three primaries; each pool over four buckets, so over the shards
        host, port = request.getfixturevalue("redis_cluster")
        redis_url = f"redis://{host}:{port}/0"
        redis_prefix = f"lqtest:{uuid.uuid4().hex[:12]}:"
    else:
        redis_url = request.getfixturevalue("redis_url")
        redis_prefix = request.getfixturevalue("redis_prefix")
    yield Stack(
        request.param,
        url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gate_buckets=1 if request.param == "postgres+redis" else 4,
        redis_cluster=cluster,
    )


@pytest.fixture(params=["sqlite+memory", *SHARED_STACKS])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    yield from _stack(request, tmp_path)


@pytest.fixture(params=SHARED_STACKS)
def shared_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Only the stacks whose gate many processes share (and can lose mid-sale)."""
    yield from _stack(request, tmp_path)


# -- the store contract's stores (tests/integration/test_store_contract*.py) ---------------

STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"]


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> Iterator[SqlStore]:
    """One migrated PostgreSQL database for the whole run; each test empties it first."""
    url, drop = postgres_database(postgres_url)
    engine = create_engine(url, pool_size=16)
    try:
        migrate.upgrade(engine)
        yield SqlStore(engine)
    finally:
        engine.dispose()
        drop()


def _emptied(store: SqlStore) -> SqlStore:
    with store.engine.begin() as connection:
        for table in reversed(t.metadata.sorted_tables):
            connection.execute(table.delete())
    return store


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty store with the current schema, of each implementation."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "postgres":
        yield _emptied(request.getfixturevalue("migrated_postgres"))
        return
    path = tmp_path / "lequan.db"
    shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)  # tests/conftest.py
    sqlite = SqlStore(create_engine(f"sqlite:///{path}"))
    try:
        yield sqlite
    finally:
        sqlite.dispose()
