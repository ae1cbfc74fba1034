"""The fair start over HTTP: claims inside a round's start window wait and are served
in the order the committed seed gives their tickets, so the first to arrive are not
favoured; after the window it is first come, first served; retries are idempotent
throughout; and anyone can check the published draw."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx

from lequan.domain.fair_start import PublishedEntry, verify
from lequan.ports import ClaimGate, DrawProgress, GateUnavailable
from tests.e2e.conftest import CAMPAIGN, Api, OpenApi, assert_error, campaign_yaml
from tests.factories import T0, dining_config
from tests.integration.test_claim_invariants import GateInFront

WINDOW_S = 2
TEMPLATE = "d300-90"
FAIRNESS = f"/v1/public/campaigns/{CAMPAIGN}/rounds/r1/fairness"


def fair_api(open_api: OpenApi, *, stock: int, **settings: Any) -> Api:
    config = dining_config(stock={"wechat": {TEMPLATE: stock}}, start_window_s=WINDOW_S)
    return open_api(config, **settings)


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def entered(api: Api) -> int:
    return int(api.world.platform.claims.draws.waiting_claims)


def holds(api: Api, count: int) -> Callable[[], bool]:
    return lambda: entered(api) == count


def batch(api: Api, users: list[str], keys: list[str]) -> httpx.Response:
    items = [
        {**Api.claim_body(user), "idempotency_key": key}
        for user, key in zip(users, keys, strict=True)
    ]
    return api.post("wechat", "/v1/claims/batch", {"items": items}, key=None)


def close_the_window(api: Api) -> None:
    api.clock.set(T0 + timedelta(seconds=WINDOW_S + 1))


def ticket_of(result: dict[str, Any]) -> str:
    """The draw ticket an answer carries: in the voucher, or in a refusal's details."""
    if result.get("voucher"):
        return str(result["voucher"]["draw_ticket"])
    return str(result["error"]["details"]["draw_ticket"])


def published_draw(api: Api) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    wait_for(lambda: api.client.get(FAIRNESS).json()["seed"] is not None, "the draw's seed")
    head = api.client.get(FAIRNESS).json()
    entries: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = api.client.get(f"{FAIRNESS}/entries", params={"after_rank": after, "limit": 50})
        assert page.status_code == 200, page.text
        entries += page.json()["items"]
        after = page.json()["next_after_rank"]
    return head, entries


