"""Campaign administration: import, maker-checker approval, lifecycle, rounds,
and keeping the claim gate in step with the store.

Every change is one transaction with its audit entry; the in-process
campaign cache is told, so the claim path sees the change at once here and
within ``campaign_cache_ttl_s`` in other processes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog
import yaml
from pydantic import ValidationError

from lequan.config import Settings
from lequan.domain.campaigns import CampaignConfig, CampaignStatus, lifecycle_transition
from lequan.domain.error_codes import ErrorCode
from lequan.domain.errors import AuthError, Conflict, InvalidInput, NotFound
from lequan.domain.ledger import fund_entry
from lequan.ports import DuplicateKey, GateUnavailable, UnitOfWork
from lequan.rows import CampaignRow
from lequan.services.fair_start import commit_draws, draw_id
from lequan.services.runtime import Runtime

__all__ = [
    "CampaignCache",
    "CampaignFileLimits",
    "ClosedGate",
    "change_status",
    "close_all_lost",
    "ensure_gate",
    "ensure_gate_all",
    "ensure_gates",
    "import_campaign",
    "load_closed",
    "load_yaml",
    "parse_campaign",
    "pool_key",
    "rebuild_gate",
    "require_fair_start_served",
    "require_operator_role",
    "retire_gates",
    "start_round",
]

log = structlog.get_logger(__name__)

# A checker may draft too; what a checker drafts needs another checker.
ROLES_THAT_DRAFT = frozenset({"maker", "checker"})
ROLES_THAT_APPROVE = frozenset({"checker"})
ROLES_THAT_OPERATE = frozenset({"maker", "checker"})


def pool_key(campaign_id: str, round_id: str, channel_id: str) -> str:
    """The gate's unit of atomicity: one round of one campaign in one channel."""
    return f"{campaign_id}:{round_id}:{channel_id}"


_TEMPLATE_KINDS = frozenset({"threshold", "percentage", "fixed", "trade_in"})


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for n, part in enumerate(loc):
        if part in _TEMPLATE_KINDS and n > 0 and isinstance(loc[n - 1], int):
            continue  # the union's tag, not a field the operator wrote
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(file)"


def _file_error(rule: str, code: ErrorCode = ErrorCode.INVALID_CAMPAIGN_CONFIG) -> InvalidInput:
    """A refusal of the whole file, shaped like field errors so clients handle one form."""
    return InvalidInput(code, rule, details={"errors": [{"field": "(file)", "rule": rule}]})


