"""``lequan central``: run the national platform and its operator's tools.

Commands act on the store named by ``LEQUAN_CENTRAL_*`` (SQLite in
``lequan-data/central`` by default). ``serve`` runs central in its own
process; ``province add`` prints a province's credentials as JSON for its
config file.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from lequan.domain.errors import Conflict, InvalidInput

__all__ = ["central_app"]

central_app = typer.Typer(
    help="The central (national) platform of trade-in qualifications.", no_args_is_help=True
)
province_app = typer.Typer(help="Provinces that call central.", no_args_is_help=True)
qualification_app = typer.Typer(
    help="A person's qualification in a category (by national pseudonym).", no_args_is_help=True
)
central_app.add_typer(province_app, name="province")
central_app.add_typer(qualification_app, name="qualification")

_PROVINCE_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{1,31}")

Operator = Annotated[str, typer.Option("--by", help="Who acts (recorded with a revocation).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (1-200 characters).")]


def _settings() -> Any:
    from lequan.central.config import CentralSettings

    return CentralSettings()


def _central() -> Any:
    """Central's service over its store: migrated first on the SQLite default, as
    ``serve`` does; any other store must have been (``lequan central migrate``)."""
    from lequan.central.bootstrap import build_central, migrate_central

    settings = _settings()
    if not settings.database_url:
        migrate_central(settings)
    return build_central(settings)


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


@central_app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Run central (SQLite default: migrated on start; its keys made on first start)."""
    import uvicorn

    from lequan.central.bootstrap import CentralSetupError, build_central, migrate_central
    from lequan.http.server import BoundedHttpTools

    settings = _settings()
    workers = workers or settings.workers
    if workers > 1 and not settings.redis_url:
        raise CentralSetupError(
            "more than one worker needs shared nonces: set LEQUAN_CENTRAL_REDIS_URL "
            "(each worker's own would let a replayed call through another)"
        )
    if not settings.database_url:
        migrate_central(settings)
    build_central(settings).close()  # the key file, the schema and the OPRF key, once
    uvicorn.run(
        "lequan.central.http.asgi:create",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="warning",
        access_log=False,
        http=BoundedHttpTools,
        timeout_keep_alive=settings.http_keep_alive_s,
        limit_concurrency=settings.http_connections_max,
    )


@central_app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    downgrade: Annotated[bool, typer.Option(help="Downgrade to the revision instead.")] = False,
) -> None:
    """Bring central's store to the current schema (its own version table)."""
    from lequan.central.bootstrap import migrate_central

    at = migrate_central(_settings(), revision=revision, downgrade=downgrade)
    typer.echo(f"central's store at revision {at}")


@central_app.command()
def status() -> None:
    """Central's store: revision, provinces, locks by state, serials, events waiting."""
    from lequan.central.bootstrap import migrate_central

    settings = _settings()
    central = _central()
    try:
        counts = dict(central.service.store.counts())
        _echo(
            {
                "revision": migrate_central(settings) if not settings.database_url else None,
                "public_key": central.service.key.public_key_hex,
                "province_codes": [row.code for row in central.service.store.provinces()],
                **counts,
            }
        )
    finally:
        central.close()


@province_app.command("add")
def province_add(
    code: str,
    url: Annotated[
        str | None, typer.Option(help="Central's URL as provinces reach it (printed back).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON (the only output; accepted as the docs write it).")
    ] = True,
) -> None:
    """Register a province; prints its app id, secret and central's public key as JSON."""
    from lequan.central.ports import ProvinceRow
    from lequan.ports.errors import DuplicateKey

    if not _PROVINCE_CODE.fullmatch(code):
        raise InvalidInput(
            "central_invalid_province_code", "a province code is 2-32 of a-z 0-9 _ -"
        )
    central = _central()
    try:
        settings = central.settings
        row = ProvinceRow(
            code=code,
            app_id=f"province-{code}",
            secret=secrets.token_urlsafe(32),
            created_at=datetime.now(UTC),
        )
        try:
            central.service.store.add_province(row)
        except DuplicateKey:
            raise Conflict(
                "central_province_exists", f"central already has a province {code!r}"
            ) from None
        _echo(
            {
                "province": code,
                "central_url": url or f"http://{settings.host}:{settings.port}",
                "app_id": row.app_id,
                "secret": row.secret,
                "public_key": central.service.key.public_key_hex,
            }
        )
    finally:
        central.close()


@province_app.command("list")
def province_list() -> None:
    """The provinces registered, without their secrets."""
    central = _central()
    try:
        _echo(
            [
                {
                    "province": row.code,
                    "app_id": row.app_id,
                    "created_at": row.created_at.isoformat(),
                }
                for row in central.service.store.provinces()
            ]
        )
    finally:
        central.close()


@qualification_app.command("revoke")
def qualification_revoke(
    pseudonym: str, category: str, reason: Reason = "fraud", by: Operator = "operator"
) -> None:
    """Revoke a qualification (fraud): no province may lock it; unused slots revoked."""
    central = _central()
    try:
        locks = central.service.revoke(pseudonym, category, reason=reason, by=by)
        _echo({"pseudonym": pseudonym, "category": category, "revoked_locks": locks})
    finally:
        central.close()


@qualification_app.command("unrevoke")
def qualification_unrevoke(pseudonym: str, category: str) -> None:
    """Lift a revocation (its revoked locks stay revoked; new locks may be taken)."""
    central = _central()
    try:
        lifted = central.service.unrevoke(pseudonym, category)
        _echo({"pseudonym": pseudonym, "category": category, "lifted": lifted})
    finally:
        central.close()


@qualification_app.command("move")
def qualification_move(
    pseudonym: str,
    category: str,
    from_province: Annotated[str, typer.Option("--from", help="The province holding the slot.")],
    reason: Reason = "moved province",
) -> None:
    """变更资格: release the unused slots a province holds of a person's qualification,
    so another province may lock it."""
    central = _central()
    try:
        locks = central.service.move(
            pseudonym, category, from_province=from_province, reason=reason
        )
        _echo({"pseudonym": pseudonym, "category": category, "released_locks": locks})
    finally:
        central.close()


@qualification_app.command("show")
def qualification_show(pseudonym: str, category: str) -> None:
    """The live locks of a qualification."""
    central = _central()
    try:
        rows = central.service.store.live_locks_of(pseudonym, category, central.service.clock.now())
        _echo(
            [
                {
                    "lock_id": row.lock_id,
                    "province": row.province,
                    "state": str(row.state),
                    "voucher_id": row.voucher_id,
                    "expires_at": row.expires_at.isoformat() if row.expires_at else None,
                }
                for row in rows
            ]
        )
    finally:
        central.close()