def problems_of(head: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """What a verifier finds wrong with a published draw: nothing, if it is sound."""
    return verify(
        campaign_id=CAMPAIGN,
        round_id="r1",
        window_s=head["start_window_s"],
        seed_hex=head["seed"],
        published_commitment=head["commitment"],
        entries=[PublishedEntry(e["rank"], e["ticket"], e["outcome"]) for e in entries],
    )


def test_the_first_to_arrive_in_the_window_win_their_share_not_all(open_api: OpenApi) -> None:
    """200 people inside the window for 20 vouchers, arriving in ten waves of 20: each
    wave wins about its share (2), and the winners are exactly the first 20 of the
    order the published seed gives."""
    api = fair_api(open_api, stock=20)
    users = [api.register(n) for n in range(200)]
    waves = [users[n : n + 20] for n in range(0, 200, 20)]
    with ThreadPoolExecutor(len(waves)) as pool:
        sent: list[Future[httpx.Response]] = []
        for n, wave in enumerate(waves):  # each wave entered before the next arrives
            sent.append(pool.submit(batch, api, wave, [f"k-{u}" for u in wave]))
            wait_for(holds(api, 20 * (n + 1)), f"wave {n} entered")
        assert not any(f.done() for f in sent)  # held, not answered, inside the window
        close_the_window(api)
        answers = [f.result(timeout=60) for f in sent]
    results = [r for a in answers for r in a.json()["results"]]
    issued = [r for r in results if r["outcome"] == "issued"]
    assert len(issued) == 20
    assert {r["outcome"] for r in results} == {"issued", "sold_out"}
    first_wave_wins = sum(r["outcome"] == "issued" for r in answers[0].json()["results"])
    assert first_wave_wins < 10  # 2 expected; all 20 under first come, first served

    head, entries = published_draw(api)
    assert (head["entries"], head["won"]) == (200, 20)
    assert problems_of(head, entries) == []
    outcome_of = {e["ticket"]: e["outcome"] for e in entries}
    assert [e["outcome"] for e in entries] == ["won"] * 20 + ["sold_out"] * 180
    for r in results:  # every answer's ticket is in the draw, with what it was answered
        assert outcome_of[ticket_of(r)] == ("won" if r["outcome"] == "issued" else "sold_out")
    assert api.check()["ok"]


def test_after_the_window_it_is_first_come_first_served_and_retries_replay(
    open_api: OpenApi,
) -> None:
    api = fair_api(open_api, stock=30)
    users = [api.register(n) for n in range(40)]
    early, late = users[:10], users[10:]
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(batch, api, early, [f"k-{u}" for u in early])
        wait_for(lambda: entered(api) == 10, "the early claims entered")
        # The same request again while the first waits: in flight, nothing new.
        again = batch(api, early[:1], [f"k-{early[0]}"])
        assert again.json()["results"][0]["outcome"] == "idempotency_in_flight"
        # The same person with another key: one entry per person (their limit).
        other_key = batch(api, early[:1], ["another-key"])
        assert other_key.json()["results"][0]["outcome"] == "claim_pending"
        assert other_key.json()["results"][0]["status_code"] == 503
        close_the_window(api)
        first = held.result(timeout=60).json()["results"]
    assert [r["outcome"] for r in first] == ["issued"] * 10  # 30 vouchers for 10 entries

    # After the window: in order of arrival, until the stock runs out.
    answers = [api.claim(user) for user in late]
    assert [a.status_code for a in answers] == [201] * 20 + [409] * 10
    assert all("draw_ticket" not in a.json()["voucher"] for a in answers[:20])
    assert_error(answers[-1], 409, "sold_out")

    # A retry after the window replays the entered claim's answer, its ticket included.
    replay = batch(api, early[:1], [f"k-{early[0]}"])
    replayed = replay.json()["results"][0]
    assert replayed["replayed"] is True
    assert replayed["voucher"] == first[0]["voucher"]
    single = api.claim(early[1], key=f"k-{early[1]}")
    assert single.status_code == 201
    assert single.headers.get("Idempotent-Replayed") == "true"
    assert single.json()["voucher"] == first[1]["voucher"]
    assert api.check()["ok"]


def test_a_single_claim_waits_for_its_draw_too(open_api: OpenApi) -> None:
    api = fair_api(open_api, stock=1)
    users = [api.register(n) for n in range(3)]
    with ThreadPoolExecutor(3) as pool:
        sent = [pool.submit(api.claim, user, key=f"s-{user}") for user in users]
        wait_for(lambda: entered(api) == 3, "the single claims entered")
        close_the_window(api)
        answers = [f.result(timeout=60) for f in sent]
    assert sorted(a.status_code for a in answers) == [201, 409, 409]
    for a in answers:
        body = a.json()
        ticket = body["voucher"]["draw_ticket"] if a.status_code == 201 else None
        ticket = ticket or body["details"]["draw_ticket"]
        assert len(ticket) == 32


def test_the_commitment_is_public_before_the_release_and_the_seed_after(
    open_api: OpenApi,
) -> None:
    config = dining_config(stock={"wechat": {TEMPLATE: 5}}, start_window_s=WINDOW_S)
    api = open_api(config, campaign=False)
    created = api.admin(
        "alice",
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(config),
        content_type="application/yaml",
    )
    assert created.status_code == 201, created.text
    assert created.json()["start_window_s"] == WINDOW_S
    assert_error(api.client.get(FAIRNESS), 404, "no_start_window")  # a draft commits nothing
    assert api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/approve").status_code == 200

    before = api.client.get(FAIRNESS)
    assert before.status_code == 200
    head = before.json()
    assert head["algorithm"] == "lequan-fair-start-v1"
    assert len(head["commitment"]) == 64
    assert (head["seed"], head["published_at"], head["entries"]) == (None, None, None)
    assert head["window_closes_at"] == (T0 + timedelta(seconds=WINDOW_S)).isoformat()
    assert api.client.get(f"{FAIRNESS}/entries").json() == {"items": [], "next_after_rank": None}
    listed = api.admin("vera", "GET", f"/v1/admin/campaigns/{CAMPAIGN}/fairness")
    assert [r["round_id"] for r in listed.json()["items"]] == ["r1", "r2", "r3"]
    assert listed.json()["items"][0]["commitment"] == head["commitment"]

    # A round no claim came to is drawn empty and published a fence after its window.
    api.admin("bob", "POST", f"/v1/admin/campaigns/{CAMPAIGN}/activate")
    api.clock.set(T0 + timedelta(seconds=WINDOW_S + api.world.rt.settings.gate_fence_s + 1))
    after, entries = published_draw(api)
    assert after["commitment"] == head["commitment"]
    assert (after["entries"], after["won"], entries) == (0, 0, [])
    assert (
        verify(
            campaign_id=CAMPAIGN,
            round_id="r1",
            window_s=WINDOW_S,
            seed_hex=after["seed"],
            published_commitment=after["commitment"],
            entries=[],
        )
        == []
    )
    assert_error(
        api.client.get(f"/v1/public/campaigns/{CAMPAIGN}/rounds/r9/fairness"),
        404,
        "no_start_window",
    )


def test_a_bucketed_gate_refuses_a_start_window_at_import(open_api: OpenApi) -> None:
    api = open_api(campaign=False, gate_buckets=2)
    config = dining_config(start_window_s=WINDOW_S)
    refused = api.admin(
        "alice",
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(config),
        content_type="application/yaml",
    )
    body = assert_error(refused, 409, "fair_start_unavailable")
    assert body["details"]["field"] == "start_window_s"
    plain = api.admin(
        "alice",
        "POST",
        "/v1/admin/campaigns",
        content=campaign_yaml(dining_config()),
        content_type="application/yaml",
    )
    assert plain.status_code == 201, plain.text


class DrawNeverServes(GateInFront):
    """A gate whose draws cannot be reached: the draw never serves anyone."""

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        raise GateUnavailable("ConnectionError")


def test_a_claim_whose_draw_never_comes_hears_draw_pending(
    open_api: OpenApi, migrated_sqlite: str
) -> None:
    from lequan.adapters.memory_gate import MemoryGate

    gate: ClaimGate = DrawNeverServes(MemoryGate())
    api = fair_api(open_api, stock=5, gate=gate, draw_wait_s=0.2)
    user = api.register(1)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(api.claim, user, key="k-1")
        wait_for(lambda: entered(api) == 1, "the claim entered")
        close_the_window(api)
        answer = held.result(timeout=60)
    body = assert_error(answer, 503, "draw_pending")
    assert answer.headers["Retry-After"] == "1"
    assert len(body["details"]["draw_ticket"]) == 32
    # Later claims wait for the draw as long, then hear the same.
    assert_error(api.claim(api.register(2)), 503, "draw_pending")


class DrawWhenLetGo(GateInFront):
    """A gate whose draws begin only once the test lets them go."""

    def __init__(self, inner: ClaimGate) -> None:
        super().__init__(inner)
        self.go = threading.Event()

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        self.go.wait(60)
        return self.inner.draw(
            draw, chunk_size=chunk_size, pending_max=pending_max, lock_ttl_s=lock_ttl_s
        )


def test_claims_after_the_window_wait_for_the_draw_then_come_first_served(
    open_api: OpenApi,
) -> None:
    from lequan.adapters.memory_gate import MemoryGate

    gate = DrawWhenLetGo(MemoryGate())
    api = fair_api(open_api, stock=11, gate=gate)
    users = [api.register(n) for n in range(12)]
    early, late = users[:10], users[10:]
    with ThreadPoolExecutor(3) as pool:
        window = pool.submit(batch, api, early, [f"k-{u}" for u in early])
        wait_for(holds(api, 10), "the window's claims entered")
        close_the_window(api)
        after = [pool.submit(api.claim, user, key=f"late-{user}") for user in late]
        wait_for(holds(api, 12), "the claims after the window waiting")
        assert not any(f.done() for f in [window, *after])  # nobody before the draw
        gate.go.set()
        first = window.result(timeout=60).json()["results"]
        answers = [f.result(timeout=60) for f in after]
    assert [r["outcome"] for r in first] == ["issued"] * 10  # the window's entries first
    assert sorted(a.status_code for a in answers) == [201, 409]  # then one left, first come
    won = next(a for a in answers if a.status_code == 201).json()["voucher"]
    assert "draw_ticket" not in won
    assert api.check()["ok"]


class DrawSlowly(GateInFront):
    """A gate whose draw serves a chunk only every 50 ms."""

    def draw(
        self, draw: str, *, chunk_size: int, pending_max: int, lock_ttl_s: float
    ) -> DrawProgress:
        time.sleep(0.05)
        return self.inner.draw(
            draw, chunk_size=chunk_size, pending_max=pending_max, lock_ttl_s=lock_ttl_s
        )


def test_a_draw_longer_than_draw_wait_s_that_keeps_moving_answers_every_entry(
    open_api: OpenApi,
) -> None:
    """20 entries served one at a time, 50 ms apart, with draw_wait_s 0.3: the draw
    takes a second, yet no entered claim is given up while it moves."""
    from lequan.adapters.memory_gate import MemoryGate

    api = fair_api(
        open_api, stock=5, gate=DrawSlowly(MemoryGate()), draw_wait_s=0.3, draw_chunk_size=1
    )
    users = [api.register(n) for n in range(20)]
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(batch, api, users, [f"k-{u}" for u in users])
        wait_for(holds(api, 20), "the claims entered")
        close_the_window(api)
        started = time.monotonic()
        results = held.result(timeout=60).json()["results"]
    assert time.monotonic() - started > 0.3 * 2  # longer than draw_wait_s, and moving
    assert sorted(r["outcome"] for r in results) == ["issued"] * 5 + ["sold_out"] * 15
    assert api.check()["ok"]
