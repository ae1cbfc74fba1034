"""The fair start: a round's first seconds served in an order drawn from a committed
seed, so that arriving first inside the window buys nothing.

Why this shape (docs/risk.md, "Fair start", says it for operators):

- **A draw per round, one order for every process.** A claim arriving inside the
  window is *entered* in the round's draw in the shared gate (one Redis sorted
  set, scored by the ticket's HMAC under the seed; the embedded gate keeps the
  same in memory) and its request waits. When the window closes (and
  ``draw_grace_ms`` later, for entries on their way), whichever process holds the
  draw's lock serves the entries in order, a chunk at a time, each reserved by
  the gate's own rules; every process picks up its own claims' results and
  commits them through its group commit, as any claim. So the order is global,
  no voucher is issued before its commit (the durability rule), and the gate's
  atomic reservation still keeps stock and one-per-person exact.
- **Paced by the commits.** A reservation must be committed within its ttl (the
  fence a gate rebuild relies on). The drawer serves no chunk while
  ``draw_pending_max`` reservations of the round are pending, so the draw goes
  as fast as the winners are committed, in every process together.
- **After the window, first come, first served — after the draw.** A claim
  arriving once the window has closed waits until the draw has served every
  entry (``draw_wait_s`` at most), so no one arriving a moment after the window
  takes stock before an entry drawn late in it.
- **Waiting holds no thread.** An entered claim, and one waiting for the draw
  after the window, is a slot in its call's ``claiming.Waiting`` (one future per
  call, not per claim): the HTTP request awaits it on the event loop, and it
  counts against ``draw_waiting_max``, not ``claim_inflight_max``, so a window's
  crowd is taken in whole rather than its first arrivals only. The draw's
  results are handed out on this drawer's thread, the winners to the group
  commit (which answers them), the claims after the window to a pool of their own.
- **Published a chunk at a time.** The entries go to the store in transactions
  of ``PUBLISH_ROWS``, from the last rank written, the seed revealed last: no
  transaction holds SQLite's one write lock for a whole draw while the crowd
  after the window is being served.
- **A seed nobody can choose after the fact.** It is drawn at the campaign's
  approval, sealed with the key ring, and only its commitment (SHA-256 with what
  it is for, ``domain/fair_start.py``) is public until the draw is served; then
  the seed and every entry (ticket, rank, outcome) are published, and anyone
  can recompute the order (``lequan fairness verify``).
- **A ticket names no person.** It is a keyed digest of the claim's app,
  Idempotency-Key and body: the same request sent again is the same entry, and
  a person has at most their limit of entries in a pool, whatever keys they use.
- **Bounded.** A draw takes at most ``draw_entries_max`` entries, a process holds
  at most ``draw_waiting_max`` claims for draws; beyond, ``429 overloaded``. A waiting
  claim hears ``503 draw_pending`` once its draw is ``draw_wait_s`` past its start
  (the window and its intake) and has not moved for as long; a process that dies
  with waiting claims answers them nothing (the person retries) and their
  reservations are reaped after the fence.
"""

from __future__ import annotations

import heapq
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import structlog

from lequan.domain.campaigns import CampaignConfig
from lequan.domain.errors import NotFound
from lequan.domain.fair_start import ALGORITHM, SEED_BYTES, commitment
from lequan.ports import (
    DrawResult,
    DuplicateKey,
    GateUnavailable,
    ReserveOutcome,
    StoreError,
    UnitOfWork,
)
from lequan.rows import CampaignRow, DrawEntryRow, DrawRow
from lequan.services.idempotency import Idempotency
from lequan.services.runtime import Runtime

__all__ = [
    "OUTCOME_NAMES",
    "StartDraws",
    "commit_draws",
    "draw_id",
    "fairness",
    "fairness_entries",
    "publish",
    "ticket_of",
    "window_close",
]

log = structlog.get_logger(__name__)

