"""Operators, channel and acquirer credentials, merchants and the blacklist.

Secrets are shown once, when created: operator tokens are stored only as a
SHA-256 digest, app secrets encrypted under the key ring (the signature
check needs them back).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
import secrets
import threading
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from lequan.domain.errors import AuthError, Conflict, InvalidInput, Unavailable
from lequan.domain.identity import normalize_id_number
from lequan.ports import DuplicateKey
from lequan.services.persons import validate_region
from lequan.services.runtime import Runtime

__all__ = [
    "AppCredentials",
    "AppSecrets",
    "add_app",
    "add_first_operator",
    "add_operator",
    "authenticate_operator",
    "blacklist_add",
    "blacklist_remove",
    "import_merchants",
    "require_role",
]

APP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{1,31}$")
# How long an app id the store did not know is answered "unknown" from memory.
UNKNOWN_APP_TTL_S = 2.0
# Signed requests whose app is being read from the store at once; more wait nowhere.
APP_LOOKUPS_WAITING_MAX = 256
OPERATOR_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")
ROLES = ("maker", "checker", "viewer", "analyst")
MERCHANT_COLUMNS = (
    "merchant_id",
    "name",
    "mcc",
    "region_code",
    "modes",
    "acquirer_id",
    "campaigns",
)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# The audit log's actor for the first operator of a store, added without a token.
BOOTSTRAP_ACTOR = "bootstrap"


def add_operator(rt: Runtime, operator_id: str, *, role: str, actor: str = "cli") -> str:
    """Create an operator account on behalf of ``actor``; returns its bearer token (shown
    once). The CLI names the operator its token authenticated; in-process seeding (the
    demo, tests) may leave the default."""
    return _add_operator(rt, operator_id, role=role, actor=actor, first=False)


def add_first_operator(rt: Runtime, operator_id: str, *, role: str) -> str:
    """Create the first operator of a store that has none, with no one to vouch for
    them (audited as ``bootstrap``); ``unauthenticated`` once any operator exists.

    Whoever can open the store (its files or its URL, and the key file) can do
    this once; every later operator is added with an operator's token.
    """
    return _add_operator(rt, operator_id, role=role, actor=BOOTSTRAP_ACTOR, first=True)


def _add_operator(rt: Runtime, operator_id: str, *, role: str, actor: str, first: bool) -> str:
    if not OPERATOR_ID.match(operator_id):
        raise InvalidInput("invalid_operator_id", "an operator id is 2-32 of a-z 0-9 . _ -")
    if role not in ROLES:
        raise InvalidInput("invalid_role", f"role must be one of {', '.join(ROLES)}")
    token = "lqo_" + secrets.token_urlsafe(32)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        if first and uow.people.any_operator():
            raise AuthError(
                "unauthenticated",
                "the store has operators: add one with an operator's token "
                "(--token-file PATH, LEQUAN_OPERATOR_TOKEN or --token)",
            )
        if uow.people.operator_role(operator_id) is not None:
            raise Conflict("operator_exists", f"operator {operator_id} already exists")
        try:
            uow.people.add_operator(
                operator_id=operator_id, role=role, token_hash=token_digest(token), now=now
            )
        except DuplicateKey:
            raise Conflict("operator_exists", f"operator {operator_id} already exists") from None
        uow.ledger.append_audit(
            actor=actor, action="operator.add", target=operator_id, details={"role": role}, now=now
        )
        uow.commit()
    return token


def authenticate_operator(rt: Runtime, token: str) -> tuple[str, str]:
    """(operator_id, role) for a bearer token, or AuthError."""
    with rt.store.unit_of_work(readonly=True) as uow:
        found = uow.people.operator_by_token_hash(token_digest(token))
    if found is None:
        raise AuthError("unauthenticated", "a valid operator token is required")
    return found


def require_role(role: str, roles: Collection[str]) -> None:
    """Refuse an operator whose role is not among ``roles`` (``forbidden``)."""
    if role not in roles:
        raise AuthError(
            "forbidden", f"a {role} cannot do this; it needs {' or '.join(sorted(roles))}"
        )


@dataclass(frozen=True, slots=True)
class AppCredentials:
    app_id: str
    kind: str
    name: str
    secret: str


def add_app(rt: Runtime, *, app_id: str, kind: str, name: str, actor: str) -> AppCredentials:
    """Register a channel or an acquirer; returns its signing secret (shown once)."""
    if kind not in ("channel", "acquirer"):
        raise InvalidInput("invalid_app_kind", "kind must be channel or acquirer")
    if not APP_ID.match(app_id):
        raise InvalidInput("invalid_app_id", "an app id is 2-32 of a-z 0-9 _ -")
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise InvalidInput("invalid_name", "a name is 1-100 printable characters")
    secret = "lqs_" + secrets.token_urlsafe(32)
    key_id, secret_enc = rt.keyring.encrypt("app_secret", secret)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        if uow.people.get_app(app_id) is not None:
            raise Conflict("app_exists", f"app {app_id} already exists")
        uow.people.add_app(
            app_id=app_id, kind=kind, name=name, key_id=key_id, secret_enc=secret_enc, now=now
        )
        uow.ledger.append_audit(
            actor=actor, action=f"{kind}.add", target=app_id, details={"name": name}, now=now
        )
        uow.commit()
    return AppCredentials(app_id, kind, name, secret)


class AppSecrets:
    """App id -> (kind, secret), decrypted once and kept in memory (bounded).

    Every signed request asks, before anything proves who sent it, so a
    caller can name any app id it likes. An id that cannot be an app's is
    refused from memory; one the store does not know is remembered as
    unknown for ``unknown_ttl_s`` (an app added meanwhile is known after
    that), so made-up ids cost one store read per id per ttl. The event loop
    asks ``cached`` and sends a miss to ``lookup``: the store is read on a
    thread of this cache's own, never on the loop, and never more than
    ``lookups_waiting_max`` at once (beyond, ``overloaded``).
    """

    def __init__(
        self,
        rt: Runtime,
        *,
        entries_max: int = 10_000,
        unknown_ttl_s: float = UNKNOWN_APP_TTL_S,
        lookups_waiting_max: int = APP_LOOKUPS_WAITING_MAX,
    ) -> None:
        self._rt = rt
        self._lock = threading.Lock()
        self._secrets: dict[str, tuple[str, str]] = {}
        self._unknown: dict[str, datetime] = {}  # app id -> when to ask the store again
        self._entries_max = entries_max
        self._unknown_ttl = timedelta(seconds=unknown_ttl_s)
        self._lookups_waiting_max = lookups_waiting_max
        self._lookups_waiting = 0
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lequan-apps")

    def cached(self, app_id: str) -> tuple[bool, tuple[str, str] | None]:
        """(whether memory answers, its answer): never reads the store."""
        if APP_ID.fullmatch(app_id) is None:
            return True, None
        with self._lock:
            found = self._secrets.get(app_id)
            if found is not None:
                return True, found
            until = self._unknown.get(app_id)
        if until is not None and self._rt.clock.now() < until:
            return True, None
        return False, None

    def get(self, app_id: str) -> tuple[str, str] | None:
        """The app's (kind, secret), from memory or else the store; None if there is
        no such active app."""
        known, found = self.cached(app_id)
        if known:
            return found
        with self._rt.store.unit_of_work(readonly=True) as uow:
            row = uow.people.get_app(app_id)
        if row is None or not row.active:
            until = self._rt.clock.now() + self._unknown_ttl
            with self._lock:
                if len(self._unknown) >= self._entries_max:
                    self._unknown.clear()
                self._unknown[app_id] = until
            return None
        secret = self._rt.keyring.decrypt("app_secret", row.secret_key_id, row.secret_enc)
        with self._lock:
            if len(self._secrets) >= self._entries_max:
                self._secrets.clear()
            self._secrets[app_id] = (row.kind, secret)
        return row.kind, secret

    async def lookup(self, app_id: str) -> tuple[str, str] | None:
        """``get`` for the event loop: a miss is read on this cache's own threads."""
        known, found = self.cached(app_id)
        if known:
            return found
        with self._lock:
            if self._lookups_waiting >= self._lookups_waiting_max:
                raise Unavailable(
                    "overloaded", "too many callers are being looked up", retry_after_s=1
                )
            self._lookups_waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, self.get, app_id)
        finally:
            with self._lock:
                self._lookups_waiting -= 1

    def close(self) -> None:
        self._readers.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class MerchantImport:
    imported: int


