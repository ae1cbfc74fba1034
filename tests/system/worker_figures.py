"""What each worker of ``lequan serve --workers N`` counted, read from its own file
in the figures directory (``LEQUAN_METRICS_DIR``): a scrape of ``/metrics`` sums
every worker's counts, so only the files tell which workers did the counting."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector


def per_worker(figures: Path, name: str, **labels: str) -> dict[int, float]:
    """A counter's value in each worker's own file, by the worker's pid."""
    found: dict[int, float] = {}
    for file in figures.glob("counter_*.db"):
        pid = int(file.stem.removeprefix("counter_"))
        merged = MultiProcessCollector.merge([str(file)])  # type: ignore[no-untyped-call]  # untyped upstream
        found[pid] = sum(
            sample.value
            for metric in merged
            for sample in metric.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )
    return found
