"""The platform's Prometheus instruments, one set per runtime, and what ``/metrics``
answers from them, whichever worker process is asked.

Why here, and not in the HTTP layer: the group committer, the gate, the
sweeper and the relay record what they do, and services must not import
HTTP. The instruments are built once per ``Runtime`` (``rt.metrics``), so
two platforms in one process (tests, the demo) never count into each
other's figures, and a service records through the runtime it is given, as
it reaches the store and the gate. The HTTP layer caches label children
(``http/envelope.py``); services take theirs once, when they are built. An
observer interface would cost a call per event on the claim path and name
the same figures twice.

Several worker processes (``lequan serve --workers N``) are one view:
``serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts the workers
(uvicorn spawns them: fresh interpreters, which import prometheus-client
with it set), each worker writes its figures to files of its own in that
directory (the library's multiprocess mode), and a scrape answered by any
worker sums them all (``Exposition``). Without it (one process, tests), a
scrape reads the runtime's own registry. Gauges say how workers' values combine
(``multiprocess_mode``): the commit queue is summed over the workers alive.
Figures that live in shared state (the outbox backlog, the stock in the
gate) are not instruments but collectors, read at each scrape.

Label values are bounded: routes are the app's templates, statuses and
error codes closed sets, apps registered ones. No person, voucher or
merchant is ever a label.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

__all__ = [
    "GATE_CALLS",
    "MULTIPROC_ENV",
    "RELAY_EVENT_OUTCOMES",
    "RELAY_ROUND_OUTCOMES",
    "SWEEP_OUTCOMES",
    "SWEPT",
    "Exposition",
    "Instruments",
    "MultiprocessMisconfigured",
    "forget_dead_workers",
    "forget_this_worker",
    "multiprocess_dir",
    "prepare_multiprocess_dir",
    "runtime_instruments",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. An HTTP answer: from a cached refusal to a batch of a thousand claims.
_HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
# A gate call: an in-process one takes microseconds, a Redis round trip a fraction
# of a millisecond, a batch of a thousand Lua calls some milliseconds.
_GATE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5)
# A group commit's transaction, up to the store's lock and statement timeouts.
_COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Claims per group commit, up to ``claim_batch_size_max``'s own limit.
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000)


class MultiprocessMisconfigured(RuntimeError):
    """prometheus-client chose its storage before ``PROMETHEUS_MULTIPROC_DIR`` was set:
    the process's figures would never reach the directory the scrape reads."""