def import_merchants(rt: Runtime, text: str, *, actor: str) -> MerchantImport:
    """Import or update merchants from CSV; all rows or none, errors name the line.

    Bounded by ``merchant_file_bytes_max`` and ``merchant_file_rows_max``; every
    acquirer and campaign a row names must exist (an acquirer an active app of
    that kind), or the file is refused at that row's line.
    """
    settings = rt.settings
    size = len(text.encode("utf-8"))
    if size > settings.merchant_file_bytes_max:
        raise InvalidInput(
            "invalid_merchant_file",
            f"a merchant file is at most {settings.merchant_file_bytes_max} bytes",
        )
    rows = _merchant_rows(text, rows_max=settings.merchant_file_rows_max)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        # Asked once per id: a file names a handful of acquirers and campaigns.
        acquirers: dict[str, bool] = {}
        campaigns: dict[str, bool] = {}
        for record in rows:
            acquirer_id = record.acquirer_id
            if acquirer_id not in acquirers:
                app = uow.people.get_app(acquirer_id)
                acquirers[acquirer_id] = app is not None and app.active and app.kind == "acquirer"
            if not acquirers[acquirer_id]:
                raise _line_error(record.line, f"no acquirer {acquirer_id}")
            for campaign_id in record.campaign_ids:
                if campaign_id not in campaigns:
                    campaigns[campaign_id] = uow.campaigns.campaign_exists(campaign_id)
                if not campaigns[campaign_id]:
                    raise _line_error(record.line, f"no campaign {campaign_id}")
            uow.people.upsert_merchant(
                merchant_id=record.merchant_id,
                name=record.name,
                mcc=record.mcc,
                region_code=record.region_code,
                modes=record.modes,
                acquirer_id=record.acquirer_id,
                campaign_ids=record.campaign_ids,
                now=now,
            )
        uow.ledger.append_audit(
            actor=actor,
            action="merchant.import",
            target="merchants",
            details={"rows": len(rows)},
            now=now,
        )
        uow.commit()
    rt.merchants_changed()
    return MerchantImport(len(rows))


