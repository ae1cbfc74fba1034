"""The big screen watching while the bench claims: an operator signed in and an
event stream open, read as a browser reads it, for the rows that measure what the
screen costs the claim path (the same scenario without it runs in the same run)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from benchmarks.scenarios import Figure, Stack
from lequan.services import admin

__all__ = ["watched"]


@contextmanager
def watched(stack: Stack, port: int) -> Iterator[list[int]]:
    """An event stream open on the screen for the body of the ``with``; yields a list
    that holds, once the block ends, the number of snapshots the watcher received."""
    token = admin.add_operator(stack.rt, f"bench-{stack.next_person}", role="viewer")
    received = [0]
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            signed_in = client.post("/v1/screen/session", json={"token": token})
            signed_in.raise_for_status()
            with client.stream("GET", "/v1/screen/stream") as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        received[0] += 1
                        ready.set()
                    if stop.is_set():
                        return

    thread = threading.Thread(target=watch, name="bench-screen", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the screen's stream sent nothing in 30 s")
    try:
        yield received
    finally:
        stop.set()
        thread.join(10)


def with_screen(figure: Figure, received: list[int]) -> Figure:
    """The figure, with how many snapshots the screen got meanwhile among its checks."""
    figure.checks["screen_snapshots"] = received[0]
    return figure