class Instruments:
    """Every counter, histogram and gauge the platform records into, on a registry of
    their own (never the library's global one)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.http_requests = Counter(
            "lequan_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "lequan_http_request_seconds",
            "Time to answer an HTTP request, by route template and status",
            ["route", "status"],
            buckets=_HTTP_BUCKETS_S,
            registry=registry,
        )
        self.http_errors = Counter(
            "lequan_http_errors",
            "Error answers (4xx and 5xx), by route template and stable error code",
            ["route", "code"],
            registry=registry,
        )
        self.app_requests = Counter(
            "lequan_app_requests",
            "Signed requests by calling app (a channel or an acquirer) and status class",
            ["app", "kind", "class"],
            registry=registry,
        )
        self.claims = Counter(
            "lequan_claims", "Claim answers by outcome", ["outcome"], registry=registry
        )
        self.redemptions = Counter(
            "lequan_redemptions",
            "Redemption answers by acquirer and outcome (the redemption's status, or the "
            "error code)",
            ["acquirer", "outcome"],
            registry=registry,
        )
        self.gate_seconds = Histogram(
            "lequan_gate_seconds",
            "Time of a claim gate call (reserve, settle, release), each for a whole batch",
            ["call"],
            buckets=_GATE_BUCKETS_S,
            registry=registry,
        )
        self.gate_failures = Counter(
            "lequan_gate_failures",
            "Claim gate calls that could not reach the gate",
            ["call"],
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "lequan_commit_seconds",
            "Time of a group commit: the claims of one batch written to the store",
            buckets=_COMMIT_BUCKETS_S,
            registry=registry,
        )
        self.commit_batch_claims = Histogram(
            "lequan_commit_batch_claims",
            "Claims written per group commit",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.commit_queue_claims = Gauge(
            "lequan_commit_queue_claims",
            "Claims waiting to be committed (or holding a place in the commit queue)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.commit_queue_claims_max = Gauge(
            "lequan_commit_queue_claims_max",
            "Claims the commit queue holds at most (claim_queue_max per worker)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.sweeps = Counter(
            "lequan_sweeps", "Sweeper runs by outcome (ok, failed)", ["outcome"], registry=registry
        )
        self.swept = Counter(
            "lequan_swept",
            "What sweeps did: vouchers expired, locks timed out, gates retired",
            ["what"],
            registry=registry,
        )
        self.relay_rounds = Counter(
            "lequan_relay_rounds",
            "Outbox relay rounds by outcome (idle, delivered, central_down, failed)",
            ["outcome"],
            registry=registry,
        )
        self.relay_events = Counter(
            "lequan_relay_events",
            "Outbox events the relay settled, by outcome (delivered, retried, dead)",
            ["outcome"],
            registry=registry,
        )
        # The series of closed label sets exist from the start, at 0: a rate or an
        # alert reads "none yet" rather than no series at all.
        for family, closed in (
            (self.gate_seconds, GATE_CALLS),
            (self.gate_failures, GATE_CALLS),
            (self.sweeps, SWEEP_OUTCOMES),
            (self.swept, SWEPT),
            (self.relay_rounds, RELAY_ROUND_OUTCOMES),
            (self.relay_events, RELAY_EVENT_OUTCOMES),
        ):
            for value in closed:
                family.labels(value)


GATE_CALLS = ("reserve", "settle", "release")
SWEEP_OUTCOMES = ("ok", "failed")
SWEPT = ("expired", "locks_timed_out", "gates_retired")
# How a relay round ended: nothing was due, events were settled by central's answers,
# central could not be reached, or the round failed (the store, most likely).
RELAY_ROUND_OUTCOMES = ("idle", "delivered", "central_down", "failed")
RELAY_EVENT_OUTCOMES = ("delivered", "retried", "dead")


# In multiprocess mode, the one set of instruments of each process, by pid.
_per_process: dict[int, Instruments] = {}
_per_process_lock = threading.Lock()


def runtime_instruments() -> Instruments:
    """A runtime's instruments: a set of its own, or, in multiprocess mode, the one set
    of the process (two sets would write the same figures over each other's)."""
    if multiprocess_dir() is None:
        return Instruments()
    with _per_process_lock:
        found = _per_process.get(os.getpid())
        if found is None:
            found = _per_process[os.getpid()] = Instruments()
        return found


def multiprocess_dir() -> Path | None:
    """The directory every worker writes its figures to, when ``serve`` set one."""
    found = os.environ.get(MULTIPROC_ENV)
    if not found:
        return None
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise MultiprocessMisconfigured(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported: set it before "
            "the process starts (lequan serve does)"
        )
    return Path(found)


def prepare_multiprocess_dir(path: Path) -> None:
    """Make the directory and delete the figures files a past run left there, so that
    no worker of it counts; other files are left alone (it may be a directory the
    operator named)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        if _FIGURES_FILE.fullmatch(old.name):
            old.unlink(missing_ok=True)


_FIGURES_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_\d+\.db")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def forget_dead_workers(path: Path) -> list[int]:
    """Drop the live gauges of worker processes that are gone (uvicorn starts another
    in place of one that died): the commit queue of a dead worker is not waiting. Its
    counters stay: what it did still counts. The pids dropped."""
    dead = set()
    for file in path.glob("gauge_live*_*.db"):
        matched = _LIVE_GAUGE_FILE.fullmatch(file.name)
        if matched and not _alive(int(matched.group(1))):
            dead.add(int(matched.group(1)))
    for pid in sorted(dead):
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]  # untyped upstream
    return sorted(dead)


def forget_this_worker() -> None:
    """This worker is stopping: its live gauges (the commit queue) no longer count."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(os.getpid(), str(path))  # type: ignore[no-untyped-call]  # untyped upstream


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process now holds the number
    return True


class Exposition:
    """What ``/metrics`` answers: every worker's instruments (or this runtime's alone,
    outside multiprocess mode) and the collectors that read shared state at each
    scrape (the outbox backlog, the stock left), in the text format."""

    def __init__(self, instruments: Instruments, live: Sequence[Collector] = ()) -> None:
        self._instruments = instruments
        self.live: list[Collector] = list(live)

    def collect(self) -> Iterator[Metric]:
        for collector in self._sources():
            yield from collector.collect()

    def latest(self) -> bytes:
        return generate_latest(self)

    def _sources(self) -> Iterable[Collector]:
        path = multiprocess_dir()
        if path is None:
            yield self._instruments.registry
        else:
            forget_dead_workers(path)
            yield MultiProcessCollector(None, str(path))  # type: ignore[no-untyped-call]  # untyped upstream
        yield from self.live
