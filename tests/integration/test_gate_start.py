"""A process starting after the shared gate lost its state (Redis restarted empty)
while several campaigns are live.

Each lost campaign must wait out the reservation fence before its gate is
loaded from the store. The process closes every lost campaign at once,
listens at once (claims for them answer ``503 gate_rebuilding``), and waits
out one fence for all of them in the background: start-up costs one fence,
not one per live campaign.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from lequan.bootstrap import build_runtime, start_platform
from lequan.config import Settings
from lequan.http.app import create_app
from lequan.services.claim_answers import ClaimResult
from tests.factories import World, dining_config
from tests.integration.conftest import Stack
from tests.integration.test_claim_invariants import (
    CAMPAIGN,
    FENCED,
    TEMPLATE,
    assert_books,
    claim_request,
    register_many,
)
from tests.waiting import wait_until

with warnings.catch_warnings():  # as in tests/e2e/conftest.py: plain httpx is what we use
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

CAMPAIGNS = [CAMPAIGN, f"{CAMPAIGN}-b", f"{CAMPAIGN}-c"]


@contextmanager
def another_process(world: World, stack: Stack, tmp_path: Path) -> Iterator[World]:
    """A platform started now on the same store and the same shared gate."""
    settings = Settings(
        data_dir=tmp_path / "second",
        database_url=stack.database_url,
        sweep_interval_s=3600,
        **FENCED,
    )
    (tmp_path / "second").mkdir()
    rt = build_runtime(settings, clock=world.clock, keyring=world.rt.keyring, gate=stack.new_gate())
    platform = start_platform(rt, sweep=False)
    try:
        yield World(platform=platform, clock=world.clock, secrets=world.secrets)
    finally:
        platform.close()


def claim_in(world: World, user: str, campaign: str, key: str) -> ClaimResult:
    [result] = world.platform.claims.claim("wechat", [claim_request(user, key, campaign=campaign)])
    return result


def test_a_start_after_the_gate_lost_every_campaign_waits_one_fence_for_all(
    shared_stack: Stack, tmp_path: Path
) -> None:
    stack = shared_stack
    with stack.world(tmp_path, **FENCED) as world:
        early, late = register_many(world, range(2))
        for n, campaign in enumerate(CAMPAIGNS):
            config = dining_config(id=campaign, stock={"wechat": {TEMPLATE: 5}})
            world.open_campaign(config, merchants=n == 0)
            assert claim_in(world, early, campaign, f"a-{campaign}").outcome == "issued"
        stack.lose_gate(world)

        with (
            structlog.testing.capture_logs() as events,
            another_process(world, stack, tmp_path) as other,
        ):
            # Listening at once: each lost campaign answers "being rebuilt", retryably.
            blind = claim_in(other, late, CAMPAIGNS[-1], "blind")
            assert blind.outcome == "gate_rebuilding", blind
            assert blind.answer.status_code == 503
            # Not ready meanwhile: /readyz names the campaigns a balancer would send
            # to a process that can only answer "being rebuilt".
            assert other.platform.gatekeeper.rebuilding() == sorted(CAMPAIGNS)
            # No lifespan (no ``with``): its shutdown would stop this platform's keeper.
            waiting = TestClient(create_app(other.platform)).get("/readyz")
            assert waiting.status_code == 503
            assert waiting.json()["details"]["gate_rebuilding"] == sorted(CAMPAIGNS)
            wait_until(
                lambda: all(other.rt.gate.loaded(c, []) for c in CAMPAIGNS),
                what="every campaign is loaded in the gate",
            )
            wait_until(
                lambda: other.platform.gatekeeper.rebuilding() == [],
                what="the keeper says nothing is being rebuilt",
            )

            # One fence for all of them, not one after another.
            fences = [e for e in events if e["event"] == "gate_rebuild_fenced"]
            assert len(fences) == 1, fences
            assert sorted(fences[0]["campaigns"]) == sorted(CAMPAIGNS)

            # Loaded from the store: the early claims count, the rest is on sale.
            for campaign in CAMPAIGNS:
                again = claim_in(other, early, campaign, f"b-{campaign}")
                assert again.outcome == "already_claimed", again
                assert claim_in(other, late, campaign, f"c-{campaign}").outcome == "issued"
                assert other.rt.gate.remaining(f"{campaign}:r1:wechat", TEMPLATE) == 3
        for campaign in CAMPAIGNS:
            assert assert_books(world, campaign).issued == 2