def _line_error(line: int, message: str) -> InvalidInput:
    return InvalidInput("invalid_merchant_file", f"line {line}: {message}", details={"line": line})


def _merchant_rows(text: str, *, rows_max: int) -> list[_MerchantRecord]:
    """The file's rows, each checked alone, with their line numbers."""
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames  # read here: the header line can break the format too
    except csv.Error:
        header = None
    if header is None or tuple(header) != MERCHANT_COLUMNS:
        raise _line_error(1, f"the header must be: {','.join(MERCHANT_COLUMNS)}")
    rows: list[_MerchantRecord] = []
    try:
        for row in reader:
            if len(rows) >= rows_max:
                raise InvalidInput("invalid_merchant_file", f"at most {rows_max} rows per file")
            rows.append(_merchant_row(row, line=reader.line_num))
    except InvalidInput as error:
        raise _line_error(reader.line_num, error.message) from None
    except csv.Error as error:
        raise _line_error(reader.line_num, str(error)) from None
    return rows


@dataclass(frozen=True, slots=True)
class _MerchantRecord:
    merchant_id: str
    name: str
    mcc: str
    region_code: str
    modes: list[str]
    acquirer_id: str
    campaign_ids: list[str]
    line: int


def _merchant_row(row: dict[str, str], *, line: int) -> _MerchantRecord:
    merchant_id = (row.get("merchant_id") or "").strip()
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", merchant_id):
        raise InvalidInput("invalid_merchant", "merchant_id is 1-64 of letters, digits, _ -")
    name = (row.get("name") or "").strip()
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise InvalidInput("invalid_merchant", "name is 1-100 printable characters")
    mcc = (row.get("mcc") or "").strip()
    if not re.match(r"^[0-9]{4}$", mcc):
        raise InvalidInput("invalid_merchant", "mcc is 4 digits")
    region = validate_region((row.get("region_code") or "").strip(), field="region_code")
    modes = [m.strip() for m in (row.get("modes") or "").split(";") if m.strip()]
    if not modes or not set(modes) <= {"online", "in_store"}:
        raise InvalidInput("invalid_merchant", "modes is online, in_store or both separated by ;")
    acquirer_id = (row.get("acquirer_id") or "").strip()
    if not APP_ID.match(acquirer_id):
        raise InvalidInput("invalid_merchant", "acquirer_id is an app id")
    campaigns = [c.strip() for c in (row.get("campaigns") or "").split(";") if c.strip()]
    assert region is not None
    return _MerchantRecord(merchant_id, name, mcc, region, modes, acquirer_id, campaigns, line)


def blacklist_add(rt: Runtime, *, id_number: str, reason: str, actor: str) -> bool:
    id_number = normalize_id_number(id_number)
    if not 1 <= len(reason) <= 200:
        raise InvalidInput("invalid_reason", "a reason is 1-200 characters")
    bidx = rt.keyring.blind_index("id_number", id_number)
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        added = uow.people.add_blacklist(bidx=bidx, reason=reason, created_by=actor, now=now)
        uow.ledger.append_audit(
            actor=actor,
            action="blacklist.add",
            target=bidx[:16],
            details={"reason": reason},
            now=now,
        )
        uow.commit()
    return added


def blacklist_remove(rt: Runtime, *, id_number: str, actor: str) -> bool:
    bidx = rt.keyring.blind_index("id_number", normalize_id_number(id_number))
    now = rt.clock.now()
    with rt.store.unit_of_work() as uow:
        removed = uow.people.remove_blacklist(bidx)
        uow.ledger.append_audit(
            actor=actor, action="blacklist.remove", target=bidx[:16], details={}, now=now
        )
        uow.commit()
    return removed


# The merchant file's parser, for the province's init (services/province.py), which
# checks and writes the rows itself so that merchants already there stay untouched.
MerchantRecord = _MerchantRecord
merchant_rows = _merchant_rows
line_error = _line_error