@dataclass(frozen=True, slots=True)
class CampaignFileLimits:
    """How big a campaign file may be: its bytes, how deep it nests, and how many
    nodes it holds once its YAML aliases are expanded (``campaign_file_*`` settings)."""

    bytes_max: int
    depth_max: int
    nodes_max: int

    @classmethod
    def of(cls, settings: Settings) -> CampaignFileLimits:
        return cls(
            bytes_max=settings.campaign_file_bytes_max,
            depth_max=settings.campaign_file_depth_max,
            nodes_max=settings.campaign_file_nodes_max,
        )


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a file that nests too deep or expands too far.

    PyYAML composes a document by recursion, one level of Python calls per level
    of nesting: a few thousand brackets exhaust the interpreter's stack. An alias
    is counted as the whole node it names, so a few hundred bytes of aliases of
    aliases cannot expand into millions of nodes for the validation to walk.
    """

    def __init__(self, stream: str | bytes, limits: CampaignFileLimits, code: ErrorCode) -> None:
        super().__init__(stream)
        self._limits = limits
        self._code = code
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id of an anchored node -> nodes it holds

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1))
            return node
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped stub
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if self._depth > self._limits.depth_max:
            raise _file_error(
                f"the file nests deeper than {self._limits.depth_max} levels", self._code
            )
        first = self._nodes
        self._count(1)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if anchor is not None:
            self._sizes[id(node)] = self._nodes - first
        return node

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > self._limits.nodes_max:
            raise _file_error(
                f"the file holds more than {self._limits.nodes_max} values, aliases expanded",
                self._code,
            )


def parse_campaign(
    text: str | bytes, *, limits: CampaignFileLimits | None = None
) -> CampaignConfig:
    """A campaign from its YAML file, or InvalidInput naming every broken field and rule.

    ``limits`` default to the settings' defaults (the CLI reading a file of its own).
    """
    data = load_yaml(text, limits=limits or _DEFAULT_LIMITS, what="campaign file")
    try:
        return CampaignConfig.model_validate(data)
    except ValidationError as error:
        problems = [
            {"field": _loc(e["loc"]), "rule": e["msg"].removeprefix("Value error, ")}
            for e in error.errors(include_url=False)
        ]
        summary = "; ".join(f"{p['field']}: {p['rule']}" for p in problems[:10])
        raise InvalidInput(
            "invalid_campaign_config", summary, details={"errors": problems}
        ) from None


def load_yaml(
    text: str | bytes,
    *,
    limits: CampaignFileLimits,
    what: str,
    code: ErrorCode = ErrorCode.INVALID_CAMPAIGN_CONFIG,
) -> dict[str, object]:
    """An operator's YAML file (``what``) as a mapping, within ``limits``; otherwise
    InvalidInput with ``code``, naming the rule it broke as a ``(file)`` error."""
    size = len(text.encode("utf-8")) if isinstance(text, str) else len(text)
    if size > limits.bytes_max:
        raise _file_error(f"the {what} is larger than {limits.bytes_max} bytes", code)
    try:
        loader = _BoundedLoader(text, limits, code)  # reads a byte string's encoding already
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        raise _file_error(f"not valid YAML: {error}", code) from None
    if not isinstance(data, dict):
        raise _file_error(f"the {what} must be a mapping", code)
    return data


_DEFAULT_LIMITS = CampaignFileLimits.of(Settings.model_construct())


def require_operator_role(uow: UnitOfWork, actor: str, roles: frozenset[str]) -> str:
    """The role of the operator ``actor`` as the store knows it now, if among ``roles``."""
    role = uow.people.operator_role(actor)
    if role is None:
        raise AuthError("unknown_operator", f"no active operator named {actor!r}")
    if role not in roles:
        raise AuthError(
            "forbidden", f"a {role} cannot do this; it needs {' or '.join(sorted(roles))}"
        )
    return role


def require_fair_start_served(rt: Runtime, config: CampaignConfig) -> None:
    """Refuse a start window this deployment cannot keep to its order: a draw reserves
    in rank order only when each pool's stock is in one gate bucket
    (``adapters/redis_draws.py``)."""
    if config.start_window_s and rt.settings.gate_buckets > 1:
        raise Conflict(
            "fair_start_unavailable",
            f"a start window needs each pool's stock in one gate bucket; this deployment "
            f"splits it in {rt.settings.gate_buckets} (LEQUAN_GATE_BUCKETS): set "
            "start_window_s to 0, or serve the campaign with one bucket",
            details={"field": "start_window_s", "gate_buckets": rt.settings.gate_buckets},
        )


def import_campaign(rt: Runtime, config: CampaignConfig, *, actor: str) -> CampaignRow:
    """Store a new campaign as a draft drafted by ``actor`` (a maker)."""
    require_fair_start_served(rt, config)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_DRAFT)
        if uow.campaigns.campaign_exists(config.id):
            raise Conflict("campaign_exists", f"campaign {config.id} already exists")
        try:
            uow.campaigns.insert_campaign(config, drafted_by=actor, now=now)
        except DuplicateKey:
            raise Conflict("campaign_exists", f"campaign {config.id} already exists") from None
        uow.ledger.append_audit(
            actor=actor,
            action="campaign.import",
            target=config.id,
            details={"budget_fen": config.budget_fen, "rounds": len(config.rounds)},
            now=now,
        )
        row = uow.campaigns.get_campaign(config.id)
        assert row is not None
        uow.commit()
    return row


def change_status(rt: Runtime, campaign_id: str, action: str, *, actor: str) -> CampaignRow:
    """approve | activate | pause | resume | end, with maker-checker on approve."""
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        row = uow.campaigns.get_campaign(campaign_id)
        if row is None:
            raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
        if action == "approve" and actor == row.drafted_by and row.status is CampaignStatus.DRAFT:
            # The most specific answer first: whatever the role, never one's own draft.
            raise AuthError(
                "maker_cannot_approve", "the operator who drafted a campaign cannot approve it"
            )
        roles = ROLES_THAT_APPROVE if action == "approve" else ROLES_THAT_OPERATE
        require_operator_role(uow, actor, roles)
        status = lifecycle_transition(row.status, action, drafted_by=row.drafted_by, actor=actor)
        moved = uow.campaigns.set_campaign_status(
            campaign_id,
            expected=row.status,
            status=status,
            now=now,
            approved_by=actor if action == "approve" else None,
        )
        if not moved:
            raise Conflict("campaign_state", "the campaign changed meanwhile; look again")
        details: dict[str, object] = {"from": row.status.value, "to": status.value}
        if action == "approve":
            require_fair_start_served(rt, row.config)
            uow.ledger.record(
                fund_entry(row.budget_fen), campaign_id=campaign_id, now=now, voucher_count=0
            )
            # Each round's seed is drawn now, before any claim can come: only its
            # commitment is public until the round's draw is served (docs/risk.md).
            commitments = commit_draws(rt, uow, row.config, now=now)
            if commitments:
                details["fair_start_commitments"] = commitments
        uow.ledger.append_audit(
            actor=actor,
            action=f"campaign.{action}",
            target=campaign_id,
            details=details,
            now=now,
        )
        uow.commit()
    if status in (CampaignStatus.APPROVED, CampaignStatus.LIVE) and action in (
        "approve",
        "activate",
    ):
        _load_gate_soon(rt, campaign_id)
    rt.campaign_changed(campaign_id)
    # As the conditional update wrote it: no read back.
    return replace(
        row, status=status, approved_by=actor if action == "approve" else row.approved_by
    )


def start_round(rt: Runtime, campaign_id: str, round_id: str, *, actor: str) -> CampaignRow:
    """Open a round now (release time = now), making the campaign live if approved."""
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_OPERATE)
        row = uow.campaigns.get_campaign(campaign_id)
        if row is None:
            raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
        if round_id not in row.rounds:
            raise NotFound("round_not_found", f"campaign {campaign_id} has no round {round_id}")
        if row.status not in (CampaignStatus.APPROVED, CampaignStatus.LIVE):
            raise Conflict(
                "campaign_state", f"a campaign that is {row.status.value} cannot start a round"
            )
        release_at, ends_at = row.rounds[round_id]
        if now >= ends_at:
            raise Conflict("round_ended", f"round {round_id} has already ended")
        uow.campaigns.set_round_times(
            campaign_id, round_id, release_at=min(now, release_at), ends_at=ends_at
        )
        if row.status is CampaignStatus.APPROVED:
            moved = uow.campaigns.set_campaign_status(
                campaign_id, expected=row.status, status=CampaignStatus.LIVE, now=now
            )
            if not moved:
                raise Conflict("campaign_state", "the campaign changed meanwhile; look again")
        uow.ledger.append_audit(
            actor=actor,
            action="campaign.start_round",
            target=f"{campaign_id}/{round_id}",
            details={"release_at": min(now, release_at).isoformat()},
            now=now,
        )
        uow.commit()
    _load_gate_soon(rt, campaign_id)
    rt.campaign_changed(campaign_id)
    opened = {**row.rounds, round_id: (min(now, release_at), ends_at)}
    status = CampaignStatus.LIVE if row.status is CampaignStatus.APPROVED else row.status
    return replace(row, status=status, rounds=opened)


def get_campaign(rt: Runtime, campaign_id: str) -> CampaignRow:
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.campaigns.get_campaign(campaign_id)
    if row is None:
        raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
    return row


def list_campaigns(rt: Runtime) -> list[CampaignRow]:
    with rt.store.unit_of_work(readonly=True) as uow:
        return uow.campaigns.list_campaigns()


# The rebuild lock outlives the fence by this much, so a slow store read
# finishes before another process may start over.
REBUILD_LOCK_MARGIN_S = 60.0


def _load_gate_soon(rt: Runtime, campaign_id: str) -> None:
    """Load the campaign into the gate now, or, if the gate cannot be reached, later:
    the operator's change is committed either way, and the first claim that finds
    the campaign missing from the gate asks for it (``gate_rebuilding`` meanwhile)."""
    try:
        ensure_gate(rt, campaign_id)
    except GateUnavailable as error:
        log.warning("gate_load_deferred", campaign_id=campaign_id, error_type=str(error))


def ensure_gate(rt: Runtime, campaign_id: str, *, force: bool = False) -> bool:
    """Load what the gate is missing of a campaign from the store; True if it loaded.

    What the gate holds is left alone: reservations may be in flight against
    it. What it is missing (never loaded, or lost with a Redis restart or
    flush) is loaded from the store's truth: the campaign's counts and all
    its pools when the campaign's counts are gone (or ``force``), else only
    the missing pools. One process at a time does it (``begin_rebuild``).

    A reservation granted before the loss may still be committing, and the
    store does not show it yet. So on a shared gate, while a round of the
    campaign may be issuing, the lost part is closed (claims answer
    ``gate_rebuilding``) and the store read only after ``gate_fence_s``: by
    then every such reservation is committed or refused (the committer
    refuses a reservation older than ``claim_reservation_ttl_s``, and rolls
    back rather than COMMIT one that grew older meanwhile).
    """
    return bool(ensure_gates(rt, [campaign_id], force=force))


def ensure_gates(
    rt: Runtime,
    campaign_ids: Sequence[str],
    *,
    force: bool = False,
    sleep: Callable[[float], object] = time.sleep,
) -> list[str]:
    """``ensure_gate`` for many campaigns, with one fence for all of them; the ids loaded.

    Every lost campaign is closed first, then the fence is waited out once,
    then each is loaded: a Redis that lost everything costs one fence, not
    one per live campaign.
    """
    return load_closed(rt, close_all_lost(rt, campaign_ids, force=force), sleep=sleep)


@dataclass(frozen=True, slots=True)
class ClosedGate:
    """A campaign whose lost gate state is closed under its rebuild lock (claims
    answer ``gate_rebuilding``), waiting to be loaded from the store."""

    campaign_id: str
    token: str
    initial: list[tuple[str, str, str, int]]
    pools: frozenset[str]  # the pools to load
    whole: bool  # the campaign's per-person counts too
    # A round may be issuing on a shared gate: the store is read a fence after closed_at.
    fenced: bool
    closed_at: float  # monotonic s


def _close_lost(rt: Runtime, campaign_id: str, *, force: bool = False) -> ClosedGate | None:
    """Close what the gate lost of a campaign, under its rebuild lock; None when it
    lost nothing or another process is rebuilding it."""
    gate = rt.gate
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.campaigns.get_campaign(campaign_id)
        assert row is not None
        initial = uow.campaigns.stock_initial(campaign_id)
    pools = _pools(campaign_id, initial)
    if not force and gate.loaded(campaign_id, pools):  # the common case: one look
        return None
    whole = force or not gate.loaded(campaign_id, [])
    missing = pools if whole else [p for p in pools if not gate.loaded(campaign_id, [p])]
    token = gate.begin_rebuild(campaign_id, ttl_s=rt.settings.gate_fence_s + REBUILD_LOCK_MARGIN_S)
    if token is None:
        log.info("gate_rebuild_elsewhere", campaign_id=campaign_id)
        return None
    try:
        if whole:
            gate.forget(campaign_id, pools)
        else:
            for pool in missing:
                gate.reset_pool(pool, stock={}, claimed={})
    except BaseException:
        gate.end_rebuild(campaign_id, token)
        raise
    rounds = {pool_key(campaign_id, r, c): r for r, c, _t, _n in initial}
    return ClosedGate(
        campaign_id=campaign_id,
        token=token,
        initial=initial,
        pools=frozenset(missing),
        whole=whole,
        fenced=gate.shared and _may_be_issuing(rt, row, {rounds[p] for p in missing}),
        closed_at=time.monotonic(),
    )


def close_all_lost(
    rt: Runtime, campaign_ids: Sequence[str], *, force: bool = False
) -> list[ClosedGate]:
    """``_close_lost`` for each campaign; if one fails, the locks of those closed
    already are let go (they stay closed: their next claim asks again)."""
    closed: list[ClosedGate] = []
    try:
        for campaign_id in campaign_ids:
            found = _close_lost(rt, campaign_id, force=force)
            if found is not None:
                closed.append(found)
    except BaseException:
        _let_go(rt, closed)
        raise
    return closed


def load_closed(
    rt: Runtime, closed: Sequence[ClosedGate], *, sleep: Callable[[float], object] = time.sleep
) -> list[str]:
    """Load closed campaigns from the store, a fence after the last fenced one was
    closed, and let go of their locks; the ids loaded.

    A campaign that fails to load stays closed (its next claim asks again);
    the others are loaded all the same, and the first error is raised after.
    """
    loaded: list[str] = []
    failure: Exception | None = None
    try:
        fenced = [c for c in closed if c.fenced]
        if fenced:
            until = max(c.closed_at for c in fenced) + rt.settings.gate_fence_s
            wait_s = max(0.0, until - time.monotonic())
            log.warning(
                "gate_rebuild_fenced",
                campaigns=[c.campaign_id for c in fenced],
                wait_s=round(wait_s, 3),
            )
            sleep(wait_s)
        for c in closed:
            try:
                _load(rt, c.campaign_id, c.initial, set(c.pools), whole=c.whole)
            except Exception as error:
                log.error(
                    "gate_load_failed", campaign_id=c.campaign_id, error_type=type(error).__name__
                )
                failure = failure or error
                continue
            log.info("gate_loaded", campaign_id=c.campaign_id, pools=len(c.pools), whole=c.whole)
            loaded.append(c.campaign_id)
    finally:
        _let_go(rt, closed)
    for campaign_id in loaded:
        rt.campaign_changed(campaign_id)  # local sold-out flags may be stale now
    if failure is not None:
        raise failure
    return loaded


def _let_go(rt: Runtime, closed: Sequence[ClosedGate]) -> None:
    """End the rebuilds; a lock the gate cannot be told about expires on its own."""
    for c in closed:
        try:
            rt.gate.end_rebuild(c.campaign_id, c.token)
        except GateUnavailable as error:
            log.warning("gate_rebuild_unlock_failed", campaign_id=c.campaign_id, error=str(error))


def rebuild_gate(rt: Runtime, campaign_id: str, *, actor: str | None = None) -> bool:
    """Replace everything the gate holds of a campaign with the store's truth (fenced).

    With ``actor``, an operator's action: their role is checked and it is
    audited. False if another process is rebuilding it already.
    """
    if actor is not None:
        with rt.store.unit_of_work() as uow:
            require_operator_role(uow, actor, ROLES_THAT_OPERATE)
            if uow.campaigns.get_campaign(campaign_id) is None:
                raise NotFound("campaign_not_found", f"no campaign {campaign_id}")
            uow.ledger.append_audit(
                actor=actor,
                action="campaign.rebuild_gate",
                target=campaign_id,
                details={},
                now=rt.clock.now(),
            )
            uow.commit()
    return ensure_gate(rt, campaign_id, force=True)


def _may_be_issuing(rt: Runtime, row: CampaignRow, round_ids: set[str]) -> bool:
    if row.status not in (CampaignStatus.LIVE, CampaignStatus.PAUSED):
        return False
    now = rt.clock.now()
    late = timedelta(seconds=rt.settings.gate_fence_s)
    return any(
        row.rounds[r][0] <= now <= row.rounds[r][1] + late for r in round_ids if r in row.rounds
    )


def _load(
    rt: Runtime,
    campaign_id: str,
    initial: list[tuple[str, str, str, int]],
    pools: set[str],
    *,
    whole: bool,
) -> None:
    with rt.store.unit_of_work(readonly=True) as uow:
        issued = uow.campaigns.stock_issued(campaign_id)
        per_pool: dict[str, dict[str, int]] = defaultdict(dict)
        per_campaign: dict[str, int] = defaultdict(int)
        for round_id, channel_id, person_id, count in uow.vouchers.claim_counts(campaign_id):
            per_pool[pool_key(campaign_id, round_id, channel_id)][person_id] = count
            per_campaign[person_id] += count
    stock_by_pool: dict[str, dict[str, int]] = defaultdict(dict)
    for round_id, channel_id, template_id, count in initial:
        left = count - issued.get((round_id, channel_id, template_id), 0)
        assert left >= 0, "more vouchers issued than the stock held"
        stock_by_pool[pool_key(campaign_id, round_id, channel_id)][template_id] = left
    for pool, stock in stock_by_pool.items():
        if pool in pools:
            rt.gate.reset_pool(pool, stock=stock, claimed=per_pool.get(pool, {}))
    if whole:
        rt.gate.reset_campaign(campaign_id, claimed=per_campaign)  # marks it loaded, last


def ensure_gate_all(rt: Runtime, *, later: Callable[[list[ClosedGate]], None] | None = None) -> int:
    """Load what the gate misses of every campaign that can still issue; the count
    loaded (or, with ``later``, handed to it).

    With ``later`` (a process starting), what can be loaded at once is, and
    the campaigns that must wait out the fence are closed now and handed to
    ``later`` to load after one fence for all of them: the process listens
    meanwhile and claims for them answer ``gate_rebuilding``.
    """
    with rt.store.unit_of_work(readonly=True) as uow:
        rows = uow.campaigns.list_campaigns(
            statuses=(CampaignStatus.APPROVED, CampaignStatus.LIVE, CampaignStatus.PAUSED)
        )
    now = rt.clock.now()
    live = [row.id for row in rows if not _retired(rt, row, now)]
    if later is None:
        return len(ensure_gates(rt, live))
    closed = close_all_lost(rt, live)
    waiting = [c for c in closed if c.fenced]
    if waiting:
        later(waiting)
    return len(waiting) + len(load_closed(rt, [c for c in closed if not c.fenced]))


def _pools(campaign_id: str, initial: Sequence[tuple[str, str, str, int]]) -> list[str]:
    """The gate pools of a campaign's initial stock (round, channel, template, count)."""
    return sorted({pool_key(campaign_id, r, c) for r, c, _t, _n in initial})


