"""The risk rules file: drafted by a maker, approved by a checker who did not draft it,
and swapped into every process without a restart.

A file is checked whole before anything is stored: an invalid one is refused
with each broken field's path (``invalid_risk_rules``) and the rules in force
stay. Versions only go up: a draft's ``version`` is above every version
drafted before, and the approved one becomes the active version, retiring
the one before it. Each process's ``RiskRulebook`` asks the store for the
active version at most every ``risk_rules_poll_s`` and, when it changed,
compiles the new rules and swaps them in with one reference assignment, so
a claim batch sees the old rules or the new ones, never half of each.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog
from pydantic import ValidationError

from lequan.config import Settings
from lequan.domain.error_codes import ErrorCode
from lequan.domain.errors import AuthError, Conflict, InvalidInput, LequanError, NotFound
from lequan.domain.redemption_risk import CompiledRedemptionRules, compile_redemption_rules
from lequan.domain.risk import CompiledClaimRules, RulesFile, compile_claim_rules
from lequan.ports import DuplicateKey, StoreError
from lequan.rows import RiskRulesRow
from lequan.services.background import Loop
from lequan.services.campaigns import CampaignFileLimits, load_yaml, require_operator_role
from lequan.services.runtime import Runtime

__all__ = [
    "ROLES_THAT_APPROVE_RULES",
    "ROLES_THAT_DRAFT_RULES",
    "ActiveRules",
    "RiskRulebook",
    "approve_rules",
    "draft_rules",
    "get_rules",
    "list_rules",
    "parse_rules",
    "redemption_rules_on",
    "rules_on",
]

log = structlog.get_logger(__name__)

# Analysts draft too (they see what the rules catch); only a checker approves, and never
# a version they drafted.
ROLES_THAT_DRAFT_RULES = frozenset({"maker", "checker", "analyst"})
ROLES_THAT_APPROVE_RULES = frozenset({"checker"})
# Versions ``list_rules`` shows at most.
VERSIONS_SHOWN_MAX = 100


def parse_rules(text: str | bytes, *, limits: CampaignFileLimits) -> RulesFile:
    """A rules file from its YAML, or InvalidInput naming every broken field by its path.

    Bounded as a campaign file is (``campaign_file_*`` settings).
    """
    data = load_yaml(text, limits=limits, what="rules file", code=ErrorCode.INVALID_RISK_RULES)
    try:
        return RulesFile.model_validate(data)
    except ValidationError as error:
        problems = [
            {"field": _path(e["loc"]), "rule": e["msg"].removeprefix("Value error, ")}
            for e in error.errors(include_url=False)
        ]
        summary = "; ".join(f"{p['field']}: {p['rule']}" for p in problems[:10])
        raise InvalidInput(
            ErrorCode.INVALID_RISK_RULES, summary, details={"errors": problems}
        ) from None


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(file)"


def draft_rules(rt: Runtime, text: str, *, actor: str) -> RiskRulesRow:
    """Store a valid rules file as a draft of its version, drafted by ``actor``."""
    rules = parse_rules(text, limits=CampaignFileLimits.of(rt.settings))
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_DRAFT_RULES)
        latest = uow.risk.latest_version()
        if latest is not None and rules.version <= latest:
            raise _version_taken(rules.version, latest)
        try:
            uow.risk.add_rules(version=rules.version, text=text, drafted_by=actor, now=now)
        except DuplicateKey:
            raise _version_taken(rules.version, rules.version) from None
        uow.ledger.append_audit(
            actor=actor,
            action="risk_rules.draft",
            target=str(rules.version),
            details={
                "claim_rules": rules_on(rules),
                "redemption_rules": redemption_rules_on(rules),
            },
            now=now,
        )
        row = uow.risk.get_rules(rules.version)
        uow.commit()
    assert row is not None
    return row


def _version_taken(version: int, latest: int) -> Conflict:
    return Conflict(
        ErrorCode.RISK_RULES_VERSION,
        f"version {version} is not above the latest version drafted ({latest})",
        details={"latest_version": latest},
    )


def rules_on(rules: RulesFile) -> list[str]:
    """The names of the claim rules a file turns on."""
    return [name for name in type(rules.claim).model_fields if getattr(rules.claim, name)]


def redemption_rules_on(rules: RulesFile) -> list[str]:
    """The names of the redemption rules a file turns on."""
    return rules.redemption.on


def approve_rules(rt: Runtime, version: int, *, actor: str) -> RiskRulesRow:
    """Make a drafted version the active one (a checker who did not draft it).

    The file is checked again first: a version this code cannot read is never
    put in force.
    """
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        require_operator_role(uow, actor, ROLES_THAT_APPROVE_RULES)
        row = uow.risk.get_rules(version)
        if row is None:
            raise NotFound(ErrorCode.RISK_RULES_NOT_FOUND, f"no version {version} of the rules")
        if row.drafted_by == actor:
            raise AuthError(
                ErrorCode.MAKER_CANNOT_APPROVE,
                "the operator who drafted a version of the rules cannot approve it",
            )
        active = uow.risk.active_version()
        if row.status != "draft" or (active is not None and version <= active):
            raise Conflict(
                ErrorCode.RISK_RULES_STATE,
                f"version {version} is {row.status}; only a draft above the active version "
                f"({active}) can be approved",
                details={"status": row.status, "active_version": active},
            )
        rules = parse_rules(row.text, limits=CampaignFileLimits.of(rt.settings))
        try:
            activated = uow.risk.activate_rules(version, approved_by=actor, now=now)
        except DuplicateKey:
            activated = False
        if not activated:
            raise Conflict(
                ErrorCode.RISK_RULES_STATE,
                f"version {version} was approved or retired meanwhile",
                details={"status": row.status, "active_version": active},
            )
        uow.ledger.append_audit(
            actor=actor,
            action="risk_rules.approve",
            target=str(version),
            details={
                "retired": active,
                "claim_rules": rules_on(rules),
                "redemption_rules": redemption_rules_on(rules),
            },
            now=now,
        )
        approved = uow.risk.get_rules(version)
        uow.commit()
    assert approved is not None
    return approved


def get_rules(rt: Runtime, version: int) -> RiskRulesRow:
    with rt.store.unit_of_work(readonly=True) as uow:
        row = uow.risk.get_rules(version)
    if row is None:
        raise NotFound(ErrorCode.RISK_RULES_NOT_FOUND, f"no version {version} of the rules")
    return row


def list_rules(rt: Runtime) -> list[RiskRulesRow]:
    """The versions, newest first (at most ``VERSIONS_SHOWN_MAX``)."""
    with rt.store.unit_of_work(readonly=True) as uow:
        return uow.risk.list_rules(limit=VERSIONS_SHOWN_MAX)


@dataclass(frozen=True, slots=True)
class ActiveRules:
    """The rules in force in this process: their version (None: none approved yet) and
    the compiled claim rules (None: no claim rule is on, and claims skip risk), and the
    redemption rules (None: none is on, and redemptions skip risk)."""

    version: int | None
    claim: CompiledClaimRules | None
    redemption: CompiledRedemptionRules | None = None


NO_RULES = ActiveRules(None, None)


class RiskRulebook:
    """The rules in force in this process, kept in step with the store's active version.

    ``current`` is one attribute read: the claim path never waits for the
    store. ``refresh`` asks the store (a background loop calls it every
    ``poll_s``; an approval in this process calls it at once) and swaps the
    compiled rules in whole. A version that fails to load keeps the rules
    in force and says so in the log.
    """

    def __init__(self, rt: Runtime, *, poll_s: float) -> None:
        self._rt = rt
        self._poll_s = poll_s
        self._limits = CampaignFileLimits.of(rt.settings)
        self._active = NO_RULES
        self._lock = threading.Lock()  # one refresh at a time
        self._loop = Loop(
            "lequan-risk-rules", self._step, first_pause_s=poll_s, retry_pause_s=poll_s
        )

    @classmethod
    def of(cls, rt: Runtime, settings: Settings) -> RiskRulebook:
        return cls(rt, poll_s=settings.risk_rules_poll_s)

    @property
    def current(self) -> ActiveRules:
        return self._active

    def refresh(self) -> ActiveRules:
        """Load the store's active version if it is not the one in force; the rules now."""
        with self._lock:
            with self._rt.store.unit_of_work(readonly=True) as uow:
                version = uow.risk.active_version()
                if version == self._active.version:
                    return self._active
                row = uow.risk.active_rules()
            if row is None:
                self._active = NO_RULES
                return self._active
            try:
                rules = parse_rules(row.text, limits=self._limits)
            except LequanError as error:
                log.error("risk_rules_unreadable", version=row.version, code=error.code)
                return self._active
            self._active = ActiveRules(
                row.version,
                compile_claim_rules(rules.claim),
                compile_redemption_rules(rules.redemption),
            )
            log.info("risk_rules_active", version=row.version)
            return self._active

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _step(self) -> float:
        started = time.monotonic()
        try:
            self.refresh()
        except StoreError as error:  # the store is down: keep the rules, ask again later
            log.warning("risk_rules_unchecked", error_type=type(error).__name__)
        return max(0.0, self._poll_s - (time.monotonic() - started))