# How the published list names what the draw gave each entry.
OUTCOME_NAMES: dict[ReserveOutcome | None, str] = {
    ReserveOutcome.OK: "won",
    ReserveOutcome.SOLD_OUT: "sold_out",
    ReserveOutcome.ALREADY_CLAIMED: "already_claimed",
    ReserveOutcome.CAMPAIGN_LIMIT: "claim_limit_reached",
    ReserveOutcome.UNKNOWN_STOCK: "unavailable",
    None: "interrupted",
}
_SEED_FIELD = "draw_seed"  # the key ring's associated data for a sealed seed
_TICKET_FIELD = "draw_ticket"  # the blind index's field for a ticket
# How often the drawer looks at a draw it waits for, and at the store when idle.
_TICK_S = 0.01
_IDLE_S = 0.5
# A step keeps serving one draw for at most this long before it looks at the others.
_TURN_S = 0.05
# Draws the process remembers as served; beyond, it forgets them all (it asks again).
_DONE_MAX = 10_000
_SEEDS_MAX = 1000
_PUBLISH_LIMIT = 100  # draws looked at per pass of the publisher
# Entries written per transaction when a draw is published.
PUBLISH_ROWS = 10_000


def draw_id(campaign_id: str, round_id: str) -> str:
    """A round's draw in the gate (campaign and round ids hold no colon)."""
    return f"{campaign_id}:{round_id}"


def window_close(config: CampaignConfig, release_at: datetime) -> datetime | None:
    """When the start window of a round released at ``release_at`` closes; None: no window."""
    if not config.start_window_s:
        return None
    return release_at + timedelta(seconds=config.start_window_s)


def commit_draws(
    rt: Runtime, uow: UnitOfWork, config: CampaignConfig, *, now: datetime
) -> dict[str, str]:
    """Draw and seal each round's seed, in the caller's transaction (the approval);
    the commitments by round id, now public."""
    if not config.start_window_s:
        return {}
    rows: list[DrawRow] = []
    for r in config.rounds:
        seed_hex = secrets.token_bytes(SEED_BYTES).hex()
        key_id, sealed = rt.keyring.encrypt(_SEED_FIELD, seed_hex)
        rows.append(
            DrawRow(
                campaign_id=config.id,
                round_id=r.id,
                window_s=config.start_window_s,
                commitment=commitment(
                    campaign_id=config.id,
                    round_id=r.id,
                    window_s=config.start_window_s,
                    seed_hex=seed_hex,
                ),
                seed_key_id=key_id,
                seed_sealed=sealed,
                committed_at=now,
                seed_hex=None,
                published_at=None,
                entries=0,
                won=0,
            )
        )
    uow.draws.add_draws(rows)
    return {row.round_id: row.commitment for row in rows}


def ticket_of(rt: Runtime, *, campaign_id: str, round_id: str, key: Idempotency) -> str:
    """A claim's ticket: a keyed digest of its app, key and body, naming no person."""
    value = "\x1f".join((campaign_id, round_id, key.app_id, key.key, key.request_hash))
    return rt.keyring.blind_index(_TICKET_FIELD, value)[:32]


def _open_seed(rt: Runtime, row: DrawRow) -> str:
    return rt.keyring.decrypt(_SEED_FIELD, row.seed_key_id, row.seed_sealed)


def publish(rt: Runtime, campaign_id: str, round_id: str) -> bool:
    """Write a served draw's entries in the store, then reveal its seed; False when it
    was published already (by another process) or has no such draw.

    The entries go a chunk per transaction (``PUBLISH_ROWS`` rows), from the last
    rank written on: no transaction holds the store's write lock (SQLite's one)
    for a whole draw, and one that another publisher wrote first is refused
    (``DuplicateKey``) and left to it. The seed is revealed last, with the counts.
    """
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.draws.get_draw(campaign_id, round_id)
        written = uow.draws.last_rank(campaign_id, round_id) if row is not None else 0
    if row is None or row.published_at is not None:
        return False
    draw = draw_id(campaign_id, round_id)
    while True:
        got = rt.gate.drawn(draw, start=written, limit=PUBLISH_ROWS)
        if not got:
            break
        try:
            with rt.store.unit_of_work() as uow:
                uow.draws.add_entries(
                    campaign_id,
                    round_id,
                    [
                        DrawEntryRow(
                            rank=e.rank,
                            ticket=e.ticket,
                            channel_id=e.request.pool.rsplit(":", 1)[1],
                            template_id=e.request.template_id,
                            outcome=OUTCOME_NAMES[e.result.outcome],
                        )
                        for e in got
                    ],
                )
                uow.commit()
        except DuplicateKey:
            log.info("draw_published_elsewhere", draw=draw)
            return False
        written += len(got)
    seed_hex = _open_seed(rt, row)
    with rt.store.unit_of_work() as uow:
        done = uow.draws.reveal(
            campaign_id, round_id, seed_hex=seed_hex, entries=written, now=rt.clock.now()
        )
        if done:
            uow.commit()
    if done:
        log.info("draw_published", draw=draw, entries=written)
    return done