# How long after its last round ends a campaign's gate state is let go, in fences:
# by then no reservation of it can still be pending (the fence, then the reaper).
RETIRE_AFTER_FENCES = 2


def _retired(rt: Runtime, row: CampaignRow, now: datetime) -> bool:
    """Every round of the campaign ended more than ``RETIRE_AFTER_FENCES`` fences ago."""
    after = timedelta(seconds=RETIRE_AFTER_FENCES * rt.settings.gate_fence_s)
    return bool(row.rounds) and all(ends_at + after <= now for _, ends_at in row.rounds.values())


def retire_gates(rt: Runtime) -> list[str]:
    """Let go of the gate state of campaigns whose every round has ended; their ids.

    Nothing can be claimed from them any more (a claim for an ended round is
    refused before the gate), and ``RETIRE_AFTER_FENCES`` fences after the
    last round's end every reservation they had is committed or refused,
    and settled or released. What the gate still holds is then only memory:
    the per-person counts, tens of megabytes of Redis for a million people.
    The store keeps the truth, and the gate is not loaded for them again.
    """
    now = rt.clock.now()
    with rt.store.unit_of_work(readonly=True) as uow:
        rows = uow.campaigns.list_campaigns(
            statuses=(
                CampaignStatus.APPROVED,
                CampaignStatus.LIVE,
                CampaignStatus.PAUSED,
                CampaignStatus.ENDED,
            )
        )
    gate = rt.gate
    # Asked of the gate first: a campaign retired already costs one look, no query.
    done = [row.id for row in rows if _retired(rt, row, now) and gate.loaded(row.id, [])]
    retired = []
    for campaign_id in done:
        with rt.store.unit_of_work(readonly=True) as uow:
            initial = uow.campaigns.stock_initial(campaign_id)
        token = gate.begin_rebuild(
            campaign_id, ttl_s=rt.settings.gate_fence_s + REBUILD_LOCK_MARGIN_S
        )
        if token is None:  # another process is loading or retiring it
            continue
        pools = _pools(campaign_id, initial)
        try:
            gate.forget(campaign_id, pools)
            # A draw nobody forgot after publishing it (its publisher died) goes too.
            for round_id in sorted({r for r, _c, _t, _n in initial}):
                gate.forget_draw(draw_id(campaign_id, round_id))
        finally:
            gate.end_rebuild(campaign_id, token)
        log.info("gate_retired", campaign_id=campaign_id, pools=len(pools))
        retired.append(campaign_id)
    return retired


