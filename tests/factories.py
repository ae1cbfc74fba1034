"""Building blocks for tests: a platform on any store and gate, seeded with
operators, apps, merchants and the real-shaped example campaigns.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.servers import fresh_postgres
from lequan.adapters.clock import ManualClock
from lequan.adapters.crypto import generate_keyring
from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.sql import migrate
from lequan.adapters.sql.engine import create_engine
from lequan.bootstrap import Platform, build_runtime, start_platform
from lequan.config import Settings
from lequan.domain.campaigns import CampaignConfig
from lequan.domain.identity import synthetic_id_number
from lequan.examples import EXAMPLES_DIR, example_campaign, example_merchants
from lequan.ports import ClaimGate, Store
from lequan.ports.central import CentralPlatform
from lequan.services import admin, campaigns, persons

EXAMPLES = EXAMPLES_DIR
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)  # Saturday 10:00 in Shanghai
CHANNELS = ("wechat", "alipay", "unionpay")
ACQUIRER = "acq-unionpay"


def dining_config(
    *,
    release_at: datetime = T0,
    stock: dict[str, dict[str, int]] | None = None,
    **updates: Any,
) -> CampaignConfig:
    """The Shanghai 2024 dining campaign, round one opening at ``release_at``."""
    return example_campaign(release_at=release_at, stock=stock, **updates)


def id_number(n: int, region: str = "310104") -> str:
    return synthetic_id_number(region, date(1980, 1, 1) + timedelta(days=n % 9000), n % 1000)


@dataclass
class World:
    """A started platform with its clock and the secrets it handed out."""

    platform: Platform
    clock: ManualClock
    secrets: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def rt(self) -> Any:
        return self.platform.rt

    def register(self, n: int, *, channel: str = "wechat", located: str | None = "310104") -> str:
        """Register person ``n`` in ``channel`` as user ``u<n>``; returns the channel user id."""
        user = f"u{n}"
        persons.register(
            self.rt,
            channel_id=channel,
            channel_user_id=user,
            id_number=id_number(n),
            name="张三",
            phone=f"139{n:08d}",
            region_code="310104",
            location_region=located,
            consent=True,
            consent_version="2024-01",
        )
        return user

    def open_campaign(self, config: CampaignConfig, *, merchants: bool = True) -> None:
        """Import (alice), approve and activate (bob), enroll the example merchants,
        and move the clock to round one's release."""
        campaigns.import_campaign(self.rt, config, actor="alice")
        if merchants:
            import_merchants(self)
        campaigns.change_status(self.rt, config.id, "approve", actor="bob")
        campaigns.change_status(self.rt, config.id, "activate", actor="bob")
        self.clock.set(max(self.clock.now(), config.rounds[0].release_at))


def postgres_database(base_url: str, *, template: str | None = None) -> tuple[str, Any]:
    """A fresh PostgreSQL database; returns (url, drop).

    Empty, or a copy of ``template`` (see ``postgres_template``): a store at
    head without every migration run again for it.
    """
    if template is None:
        return fresh_postgres(base_url)
    import uuid

    return _new_postgres(base_url, f"lqtest_{uuid.uuid4().hex[:12]}", template=template)


