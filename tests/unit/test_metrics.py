"""What the services record for an operator's Prometheus: the gate's calls timed at
the seam, the sweeper's runs by outcome, the figures directory of a ``serve``
prepared and its dead workers' queues forgotten; and two runtimes in one
process never count into each other's figures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import pytest

from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.memory_store import MemoryStore
from lequan.adapters.timed_gate import TimedGate
from lequan.metrics import (
    MULTIPROC_ENV,
    Exposition,
    Instruments,
    MultiprocessMisconfigured,
    forget_dead_workers,
    multiprocess_dir,
    prepare_multiprocess_dir,
    runtime_instruments,
)
from lequan.ports import (
    GateUnavailable,
    ReserveRequest,
    ReserveResult,
    StoreUnavailable,
    UnitOfWork,
)
from lequan.services.sweeper import Sweeper
from tests.factories import World, make_world


def _value(instruments: Instruments, name: str, **labels: str) -> float | None:
    value: float | None = instruments.registry.get_sample_value(name, labels)
    return value


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        yield world


class DownGate(MemoryGate):
    """A gate whose server has gone away."""

    def reserve(self, requests: Sequence[ReserveRequest]) -> list[ReserveResult]:
        raise GateUnavailable("connection refused")


REQUEST = ReserveRequest(
    pool="c:r1:wechat", template_id="t", person_id="p", limit=1, campaign_id="c", campaign_limit=0
)


def test_the_gate_is_timed_per_call_and_its_failures_counted() -> None:
    instruments = Instruments()
    gate = TimedGate(MemoryGate(), instruments)
    gate.reset_pool(REQUEST.pool, stock={"t": 5}, claimed={})
    (granted,) = gate.reserve([REQUEST])
    gate.settle([(REQUEST, granted.claim_seq)])
    assert _value(instruments, "lequan_gate_seconds_count", call="reserve") == 1
    assert _value(instruments, "lequan_gate_seconds_count", call="settle") == 1
    assert _value(instruments, "lequan_gate_seconds_count", call="release") == 0
    assert gate.remaining(REQUEST.pool, "t") == 4  # the other calls pass through

    down = TimedGate(DownGate(), instruments)
    with pytest.raises(GateUnavailable):
        down.reserve([REQUEST])
    assert _value(instruments, "lequan_gate_failures_total", call="reserve") == 1
    assert _value(instruments, "lequan_gate_seconds_count", call="reserve") == 2


class DownStore:
    """A store that does not answer."""

    def unit_of_work(self, *, readonly: bool = False) -> AbstractContextManager[UnitOfWork]:
        raise StoreUnavailable("connection refused")

    def ping(self) -> None:
        raise StoreUnavailable("connection refused")

    def schema_revisions(self) -> tuple[str | None, str | None]:
        raise StoreUnavailable("connection refused")

    def upgrade(self) -> None:
        raise StoreUnavailable("connection refused")

    def dispose(self) -> None:
        pass


def test_sweeps_are_counted_by_outcome(world: World) -> None:
    metrics = world.rt.metrics
    Sweeper(world.rt).step()  # its runs here, not in its thread
    assert _value(metrics, "lequan_sweeps_total", outcome="ok") == 1
    assert _value(metrics, "lequan_swept_total", what="expired") == 0
    with pytest.raises(StoreUnavailable):
        Sweeper(replace(world.rt, store=DownStore())).step()
    assert _value(metrics, "lequan_sweeps_total", outcome="failed") == 1
    assert _value(metrics, "lequan_sweeps_total", outcome="ok") == 1


def test_two_runtimes_in_one_process_count_apart(tmp_path: Path) -> None:
    assert runtime_instruments() is not runtime_instruments()
    with (
        make_world(store=MemoryStore(), tmp_path=tmp_path / "a") as one,
        make_world(store=MemoryStore(), tmp_path=tmp_path / "b") as other,
    ):
        Sweeper(one.rt).step()
        Sweeper(other.rt)  # never run
        assert _value(one.rt.metrics, "lequan_sweeps_total", outcome="ok") == 1
        assert _value(other.rt.metrics, "lequan_sweeps_total", outcome="ok") == 0
        text = Exposition(other.rt.metrics).latest().decode()
        assert 'lequan_sweeps_total{outcome="ok"} 0.0' in text


def test_a_multiprocess_dir_set_after_the_import_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """This process chose its storage at import: figures it kept would never reach
    the directory, so it says so rather than answer scrapes without them."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    assert multiprocess_dir() is None
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(MultiprocessMisconfigured, match="before the process starts"):
        multiprocess_dir()


def test_preparing_the_directory_deletes_a_past_runs_figures_only(tmp_path: Path) -> None:
    figures = tmp_path / "figures"
    figures.mkdir()
    past = ["counter_12.db", "histogram_12.db", "gauge_livesum_12.db", "gauge_all_7.db"]
    kept = ["notes.txt", "other.db"]
    for name in past + kept:
        (figures / name).write_bytes(b"")
    prepare_multiprocess_dir(figures)
    assert sorted(p.name for p in figures.iterdir()) == sorted(kept)
    prepare_multiprocess_dir(tmp_path / "new" / "figures")  # made when missing
    assert (tmp_path / "new" / "figures").is_dir()


def test_a_dead_workers_live_gauges_are_forgotten_its_counters_kept(tmp_path: Path) -> None:
    # A process that has exited: its number names no process now.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    dead = int(gone.stdout)
    names = [f"gauge_livesum_{dead}.db", f"counter_{dead}.db"]
    names += [f"gauge_livesum_{os.getpid()}.db", f"gauge_all_{dead}.db"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
