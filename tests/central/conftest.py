"""Fixtures of central's tests: the in-process fake, and real central processes on
loopback ports with their stores on SQLite and on PostgreSQL (one of each per
module, each test using ids of its own)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.central import CentralProcess
from lequan.adapters.central_http import CentralRefused, HttpCentral
from lequan.adapters.clock import ManualClock
from lequan.central.in_process import MemoryCentral
from lequan.domain.errors import InvalidInput
from lequan.domain.qualification import day_of
from lequan.ports.central import CentralPlatform

START = datetime(2025, 5, 20, 2, 0, tzinfo=UTC)


@dataclass
class Pair:
    """Two provinces on one central, and how to let a hold of ``hold_s`` pass."""

    kind: str
    a: CentralPlatform
    b: CentralPlatform
    hold_s: int
    pass_hold: Callable[[], object]
    prefix: str
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def today(self) -> date:
        return day_of(self.now())

    def id(self, name: str) -> str:
        return f"{self.prefix}-{name}"


def code_of(call: Callable[[], object]) -> str:
    """The stable code a refused call carries, from the fake or from central over HTTP."""
    try:
        call()
    except InvalidInput as error:
        return error.code
    except CentralRefused as error:
        return error.code
    raise AssertionError("the call was not refused")


def _started(database_url: str = "") -> Iterator[CentralProcess]:
    with tempfile.TemporaryDirectory() as data_dir:
        central = CentralProcess(Path(data_dir), database_url)
        if database_url:
            central.cli("migrate")
        central.start()
        try:
            yield central
        finally:
            central.stop()


@pytest.fixture(scope="module")
def central_sqlite() -> Iterator[CentralProcess]:
    yield from _started()


@pytest.fixture(scope="module")
def central_postgres(postgres_url: str) -> Iterator[CentralProcess]:
    from tests.factories import postgres_database

    url, drop = postgres_database(postgres_url)
    try:
        yield from _started(url)
    finally:
        drop()


@pytest.fixture(scope="module")
def sqlite_provinces(central_sqlite: CentralProcess) -> Iterator[tuple[HttpCentral, HttpCentral]]:
    with central_sqlite.province("pa") as a, central_sqlite.province("pb") as b:
        yield a, b


@pytest.fixture(scope="module")
def postgres_provinces(
    central_postgres: CentralProcess,
) -> Iterator[tuple[HttpCentral, HttpCentral]]:
    with central_postgres.province("pa") as a, central_postgres.province("pb") as b:
        yield a, b


def _pass_hold_on_a_real_central() -> None:
    import time

    time.sleep(1.1)  # central's own clock: a hold of 1 s is over


@pytest.fixture(params=["memory", "http-sqlite", "http-postgres"])
def pair(request: pytest.FixtureRequest) -> Pair:
    prefix = uuid.uuid4().hex[:10]
    if request.param == "memory":
        clock = ManualClock(START)
        a = MemoryCentral.start(clock=clock, province="pa")
        return Pair(
            "memory",
            a,
            a.as_province("pb"),
            60,
            lambda: clock.advance(timedelta(seconds=61)),
            prefix,
            clock.now,
        )
    fixture = "sqlite_provinces" if request.param == "http-sqlite" else "postgres_provinces"
    a, b = request.getfixturevalue(fixture)
    return Pair(request.param, a, b, 1, _pass_hold_on_a_real_central, prefix)