class Waiting(Protocol):
    """What the drawer needs of a claim it holds for a draw."""

    @property
    def ticket(self) -> str: ...

    @property
    def score(self) -> int: ...


T = TypeVar("T", bound=Waiting)


@dataclass(slots=True)
class _Active(Generic[T]):
    """A draw this process waits for: the claims it holds for it, by ticket."""

    draw: str
    campaign_id: str
    round_id: str
    close_at: datetime
    waiting: dict[str, T] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)  # (score, ticket) waiting
    # Claims that came after the window: (how many, what to call once it is served).
    after: list[tuple[int, Callable[[bool], None]]] = field(default_factory=list)
    done: bool = False
    # The draw's entries served as last seen, and when (monotonic s) that last grew: a
    # draw that stops moving for ``draw_wait_s`` is given up, one that moves is not.
    served: int = -1
    moved_at: float = field(default_factory=time.monotonic)


class StartDraws(Generic[T]):
    """This process's side of the rounds' draws: the claims it holds, and a thread that
    drives the draws once their windows close, hands each waiting claim its result
    (``on_drawn``), publishes a draw it finished, and publishes what nobody did.

    ``on_drawn`` and ``on_given_up`` run on the drawer's thread; they must not block
    on the draw (they hand claims on to the group commit).
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        on_drawn: Callable[[list[tuple[T, DrawResult]]], None],
        on_given_up: Callable[[list[T]], None],
    ) -> None:
        self._rt = rt
        self._on_drawn = on_drawn
        self._on_given_up = on_given_up
        self.owner = secrets.token_hex(8)  # this process, as the gate knows its entries
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._active: dict[str, _Active[T]] = {}
        self._done: set[str] = set()
        self._waiting = 0
        self._seeds: dict[tuple[str, str], bytes | None] = {}
        self._forget_at: dict[str, float] = {}  # draw -> monotonic s
        self._next_publish_check = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lequan-draws", daemon=True)
        self._thread.start()

    # -- the claim path ------------------------------------------------------------------

    def seed(self, campaign_id: str, round_id: str) -> bytes | None:
        """The round's seed, opened once per process; None when it has no draw."""
        with self._lock:
            if (campaign_id, round_id) in self._seeds:
                return self._seeds[(campaign_id, round_id)]
        with self._rt.store.unit_of_work(readonly=True) as uow:
            row = uow.draws.get_draw(campaign_id, round_id)
        seed = None if row is None else bytes.fromhex(_open_seed(self._rt, row))
        with self._lock:
            if len(self._seeds) >= _SEEDS_MAX:
                self._seeds.clear()
            self._seeds[(campaign_id, round_id)] = seed
        return seed

    def is_drawn(self, draw: str) -> bool:
        return draw in self._done

    @property
    def waiting_claims(self) -> int:
        """Claims this process holds for draws now."""
        return self._waiting

    def room(self, wanted: int) -> int:
        """How many of ``wanted`` claims this process may hold now (``draw_waiting_max``)."""
        with self._lock:
            return max(0, min(wanted, self._rt.settings.draw_waiting_max - self._waiting))

    def add(
        self, *, campaign_id: str, round_id: str, close_at: datetime, items: Sequence[T]
    ) -> None:
        """Wait for the draw with these claims, entered in the gate; each is handed to
        ``on_drawn`` with its result, or to ``on_given_up``."""
        draw = draw_id(campaign_id, round_id)
        with self._changed:
            active = self._activate(draw, campaign_id, round_id, close_at)
            for item in items:
                if item.ticket in active.waiting:
                    # The same request again in this process while the first waits: the
                    # key is in flight, so this cannot be; keep the first.
                    continue
                active.waiting[item.ticket] = item
                heapq.heappush(active.heap, (item.score, item.ticket))
                self._waiting += 1
            self._changed.notify_all()

    def when_drawn(
        self,
        *,
        campaign_id: str,
        round_id: str,
        close_at: datetime,
        count: int,
        then: Callable[[bool], None],
    ) -> None:
        """Call ``then(True)`` once the round's draw has served every entry (at once if it
        has), ``then(False)`` if it has not ``draw_wait_s`` past the window. ``count``
        claims wait on it, counted against ``draw_waiting_max`` meanwhile."""
        draw = draw_id(campaign_id, round_id)
        with self._changed:
            if draw not in self._done:
                active = self._activate(draw, campaign_id, round_id, close_at)
                active.after.append((count, then))
                self._waiting += count
                self._changed.notify_all()
                return
        then(True)

    def _activate(
        self, draw: str, campaign_id: str, round_id: str, close_at: datetime
    ) -> _Active[T]:
        active = self._active.get(draw)
        if active is None:
            active = self._active[draw] = _Active(draw, campaign_id, round_id, close_at)
        return active

    def close(self) -> None:
        """Stop the thread; the claims still waiting hear ``on_given_up``."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(10)
        with self._lock:
            left = [item for a in self._active.values() for item in a.waiting.values()]
            after = [then for a in self._active.values() for _count, then in a.after]
            self._active.clear()
            self._waiting = 0
        if left:
            self._on_given_up(left)
        for then in after:
            then(False)

    # -- the drawer's thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pause_s = self.step()
            except Exception as error:  # the drawer must never die: every claim is answered
                log.error("draws_step_failed", error_type=type(error).__name__)
                pause_s = _IDLE_S
            with self._changed:
                if not self._stop.is_set():
                    self._changed.wait(pause_s)

    def step(self) -> float:
        """One pass over the draws this process waits for; how long to pause after."""
        now = self._rt.clock.now()
        grace = timedelta(milliseconds=self._rt.settings.draw_grace_ms)
        with self._lock:
            active = list(self._active.values())
        waiting = False
        for a in active:
            if now < a.close_at + grace:
                waiting = True
                continue
            self._advance(a, now=now, grace=grace)
            waiting = waiting or not a.done
        self._forget_published()
        if time.monotonic() >= self._next_publish_check:
            self._next_publish_check = time.monotonic() + self._rt.settings.claim_reservation_ttl_s
            self.publish_overdue()
        return _TICK_S if waiting or self._active else _IDLE_S

    def _advance(self, a: _Active[T], *, now: datetime, grace: timedelta) -> None:
        """Serve what the draw lets this process serve, hand out what is decided."""
        s = self._rt.settings
        started = time.monotonic()
        served = -1
        while True:
            try:
                progress = self._rt.gate.draw(
                    a.draw,
                    chunk_size=s.draw_chunk_size,
                    pending_max=s.draw_pending_max,
                    lock_ttl_s=s.claim_reservation_ttl_s,
                )
            except GateUnavailable as error:
                log.warning("draw_unreachable", draw=a.draw, error_type=str(error))
                break
            if progress.served != a.served:
                a.served, a.moved_at = progress.served, time.monotonic()
            self._hand_out(a, progress.last, everything=progress.done)
            if progress.done:
                self._finish(a)  # the claims after the window go first: publishing waits
                if progress.finished_now:
                    self._publish_soon(a)
                return
            # Nothing served this time (another process's turn, or the winners are
            # being committed), or this draw had its share of the pass.
            if progress.served == served or time.monotonic() - started >= _TURN_S:
                break
            served = progress.served
        # Given up draw_wait_s past its start if it has not moved for as long (a gate out
        # of reach, a drawer gone): a long draw that keeps moving is waited for.
        late = now > a.close_at + grace + timedelta(seconds=s.draw_wait_s)
        if late and time.monotonic() - a.moved_at > s.draw_wait_s:
            self._give_up(a)

    def _hand_out(self, a: _Active[T], last: tuple[int, str] | None, *, everything: bool) -> None:
        with self._lock:
            decided: list[T] = []
            while a.heap and (everything or (last is not None and a.heap[0] <= last)):
                _score, ticket = heapq.heappop(a.heap)
                item = a.waiting.pop(ticket, None)
                if item is not None:
                    decided.append(item)
            self._waiting -= len(decided)
        batch = self._rt.settings.draw_chunk_size
        for start in range(0, len(decided), batch):
            part = decided[start : start + batch]
            try:
                results = self._rt.gate.draw_results(a.draw, [item.ticket for item in part])
            except GateUnavailable as error:
                log.warning("draw_results_unreachable", draw=a.draw, error_type=str(error))
                self._on_given_up(part)
                continue
            self._on_drawn(
                [
                    (item, got if got is not None else DrawResult(None, claim_seq=0, age_s=0.0))
                    for item, got in zip(part, results, strict=True)
                ]
            )

    def _finish(self, a: _Active[T]) -> None:
        with self._changed:
            a.done = True
            if len(self._done) >= _DONE_MAX:
                self._done.clear()
            self._done.add(a.draw)
            after, a.after = a.after, []
            self._waiting -= sum(count for count, _then in after)
            if not a.waiting:
                self._active.pop(a.draw, None)
            self._changed.notify_all()
        for _count, then in after:
            then(True)

    def _give_up(self, a: _Active[T]) -> None:
        with self._lock:
            left = list(a.waiting.values())
            a.waiting.clear()
            a.heap.clear()
            after, a.after = a.after, []
            self._waiting -= len(left) + sum(count for count, _then in after)
            self._active.pop(a.draw, None)
        if left or after:
            log.warning("draw_waited_too_long", draw=a.draw, claims=len(left), after=len(after))
        if left:
            self._on_given_up(left)
        for _count, then in after:
            then(False)

    # -- publishing -------------------------------------------------------------------------

    def _publish_soon(self, a: _Active[T]) -> None:
        """Publish a draw this process finished; another process tries later if it fails."""
        try:
            publish(self._rt, a.campaign_id, a.round_id)
        except (StoreError, GateUnavailable) as error:
            log.warning("draw_publish_failed", draw=a.draw, error_type=type(error).__name__)
            return
        # Other processes may still be reading their claims' results: kept a while.
        self._forget_at[a.draw] = time.monotonic() + 2 * self._rt.settings.gate_fence_s

    def _forget_published(self) -> None:
        now = time.monotonic()
        for draw, at in list(self._forget_at.items()):
            if at <= now:
                try:
                    self._rt.gate.forget_draw(draw)
                except GateUnavailable:
                    continue
                del self._forget_at[draw]

    def publish_overdue(self) -> list[str]:
        """Serve and publish the draws whose windows closed a fence ago or more and that
        nobody published (no claim came, or the process that finished it died)."""
        rt = self._rt
        now = rt.clock.now()
        late = timedelta(milliseconds=rt.settings.draw_grace_ms, seconds=rt.settings.gate_fence_s)
        published: list[str] = []
        try:
            with rt.store.unit_of_work(readonly=True) as uow:
                rows = uow.draws.unpublished(_PUBLISH_LIMIT)
                campaigns = {
                    row.campaign_id: uow.campaigns.get_campaign(row.campaign_id) for row in rows
                }
        except StoreError as error:
            log.warning("draw_publish_check_failed", error_type=type(error).__name__)
            return published
        for row in rows:
            campaign = campaigns.get(row.campaign_id)
            close_at = _close_of(campaign, row)
            if close_at is None or now < close_at + late:
                continue
            draw = draw_id(row.campaign_id, row.round_id)
            if self._drive_to_end(draw):
                try:
                    if publish(rt, row.campaign_id, row.round_id):
                        published.append(draw)
                        self._forget_at[draw] = time.monotonic() + 2 * rt.settings.gate_fence_s
                except (StoreError, GateUnavailable) as error:
                    log.warning("draw_publish_failed", draw=draw, error_type=type(error).__name__)
        return published

    def _drive_to_end(self, draw: str) -> bool:
        """Serve what is left of a draw nobody is waiting for; True once it is served."""
        s = self._rt.settings
        started = time.monotonic()
        while time.monotonic() - started < _TURN_S * 10:
            try:
                progress = self._rt.gate.draw(
                    draw,
                    chunk_size=s.draw_chunk_size,
                    pending_max=s.draw_pending_max,
                    lock_ttl_s=s.claim_reservation_ttl_s,
                )
            except GateUnavailable:
                return False
            if progress.done:
                return True
        return False


def _close_of(campaign: CampaignRow | None, row: DrawRow) -> datetime | None:
    """When the round's draw stopped taking entries (its window and intake)."""
    if campaign is None or row.round_id not in campaign.rounds:
        return None
    release_at, _ends_at = campaign.rounds[row.round_id]
    return campaign.config.draw_close(release_at)


