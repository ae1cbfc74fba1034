"""Standing a province up in its store: its channels and acquirers, its merchants and
its first operator, as its configuration file names them (``lequan province init``).

Idempotent, so that an operator can run it again after changing the file: an app
or operator already there is kept (its secret or token is not made again), a
merchant already there with the same fields is left alone, and a merchant row
with an empty ``campaigns`` column keeps the campaigns it was enrolled in since.
Whatever the store holds that the file contradicts (an app of the other kind,
another first operator) is refused before anything is written.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from lequan.domain.errors import AuthError, Conflict, InvalidInput
from lequan.services import admin
from lequan.services.runtime import Runtime

__all__ = ["AppPlan", "Outcome", "ProvinceSetup", "Provisioned", "provision"]

# The audit log's actor for what a province's file set up (the file's author, whom
# no token names: whoever can open the store and its key file).
PROVINCE_ACTOR = "province-init"


class Outcome(enum.StrEnum):
    CREATED = "created"
    KEPT = "kept"  # already there: left as it was


@dataclass(frozen=True, slots=True)
class AppPlan:
    app_id: str
    kind: str  # channel or acquirer
    name: str


@dataclass(frozen=True, slots=True)
class ProvinceSetup:
    """What the file asks of the store."""

    province_code: str
    apps: Sequence[AppPlan]
    operator_id: str
    operator_role: str
    merchants_csv: str | None  # None: no merchants file


@dataclass(frozen=True, slots=True)
class AppResult:
    app_id: str
    kind: str
    name: str
    outcome: Outcome
    secret: str | None  # only when created now: shown once


@dataclass
class Provisioned:
    apps: list[AppResult] = field(default_factory=list)
    operator_outcome: Outcome = Outcome.KEPT
    operator_token: str | None = None  # only when created now
    merchants_changed: int = 0
    merchants_unchanged: int = 0

    @property
    def changed(self) -> bool:
        return (
            self.operator_outcome is Outcome.CREATED
            or self.merchants_changed > 0
            or any(a.outcome is Outcome.CREATED for a in self.apps)
        )


def provision(rt: Runtime, setup: ProvinceSetup) -> Provisioned:
    """Bring the store to what ``setup`` names, creating only what is missing.

    The merchants file is checked whole (its format, every row in this province,
    every acquirer and campaign it names) before any merchant is written; the
    apps and the operator are each created in their own transaction, as the
    operator's commands do.
    """
    merchants = _merchant_records(rt, setup) if setup.merchants_csv is not None else []
    _refuse_contradictions(rt, setup)
    done = Provisioned()
    for plan in setup.apps:
        with rt.store.unit_of_work(readonly=True) as uow:
            there = uow.people.get_app(plan.app_id) is not None
        if there:
            done.apps.append(AppResult(plan.app_id, plan.kind, plan.name, Outcome.KEPT, None))
            continue
        created = admin.add_app(
            rt, app_id=plan.app_id, kind=plan.kind, name=plan.name, actor=PROVINCE_ACTOR
        )
        done.apps.append(
            AppResult(plan.app_id, plan.kind, plan.name, Outcome.CREATED, created.secret)
        )
    with rt.store.unit_of_work(readonly=True) as uow:
        operator_there = uow.people.operator_role(setup.operator_id) is not None
    if not operator_there:
        done.operator_token = admin.add_first_operator(
            rt, setup.operator_id, role=setup.operator_role
        )
        done.operator_outcome = Outcome.CREATED
    done.merchants_changed, done.merchants_unchanged = _upsert_merchants(rt, setup, merchants)
    return done


def _refuse_contradictions(rt: Runtime, setup: ProvinceSetup) -> None:
    with rt.store.unit_of_work(readonly=True) as uow:
        for plan in setup.apps:
            row = uow.people.get_app(plan.app_id)
            if row is not None and row.kind != plan.kind:
                raise Conflict(
                    "app_exists",
                    f"app {plan.app_id} is a {row.kind} in this store; the file names it "
                    f"a {plan.kind}",
                )
        if uow.people.operator_role(setup.operator_id) is None and uow.people.any_operator():
            raise AuthError(
                "unauthenticated",
                f"the store has operators and {setup.operator_id} is not one: add them "
                "with an operator's token (lequan operator add), or name an existing "
                "operator in the file",
            )


def _merchant_records(rt: Runtime, setup: ProvinceSetup) -> list[admin.MerchantRecord]:
    text = setup.merchants_csv
    assert text is not None
    settings = rt.settings
    if len(text.encode("utf-8")) > settings.merchant_file_bytes_max:
        raise InvalidInput(
            "invalid_merchant_file",
            f"a merchant file is at most {settings.merchant_file_bytes_max} bytes",
        )
    records = admin.merchant_rows(text, rows_max=settings.merchant_file_rows_max)
    acquirers = {p.app_id for p in setup.apps if p.kind == "acquirer"}
    prefix = setup.province_code[:2]
    with rt.store.unit_of_work(readonly=True) as uow:
        campaigns: dict[str, bool] = {}
        for record in records:
            if not record.region_code.startswith(prefix):
                raise admin.line_error(
                    record.line,
                    f"region_code {record.region_code} is not in province {setup.province_code}",
                )
            if record.acquirer_id not in acquirers:
                app = uow.people.get_app(record.acquirer_id)
                if app is None or app.kind != "acquirer" or not app.active:
                    raise admin.line_error(
                        record.line, f"no acquirer {record.acquirer_id} in the file or the store"
                    )
            for campaign_id in record.campaign_ids:
                if campaign_id not in campaigns:
                    campaigns[campaign_id] = uow.campaigns.campaign_exists(campaign_id)
                if not campaigns[campaign_id]:
                    raise admin.line_error(record.line, f"no campaign {campaign_id}")
    return records


def _upsert_merchants(
    rt: Runtime, setup: ProvinceSetup, records: Sequence[admin.MerchantRecord]
) -> tuple[int, int]:
    """(merchants written, merchants already as the file says), in one transaction."""
    if not records:
        return 0, 0
    now = rt.clock.now()
    changed = 0
    with rt.store.unit_of_work() as uow:
        for record in records:
            there = uow.people.get_merchant(record.merchant_id)
            # An empty campaigns column says nothing of enrolment: keep what is there.
            campaign_ids = (
                list(record.campaign_ids)
                if record.campaign_ids or there is None
                else sorted(there.enrolled_campaigns)
            )
            if there is not None and (
                there.name,
                there.mcc,
                there.region_code,
                there.modes,
                there.acquirer_id,
                there.enrolled_campaigns,
            ) == (
                record.name,
                record.mcc,
                record.region_code,
                frozenset(record.modes),
                record.acquirer_id,
                frozenset(campaign_ids),
            ):
                continue
            uow.people.upsert_merchant(
                merchant_id=record.merchant_id,
                name=record.name,
                mcc=record.mcc,
                region_code=record.region_code,
                modes=record.modes,
                acquirer_id=record.acquirer_id,
                campaign_ids=campaign_ids,
                now=now,
            )
            changed += 1
        if changed:
            uow.ledger.append_audit(
                actor=PROVINCE_ACTOR,
                action="merchant.import",
                target="merchants",
                details={"rows": changed, "province": setup.province_code},
                now=now,
            )
            uow.commit()
    if changed:
        rt.merchants_changed()
    return changed, len(records) - changed