def postgres_template(base_url: str) -> tuple[str, Any]:
    """A PostgreSQL database migrated to head, to copy stores from; returns (name, drop).

    Named after this process, so test runs sharing a server never copy or drop
    each other's. PostgreSQL copies a database only while nobody is connected
    to it: the migrating engine is disposed, and connections are then refused,
    so no stray session can make the copies fail.
    """
    import os
    import uuid

    name = f"lqtpl_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url, drop = _new_postgres(base_url, name, template=None)
    try:
        engine = create_engine(url)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        _on_server(base_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    except BaseException:
        drop()
        raise
    return name, drop


# What a database's schema is, as one digest: its columns, indexes, constraints, its
# settings and the migration it is at. A store a test left at another digest (a
# downgrade, a table renamed and not back, a setting changed) is not handed out again.
_SCHEMA_DIGEST = """
SELECT md5(string_agg(part, E'\\n' ORDER BY part)) FROM (
    SELECT format('%s.%s %s %s %s', table_name, column_name, data_type, is_nullable,
                  column_default) AS part
      FROM information_schema.columns WHERE table_schema = 'public'
    UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
    UNION ALL SELECT conrelid::regclass || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT 'setting ' || array_to_string(setconfig, ' ') FROM pg_db_role_setting
      WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL SELECT 'at ' || version_num FROM alembic_version
) AS schema
"""


class PostgresStores:
    """PostgreSQL databases at head for one test process: each test has one to itself,
    emptied after it rather than dropped, and handed to a later test.

    A copy of the template costs a CREATE DATABASE, and dropping it a DROP DATABASE,
    which makes the server checkpoint (every dirty page of every database written
    out, while the other tests wait on the disk). An emptied store is what a new
    copy is to a test: the template's schema, no rows, every sequence at its start,
    nobody connected. One whose schema a test
    changed is dropped instead. What an emptied store keeps is the planner's
    statistics of the rows it held: the tests of query plans take a new copy
    (``pristine_postgres_url``).
    """

    def __init__(self, base_url: str, template: str) -> None:
        self._base_url = base_url
        self._template = template
        self._idle: list[tuple[str, Any]] = []  # (url, drop)
        self._drops: dict[str, Any] = {}
        self._digest: str | None = None

    def take(self) -> str:
        """An empty store at head, this caller's until ``give_back``."""
        if self._idle:
            url, drop = self._idle.pop()
        else:
            url, drop = postgres_database(self._base_url, template=self._template)
            if self._digest is None:
                self._digest = self._schema_digest(url)
        self._drops[url] = drop
        return url

    def give_back(self, url: str) -> None:
        """Empty the store for the next test, or drop it if its schema was changed."""
        drop = self._drops.pop(url)
        try:
            emptied = self._emptied(url)
        except Exception:
            drop()
            raise
        if emptied:
            self._idle.append((url, drop))
        else:
            drop()

    def close(self) -> None:
        for _url, drop in self._idle:
            drop()
        self._idle.clear()

    def _emptied(self, url: str) -> bool:
        import sqlalchemy as sa

        name = sa.engine.make_url(url).database
        # Whoever the test left connected goes, as DROP DATABASE ... WITH (FORCE) would
        # make them; waiting (up to 5 s each) until they are gone.
        _on_server(
            self._base_url,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )
        if self._schema_digest(url) != self._digest:
            return False
        from lequan.adapters.sql import tables as t

        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as connection:
                # DELETE, not TRUNCATE: a test's few rows go in milliseconds, where
                # TRUNCATE makes every table and index new files.
                for table in reversed(t.metadata.sorted_tables):
                    connection.execute(table.delete())
                sequences = connection.exec_driver_sql(
                    "SELECT oid::regclass::text FROM pg_class"
                    " WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace"
                ).scalars()
                for sequence in list(sequences):
                    connection.exec_driver_sql(f"ALTER SEQUENCE {sequence} RESTART")
        finally:
            engine.dispose()
        return True

    @staticmethod
    def _schema_digest(url: str) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                digest: str = connection.exec_driver_sql(_SCHEMA_DIGEST).scalar_one()
        finally:
            engine.dispose()
        return digest


def _new_postgres(base_url: str, name: str, *, template: str | None) -> tuple[str, Any]:
    import sqlalchemy as sa

    copy = f' TEMPLATE "{template}"' if template else ""
    _on_server(base_url, f'CREATE DATABASE "{name}"{copy}')
    url = sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        _on_server(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def _on_server(base_url: str, statement: str) -> None:
    """One statement outside a transaction (CREATE and DROP DATABASE need that)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(statement)
    finally:
        admin.dispose()


@functools.cache
def _head_revision() -> str | None:
    return migrate.head_revision()


@contextmanager
def make_world(
    *,
    database_url: str | None = None,
    store: Store | None = None,
    gate: ClaimGate | None = None,
    tmp_path: Path,
    clock_at: datetime = T0 - timedelta(hours=1),
    central: CentralPlatform | None = None,
    relay: bool = False,
    **settings: Any,
) -> Iterator[World]:
    """A started platform on the SQL store at ``database_url`` (migrated here) or on
    ``store`` as given (``MemoryStore()`` for a service test whose store is
    incidental), with operators alice (maker) / bob (checker), three channels,
    one acquirer and the example merchants."""
    assert (database_url is None) != (store is None), "a world has one store"
    clock = ManualClock(clock_at)
    if database_url is not None:
        engine = create_engine(database_url)
        try:
            # Most stores here are copies of a store at head: asked first, they are spared
            # Alembic loading every migration script to find nothing to do.
            if migrate.current_revision(engine) != _head_revision():
                migrate.upgrade(engine)
        finally:
            engine.dispose()
    config = Settings(
        data_dir=tmp_path, database_url=database_url or "", sweep_interval_s=3600, **settings
    )
    rt = build_runtime(
        config,
        clock=clock,
        keyring=generate_keyring(),
        gate=gate or MemoryGate(),
        store=store,
        central=central,
    )
    # A store at database_url was brought to head above: its check would load every
    # migration script again to say so.
    platform = start_platform(rt, sweep=False, relay=relay, check_schema=database_url is None)
    world = World(platform=platform, clock=clock)
    try:
        world.tokens["alice"] = admin.add_operator(rt, "alice", role="maker")
        world.tokens["bob"] = admin.add_operator(rt, "bob", role="checker")
        world.tokens["vera"] = admin.add_operator(rt, "vera", role="viewer")
        for channel in CHANNELS:
            world.secrets[channel] = admin.add_app(
                rt, app_id=channel, kind="channel", name=channel, actor="alice"
            ).secret
        world.secrets[ACQUIRER] = admin.add_app(
            rt, app_id=ACQUIRER, kind="acquirer", name="acquirer", actor="alice"
        ).secret
        yield world
    finally:
        platform.close()


def import_merchants(world: World) -> None:
    admin.import_merchants(
        world.rt,
        example_merchants(dining_only=True),
        actor="alice",
    )