@dataclass
class _Cached:
    row: CampaignRow
    loaded_at: float


class CampaignCache:
    """Campaigns as the claim path sees them: read from the store at most every ttl_s.

    Also keeps the local sold-out flags and the budget left, so the flood
    after a sell-out costs no round trip to the gate or the store.
    """

    def __init__(self, rt: Runtime, *, ttl_s: float, entries_max: int = 1000) -> None:
        self._rt = rt
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._lock = threading.Lock()
        self._rows: dict[str, _Cached] = {}
        self.sold_out: set[tuple[str, str]] = set()  # (pool, template_id)
        # Flags a fresh look forgave: the gate is asked once whether the stock came back
        # before such a pool's next claims are judged (a sold-out pool's flood would
        # otherwise reach the risk rules, and be counted, once per refresh).
        self.recheck: set[tuple[str, str]] = set()
        # campaign -> budget left when a claim did not fit: claims for vouchers
        # worth more are refused from memory; cheaper ones still go through.
        self.budget_room: dict[str, int] = {}
        # Bumped by every invalidate: a row read before an operator's change committed
        # is not kept after it (it would stay stale for a whole ttl).
        self._generation = 0
        rt.campaign_listeners.append(self.invalidate)

    def get(self, campaign_id: str, uow: UnitOfWork | None = None) -> CampaignRow | None:
        """The campaign, read again once ``ttl_s`` old; through ``uow`` when the caller
        is inside a transaction already (a second connection could wait on the
        caller's own write lock, or for a connection the caller's peers hold)."""
        now = time.monotonic()
        with self._lock:
            cached = self._rows.get(campaign_id)
            if cached is not None and now - cached.loaded_at < self._ttl_s:
                return cached.row
            generation = self._generation
        if uow is None:
            with self._rt.store.unit_of_work(readonly=True) as own:
                row = own.campaigns.get_campaign(campaign_id)
        else:
            row = uow.campaigns.get_campaign(campaign_id)
        with self._lock:
            if row is None:
                self._rows.pop(campaign_id, None)
                return None
            if generation != self._generation:
                return row  # read before a change this process made: answer, keep nothing
            if len(self._rows) >= self._entries_max:
                self._rows.clear()
            self._rows[campaign_id] = _Cached(row, now)
            # A fresh look at the store also forgives the local flags: stock may
            # have been released and budget returned by expiries since.
            self._forgive(campaign_id)
        return row

    def invalidate(self, campaign_id: str) -> None:
        """Forget a campaign an operator changed, and its local flags."""
        with self._lock:
            self._generation += 1
            self._rows.pop(campaign_id, None)
            self._forgive(campaign_id)

    def _forgive(self, campaign_id: str) -> None:
        """Drop a campaign's local flags (under the lock); its sold-out pools to recheck."""
        forgiven = {k for k in self.sold_out if k[0].startswith(campaign_id + ":")}
        if forgiven:
            self.sold_out = self.sold_out - forgiven
            self.recheck = self.recheck | forgiven
        self.budget_room.pop(campaign_id, None)