def fairness(rt: Runtime, campaign_id: str, round_id: str) -> dict[str, Any]:
    """What anyone may know of a round's fair start: the commitment from approval, the
    seed and the counts once the draw is published. No personal data."""
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.draws.get_draw(campaign_id, round_id)
        campaign = uow.campaigns.get_campaign(campaign_id) if row is not None else None
    if row is None or campaign is None:
        raise NotFound(
            "no_start_window",
            f"round {round_id} of campaign {campaign_id} has no start window committed",
        )
    return fairness_body(row, campaign)


def fairness_body(row: DrawRow, campaign: CampaignRow) -> dict[str, Any]:
    release_at, _ends_at = campaign.rounds[row.round_id]
    published = row.published_at is not None
    return {
        "campaign_id": row.campaign_id,
        "round_id": row.round_id,
        "algorithm": ALGORITHM,
        "start_window_s": row.window_s,
        "release_at": release_at.isoformat(),
        "window_closes_at": (release_at + timedelta(seconds=row.window_s)).isoformat(),
        "start_window_intake_s": campaign.config.start_window_intake_s,
        "intake_closes_at": (
            release_at + timedelta(seconds=row.window_s + campaign.config.start_window_intake_s)
        ).isoformat(),
        "commitment": row.commitment,
        "committed_at": row.committed_at.isoformat(),
        "seed": row.seed_hex,
        "published_at": row.published_at.isoformat() if row.published_at else None,
        "entries": row.entries if published else None,
        "won": row.won if published else None,
    }


def campaign_fairness(rt: Runtime, campaign_id: str) -> list[dict[str, Any]]:
    """Every round's fair start of a campaign (the admin view); empty without a window."""
    with rt.store.unit_of_work(readonly=True) as uow:
        campaign = uow.campaigns.get_campaign(campaign_id)
        rows = uow.draws.draws_of(campaign_id) if campaign is not None else []
    if campaign is None:
        raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
    return [fairness_body(row, campaign) for row in rows]


def fairness_entries(
    rt: Runtime, campaign_id: str, round_id: str, *, after_rank: int, limit: int
) -> tuple[list[DrawEntryRow], int | None]:
    """A published draw's entries ranked after ``after_rank``; the cursor of the next
    page (None at the end). Nothing before the draw is published."""
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.draws.get_draw(campaign_id, round_id)
        if row is None:
            raise NotFound(
                "no_start_window",
                f"round {round_id} of campaign {campaign_id} has no start window committed",
            )
        if row.published_at is None:  # entries being written show with their seed
            return [], None
        found = uow.draws.entries(campaign_id, round_id, after_rank=after_rank, limit=limit + 1)
    more = len(found) > limit
    page = found[:limit]
    return page, (page[-1].rank if more and page else None)
