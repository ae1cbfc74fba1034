"""The ``lequan`` command: serve, migrate, demo, and the operator's tools.

Commands act on the store named by the settings (``LEQUAN_*``); creating
commands print what they created and take ``--json`` for scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from lequan.central.cli import central_app
from lequan.config import Settings
from lequan.domain.errors import LequanError

console = Console()
err = Console(stderr=True)


class _Commands(TyperGroup):
    """Turns lequan's expected errors into a clear line and exit status 2, never a traceback."""

    def invoke(self, ctx: Any) -> Any:  # Typer's vendored click Context; not public API
        try:
            return super().invoke(ctx)
        except LequanError as error:
            err.print(f"[bold red]error[/] [red]{error.code}[/]: {error.message}")
            problems = error.details.get("errors") if error.details else None
            if isinstance(problems, list):
                for problem in problems[:20]:
                    err.print(f"  • {problem.get('field')}: {problem.get('rule')}")
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Commands,
    name="lequan",
    help="lequan: government consumption vouchers — campaigns, flash claiming, redemption.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
campaign_app = typer.Typer(
    help="Campaigns: import, approve, open rounds, pause, end.", no_args_is_help=True
)
redemptions_app = typer.Typer(
    help="A campaign's redemption switch, apart from its claims (pause/resume).",
    no_args_is_help=True,
)
merchant_app = typer.Typer(
    help="Merchants: import, show, suspend, reinstate.", no_args_is_help=True
)
channel_app = typer.Typer(help="Channels (payment apps that issue vouchers).", no_args_is_help=True)
acquirer_app = typer.Typer(
    help="Acquirers (who redeem vouchers for merchants).", no_args_is_help=True
)
operator_app = typer.Typer(help="Operator accounts for the admin API.", no_args_is_help=True)
keys_app = typer.Typer(help="Field-encryption key files.", no_args_is_help=True)
outbox_app = typer.Typer(
    help="The outbox of facts delivered to the central platform.", no_args_is_help=True
)
app.add_typer(campaign_app, name="campaign")
campaign_app.add_typer(redemptions_app, name="redemptions")
app.add_typer(merchant_app, name="merchant")
app.add_typer(channel_app, name="channel")
app.add_typer(acquirer_app, name="acquirer")
app.add_typer(operator_app, name="operator")
app.add_typer(keys_app, name="keys")
fairness_app = typer.Typer(
    help="Rounds' fair starts: check a published draw against its commitment.",
    no_args_is_help=True,
)
app.add_typer(outbox_app, name="outbox")
app.add_typer(central_app, name="central")
app.add_typer(fairness_app, name="fairness")


@app.callback()
def _logs_to_stderr() -> None:
    """Every command logs to stderr, so that stdout (--json) carries its result alone."""
    from lequan.logging import configure_logging

    settings = Settings()
    configure_logging(json=settings.log_json, level=settings.log_level)


Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="LEQUAN_OPERATOR_TOKEN",
        show_envvar=True,
        help="The acting operator's API token; the audit names the operator it belongs to. "
        "Prefer the variable or --token-file: a command line is visible to other users.",
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="A file holding the acting operator's token, readable by its owner alone "
        "(chmod 600); used before --token and LEQUAN_OPERATOR_TOKEN.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
# A token is 48 characters; a file much larger than that is not a token file.
TOKEN_FILE_BYTES_MAX = 4096


def main() -> None:
    app()


def _runtime(*, create_keys: bool = True) -> Any:
    """The store and gate the command acts on, its schema current and its key ring the
    data's: the embedded store is migrated as ``serve`` does; any other store must have
    been (``lequan migrate``)."""
    from lequan.bootstrap import (
        SetupError,
        build_runtime,
        require_current_schema,
        require_matching_keys,
    )

    settings = Settings()
    if settings.embedded:
        _migrate_embedded(settings)
    rt = build_runtime(settings, create_keys=create_keys)
    try:
        require_current_schema(rt)
        require_matching_keys(rt)
    except SetupError:
        rt.store.dispose()
        raise
    return rt


def _runtime_as(token: str | None, token_file: Path | None, *roles: str) -> tuple[Any, str]:
    """The runtime, and the operator acting in it (``_acting``)."""
    rt = _runtime()
    return rt, _acting(rt, token, token_file, *roles)


def _acting(rt: Any, token: str | None, token_file: Path | None, *roles: str) -> str:
    """The operator the token authenticates, who must hold one of ``roles`` (any role if
    none is named): the audit log names them, not whoever the command line says."""
    from lequan.services import admin

    operator_id, role = admin.authenticate_operator(rt, _token(token, token_file))
    if roles:
        admin.require_role(role, roles)
    return operator_id


def _token(token: str | None, token_file: Path | None) -> str:
    from lequan.domain.errors import AuthError

    if token_file is None:
        if not token:
            raise AuthError(
                "unauthenticated",
                "this command acts as an operator: give their token with --token-file PATH, "
                "LEQUAN_OPERATOR_TOKEN or --token",
            )
        return token.strip()
    try:
        with token_file.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(TOKEN_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise AuthError(
            "unauthenticated", f"the token file {token_file} cannot be read: {error.strerror}"
        ) from None
    if mode & 0o077:
        raise AuthError(
            "unauthenticated",
            f"the token file {token_file} is open to others (mode {stat.S_IMODE(mode):04o}): "
            f"make it its owner's alone, chmod 600 {token_file}",
        )
    if len(data) > TOKEN_FILE_BYTES_MAX:
        raise AuthError("unauthenticated", f"the token file {token_file} holds no token")
    return data.decode("utf-8", errors="replace").strip()


def _migrate_embedded(settings: Settings) -> None:
    from lequan.bootstrap import migrate_store

    migrate_store(settings)


def _emit(data: dict[str, Any], as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        console.print(human)


@app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
    downgrade: Annotated[bool, typer.Option(help="Downgrade to the revision instead.")] = False,
) -> None:
    """Bring the store's schema to the current version (Alembic)."""
    from lequan.bootstrap import migrate_store

    now_at = migrate_store(Settings(), revision=revision, downgrade=downgrade)
    console.print(f"store at revision [bold]{now_at}[/]")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (Redis gate only).")] = None,
) -> None:
    """Run the platform (embedded default: SQLite + in-process gate, migrated on start)."""
    settings = Settings()
    workers = workers or settings.workers
    if workers == 1:  # one process: its own figures are the whole view
        _serve(settings, host=host, port=port, workers=1)
        return
    # Several: each worker writes its figures to files in one directory, so that any
    # worker's /metrics sums them all. Set before the workers start: prometheus-client
    # picks at import where a process keeps its figures (uvicorn spawns the workers,
    # fresh interpreters that inherit this environment).
    figures, made = _metrics_dir(settings)
    before = os.environ.get(_MULTIPROC_ENV)
    os.environ[_MULTIPROC_ENV] = str(figures)
    try:
        _serve(settings, host=host, port=port, workers=workers, figures=figures)
    finally:  # as it was: serve may be called in a process that goes on (tests)
        if before is None:
            del os.environ[_MULTIPROC_ENV]
        else:
            os.environ[_MULTIPROC_ENV] = before
        if made:
            shutil.rmtree(figures, ignore_errors=True)


_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # lequan.metrics.MULTIPROC_ENV


def _metrics_dir(settings: Settings) -> tuple[Path, bool]:
    """Where the workers write their figures, and whether it was made for this run."""
    if settings.metrics_dir is not None:
        return settings.metrics_dir, False
    return Path(tempfile.mkdtemp(prefix="lequan-metrics-")), True


def _serve(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    workers: int,
    figures: Path | None = None,
) -> None:
    import uvicorn

    from lequan.bootstrap import SetupError, check_store, load_keyring, require_durable_store
    from lequan.http.server import uvicorn_options
    from lequan.metrics import prepare_multiprocess_dir

    if figures is not None:
        prepare_multiprocess_dir(figures)  # a past run's workers must not count
    if workers > 1 and not settings.redis_url:
        raise SetupError(
            "more than one worker needs a shared claim gate: set LEQUAN_REDIS_URL "
            "(the in-process gate would sell the same stock once per worker)"
        )
    keyring = load_keyring(
        settings, create=True
    )  # refuses a missing or example key outside embedded
    if settings.embedded:
        _migrate_embedded(settings)
    check_store(settings, keyring)  # the schema current, the key file the data's
    require_durable_store(settings)  # once here, before any worker (each checks again)
    uvicorn.run(
        "lequan.http.asgi:create",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_level="warning",
        access_log=False,
        **uvicorn_options(settings),
    )


@app.command()
def demo(
    people: Annotated[
        int, typer.Option(help="Simulated people in the crowd.", min=10, max=100_000)
    ] = 3000,
    port: Annotated[int, typer.Option(help="Port to serve on (0: any free port).")] = 8000,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep serving after the crowd.")
    ] = True,
    as_json: JsonFlag = False,
    data_dir: Annotated[Path, typer.Option(help="Where the demo's store lives (wiped).")] = Path(
        "lequan-data/demo"
    ),
    trade_in: Annotated[
        bool,
        typer.Option(
            "--trade-in/--no-trade-in",
            help="Then the trade-in act: central and two provinces, each its own process.",
        ),
    ] = True,
    pace: Annotated[
        float,
        typer.Option(
            help="Replay the crowd over about this many seconds, to watch it on the big "
            "screen (0: as fast as it goes).",
            min=0,
            max=3600,
        ),
    ] = 0.0,
) -> None:
    """Run a real-shaped campaign end to end on the embedded default, then trade-in
    subsidies across a central platform and two provinces, then keep serving."""
    from lequan.demo import run_demo

    ok = run_demo(
        people=people,
        port=port,
        serve_after=serve_after,
        as_json=as_json,
        data_dir=data_dir,
        trade_in=trade_in,
        pace_s=pace,
    )
    if not ok:
        raise typer.Exit(1)


# -- campaigns ------------------------------------------------------------------------


def _campaign_summary(row: Any) -> dict[str, Any]:
    from lequan.http.routes.admin import campaign_view

    return campaign_view(row)


def _print_campaign(row: Any) -> None:
    table = Table(title=f"{row.id} — {row.config.name}", show_header=False)
    table.add_row("status", row.status.value)
    table.add_row("redemptions", "paused" if row.redemptions_paused else "open")
    table.add_row(
        "budget", f"{row.budget_fen / 100:,.2f} yuan ({row.committed_fen / 100:,.2f} committed)"
    )
    table.add_row("drafted by / approved by", f"{row.drafted_by} / {row.approved_by or '-'}")
    table.add_row("channels", ", ".join(row.config.channels))
    table.add_row("templates", ", ".join(t.id for t in row.config.templates))
    for round_id, (release_at, ends_at) in sorted(row.rounds.items()):
        table.add_row(f"round {round_id}", f"{release_at.isoformat()} → {ends_at.isoformat()}")
    console.print(table)


@campaign_app.command("import")
def campaign_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Import a campaign file as a draft (the maker)."""
    from lequan.services import campaigns

    config = campaigns.parse_campaign(file.read_bytes())
    rt, actor = _runtime_as(token, token_file)
    row = campaigns.import_campaign(rt, config, actor=actor)
    _emit(_campaign_summary(row), as_json, f"imported [bold]{row.id}[/] as draft")


def _lifecycle(action: str) -> Any:
    def command(
        campaign_id: str,
        token: Token = None,
        token_file: TokenFile = None,
        as_json: JsonFlag = False,
    ) -> None:
        from lequan.services import campaigns

        rt, actor = _runtime_as(token, token_file)
        row = campaigns.change_status(rt, campaign_id, action, actor=actor)
        _emit(_campaign_summary(row), as_json, f"{row.id} is now [bold]{row.status.value}[/]")

    command.__doc__ = f"{action.capitalize()} a campaign."
    return command


for _action in ("approve", "activate", "pause", "resume", "end"):
    campaign_app.command(_action)(_lifecycle(_action))


ReasonOption = Annotated[
    str | None,
    typer.Option("--reason", help="Why (1-200 characters), for the audit log."),
]


def _redemption_switch(paused: bool) -> Any:
    def command(
        campaign_id: str,
        reason: ReasonOption = None,
        token: Token = None,
        token_file: TokenFile = None,
        as_json: JsonFlag = False,
    ) -> None:
        from lequan.services import switches

        rt, actor = _runtime_as(token, token_file)
        act = switches.pause_redemptions if paused else switches.resume_redemptions
        row = act(rt, campaign_id, actor=actor, reason=reason)
        state = "paused" if row.redemptions_paused else "open"
        _emit(_campaign_summary(row), as_json, f"{row.id}: redemptions [bold]{state}[/]")

    command.__doc__ = (
        "Stop the spending of a campaign's vouchers (its claims are `campaign pause`)."
        if paused
        else "Let a campaign's vouchers be spent again."
    )
    return command


redemptions_app.command("pause")(_redemption_switch(True))
redemptions_app.command("resume")(_redemption_switch(False))


@campaign_app.command("start-round")
def campaign_start_round(
    campaign_id: str,
    round_id: str,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Open a round now (the campaign goes live if it was approved)."""
    from lequan.services import campaigns

    rt, actor = _runtime_as(token, token_file)
    row = campaigns.start_round(rt, campaign_id, round_id, actor=actor)
    _emit(_campaign_summary(row), as_json, f"round [bold]{round_id}[/] of {row.id} is open")


@campaign_app.command("rebuild-gate")
def campaign_rebuild_gate(
    campaign_id: str, token: Token = None, token_file: TokenFile = None
) -> None:
    """Reload a campaign's Redis claim gate from the store (fenced: waits out in-flight claims)."""
    from lequan.services import campaigns

    rt, actor = _runtime_as(token, token_file)
    if not rt.gate.shared:
        err.print(
            "[red]error[/] the embedded default keeps the gate inside the server process; "
            "restarting the server reloads it from the store"
        )
        raise typer.Exit(2)
    if campaigns.rebuild_gate(rt, campaign_id, actor=actor):
        console.print(f"the gate of [bold]{campaign_id}[/] is rebuilt from the store")
    else:
        err.print(f"another process is rebuilding the gate of {campaign_id}; nothing done")
        raise typer.Exit(1)


@campaign_app.command("show")
def campaign_show(campaign_id: str, as_json: JsonFlag = False) -> None:
    """Show one campaign."""
    from lequan.services import campaigns

    row = campaigns.get_campaign(_runtime(), campaign_id)
    if as_json:
        typer.echo(json.dumps(_campaign_summary(row), ensure_ascii=False, indent=2))
    else:
        _print_campaign(row)


@campaign_app.command("list")
def campaign_list() -> None:
    """List campaigns."""
    from lequan.services import campaigns

    table = Table("id", "name", "status", "redemptions", "budget (yuan)")
    for row in campaigns.list_campaigns(_runtime()):
        table.add_row(
            row.id,
            row.config.name,
            row.status.value,
            "paused" if row.redemptions_paused else "open",
            f"{row.budget_fen / 100:,.2f}",
        )
    console.print(table)


@campaign_app.command("check")
def campaign_check(campaign_id: str, as_json: JsonFlag = False) -> None:
    """Check a campaign's invariants against the store (exit 1 if any fails)."""
    from lequan.services.invariants import check_campaign

    result = check_campaign(_runtime(), campaign_id)
    data = {
        "campaign_id": campaign_id,
        "ok": result.ok,
        "problems": result.problems,
        "vouchers_by_state": result.vouchers_by_state,
        "balances": result.balances,
    }
    verdict = "[green]ok[/]" if result.ok else "[red]" + "; ".join(result.problems) + "[/]"
    _emit(data, as_json, f"{campaign_id}: {verdict}")
    if not result.ok:
        raise typer.Exit(1)


# -- the fair start ---------------------------------------------------------------------

# Entries asked of the public API per page, and at most in all (a draw's entries_max).
_ENTRIES_PAGE = 10_000
_ENTRIES_MAX = 50_000_000


@fairness_app.command("verify")
def fairness_verify(
    campaign_id: Annotated[str, typer.Option("--campaign", help="The campaign's id.")],
    round_id: Annotated[str, typer.Option("--round", help="The round's id.")],
    url: Annotated[
        str | None,
        typer.Option(help="The platform's public API; default http://LEQUAN_HOST:LEQUAN_PORT."),
    ] = None,
    ticket: Annotated[
        str | None, typer.Option(help="A claim's draw_ticket: show its rank and outcome.")
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="Per request, in seconds.")] = 30.0,
    as_json: JsonFlag = False,
) -> None:
    """Verify a round's published draw as anyone can: the seed opens the commitment and
    the ranks are the order the seed gives the tickets (exit 1 if not; docs/risk.md).

    Reads only the public API (no login), so a third party runs it as the platform does.
    """
    import httpx

    from lequan.domain.fair_start import PublishedEntry, verify

    settings = Settings()
    base = url or f"http://{settings.host}:{settings.port}"
    path = f"/v1/public/campaigns/{campaign_id}/rounds/{round_id}/fairness"
    with httpx.Client(base_url=base, timeout=timeout_s) as client:
        head = client.get(path)
        if head.status_code != 200:
            err.print(f"[red]{head.status_code}[/]: {head.text}")
            raise typer.Exit(1)
        fairness = head.json()
        if fairness["seed"] is None:
            err.print(
                f"the draw of {campaign_id}/{round_id} is not published yet; its commitment "
                f"is {fairness['commitment']} (window closes {fairness['window_closes_at']})"
            )
            raise typer.Exit(1)
        entries: list[PublishedEntry] = []
        after: int | None = 0
        while after is not None and len(entries) < _ENTRIES_MAX:
            page = client.get(
                f"{path}/entries", params={"after_rank": after, "limit": _ENTRIES_PAGE}
            )
            page.raise_for_status()
            body = page.json()
            entries.extend(
                PublishedEntry(e["rank"], e["ticket"], e["outcome"]) for e in body["items"]
            )
            after = body["next_after_rank"]
    problems = verify(
        campaign_id=campaign_id,
        round_id=round_id,
        window_s=fairness["start_window_s"],
        seed_hex=fairness["seed"],
        published_commitment=fairness["commitment"],
        entries=entries,
    )
    if fairness["entries"] != len(entries):
        problems.append(f"{fairness['entries']} entries announced, {len(entries)} listed")
    found = next((e for e in entries if e.ticket == ticket), None) if ticket else None
    data: dict[str, Any] = {
        "campaign_id": campaign_id,
        "round_id": round_id,
        "ok": not problems,
        "problems": problems,
        "entries": len(entries),
        "won": sum(1 for e in entries if e.outcome == "won"),
        "commitment": fairness["commitment"],
        "seed": fairness["seed"],
    }
    if ticket:
        data["ticket"] = None if found is None else {"rank": found.rank, "outcome": found.outcome}
    human = (
        f"{campaign_id}/{round_id}: [green]verified[/]: the seed opens the commitment and "
        f"the {len(entries):,} entries are in the order it gives ({data['won']:,} won)"
        if not problems
        else f"{campaign_id}/{round_id}: [red]" + "; ".join(problems) + "[/]"
    )
    if ticket:
        human += (
            f"\nticket {ticket}: not in the draw"
            if found is None
            else f"\nticket {ticket}: rank {found.rank:,}, {found.outcome}"
        )
    _emit(data, as_json, human)
    if problems:
        raise typer.Exit(1)


# -- the outbox and its relay ---------------------------------------------------------


@outbox_app.command("status")
def outbox_status(as_json: JsonFlag = False) -> None:
    """Events waiting for central, dead-lettered and delivered."""
    from lequan.services import relay

    counts = relay.backlog(_runtime())
    data = {"pending": counts.pending, "dead": counts.dead, "delivered": counts.delivered}
    _emit(
        data,
        as_json,
        f"pending {counts.pending:,} · dead {counts.dead:,} · delivered {counts.delivered:,}",
    )


@outbox_app.command("dead")
def outbox_dead(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    after: Annotated[str | None, typer.Option(help="List after this event id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The dead-lettered events: what central refused or never took, and why."""
    from lequan.services import relay
    from lequan.services.views import outbox_event_body

    rows = relay.dead_letters(_runtime(), after_id=after, limit=limit)
    items = [outbox_event_body(r) for r in rows]
    if as_json:
        typer.echo(json.dumps({"items": items}, ensure_ascii=False, indent=2))
        return
    table = Table("event", "topic", "voucher", "attempts", "last error")
    for item in items:
        table.add_row(
            str(item["event_id"]),
            str(item["topic"]),
            str(item["voucher_id"] or ""),
            str(item["attempts"]),
            str(item["last_error"] or ""),
        )
    console.print(table)


@outbox_app.command("replay")
def outbox_replay(
    event_ids: Annotated[list[str] | None, typer.Argument(help="Dead events to replay.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Every dead event.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 10_000,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Give dead events back to the relay (a maker or checker; audited)."""
    from lequan.services import relay

    if bool(event_ids) == replay_all:
        console.print("[red]name the events to replay, or give --all[/]")
        raise typer.Exit(2)
    rt, actor = _runtime_as(token, token_file, "maker", "checker")
    moved = relay.replay(rt, None if replay_all else event_ids, actor=actor, limit=limit)
    _emit({"replayed": moved}, as_json, f"{moved} event(s) back to the relay")


@app.command("reconcile")
def reconcile_day(
    day: Annotated[datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="The day (UTC+8).")],
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the mismatches to this CSV file.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare a day's trade-in facts with central's, per category and per voucher
    (exit 1 when they disagree)."""
    from lequan.services.reconcile import FACTS, reconcile

    result = reconcile(_runtime(), day.date())
    if csv_path is not None:
        csv_path.write_text(result.csv(), encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(result.as_json(), ensure_ascii=False, indent=2))
    else:
        table = Table("category", *FACTS)
        for row in result.as_json()["categories"]:
            cells = []
            for fact in FACTS:
                ours, theirs = row[fact]["province"], row[fact]["central"]
                mark = "" if ours == theirs else " [red]≠[/]"
                cells.append(f"{ours[0]} / {ours[1] / 100:,.2f}{mark}")
            table.add_row(row["category"], *cells)
        console.print(table)
        for m in result.mismatches:
            console.print(
                f"[red]{m.category} {m.fact}[/] {m.voucher_id or ''}: "
                f"province {m.province}, central {m.central}"
            )
        verdict = (
            "[green]clean[/]" if result.ok else f"[red]{len(result.mismatches)} mismatch(es)[/]"
        )
        console.print(f"{result.day}: {result.vouchers} voucher(s) compared, {verdict}")
    if not result.ok:
        raise typer.Exit(1)


@app.command("relay")
def relay_run() -> None:
    """Deliver the outbox to central until stopped (a worker process of its own; every
    API process connected to central also relays)."""
    import signal
    import threading

    from lequan.bootstrap import SetupError
    from lequan.services.relay import Relay

    rt = _runtime()
    if rt.central is None:
        raise SetupError("no central platform is configured: set LEQUAN_CENTRAL_URL and its keys")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    relay = Relay(rt, rt.central)
    relay.start()
    console.print("relaying the outbox to central; Ctrl-C stops")
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
        rt.store.dispose()


# -- merchants, apps, operators, keys ------------------------------------------------


@merchant_app.command("import")
def merchant_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Import or update merchants from CSV (a maker)."""
    from lequan.services import admin

    rt, actor = _runtime_as(token, token_file, "maker")
    result = admin.import_merchants(rt, file.read_text(encoding="utf-8"), actor=actor)
    _emit({"imported": result.imported}, as_json, f"imported {result.imported} merchants")


def _merchant_summary(row: Any) -> dict[str, Any]:
    from lequan.http.routes.admin import merchant_view

    return merchant_view(row)


def _merchant_line(row: Any) -> str:
    if row.suspension is None:
        return f"{row.id} ({row.name}) takes vouchers"
    s = row.suspension
    return (
        f"{row.id} ({row.name}) is [bold]suspended[/] since {s.suspended_at.isoformat()} "
        f"by {s.suspended_by}: {s.reason}"
    )


@merchant_app.command("show")
def merchant_show(merchant_id: str, as_json: JsonFlag = False) -> None:
    """Show one merchant, with its suspension if any."""
    from lequan.services import switches

    row = switches.get_merchant(_runtime(), merchant_id)
    _emit(_merchant_summary(row), as_json, _merchant_line(row))


def _merchant_switch(suspend: bool) -> Any:
    def command(
        merchant_id: str,
        reason: Annotated[
            str, typer.Option("--reason", help="Why (1-200 characters), for the audit log.")
        ],
        token: Token = None,
        token_file: TokenFile = None,
        as_json: JsonFlag = False,
    ) -> None:
        from lequan.services import switches

        rt, actor = _runtime_as(token, token_file)
        act = switches.suspend_merchant if suspend else switches.reinstate_merchant
        row = act(rt, merchant_id, reason=reason, actor=actor)
        _emit(_merchant_summary(row), as_json, _merchant_line(row))

    command.__doc__ = (
        "Suspend a merchant: its redemptions and captures are refused until reinstated "
        "(a merchant import does not reinstate it)."
        if suspend
        else "Lift a merchant's suspension."
    )
    return command


merchant_app.command("suspend")(_merchant_switch(True))
merchant_app.command("reinstate")(_merchant_switch(False))


def _add_app(kind: str) -> Any:
    def command(
        app_id: str,
        name: Annotated[str | None, typer.Option(help="Display name.")] = None,
        token: Token = None,
        token_file: TokenFile = None,
        as_json: JsonFlag = False,
    ) -> None:
        from lequan.services import admin

        rt, actor = _runtime_as(token, token_file, "maker")
        created = admin.add_app(rt, app_id=app_id, kind=kind, name=name or app_id, actor=actor)
        data = {
            "app_id": created.app_id,
            "kind": kind,
            "name": created.name,
            "secret": created.secret,
        }
        _emit(
            data,
            as_json,
            f"{kind} [bold]{created.app_id}[/] added\n  secret: [bold]{created.secret}[/]\n"
            "  (shown once: sign every request with it, see docs/api.md)",
        )

    command.__doc__ = f"Register a {kind} and print its signing secret, shown once (a maker)."
    return command


channel_app.command("add")(_add_app("channel"))
acquirer_app.command("add")(_add_app("acquirer"))


@operator_app.command("add")
def operator_add(
    operator_id: str,
    role: Annotated[str, typer.Option(help="maker, checker, viewer or analyst.")],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an operator account and print its API token (shown once).

    A maker's or a checker's token is needed, but for the first operator of a
    store that has none: whoever can open the store adds them (audited as
    ``bootstrap``).
    """
    from lequan.services import admin

    rt = _runtime()
    if token is None and token_file is None:
        created = admin.add_first_operator(rt, operator_id, role=role)
    else:
        actor = _acting(rt, token, token_file, "maker", "checker")
        created = admin.add_operator(rt, operator_id, role=role, actor=actor)
    _emit(
        {"operator_id": operator_id, "role": role, "token": created},
        as_json,
        f"operator [bold]{operator_id}[/] ({role})\n  token: [bold]{created}[/]",
    )


@keys_app.command("generate")
def keys_generate(path: Path) -> None:
    """Write a new key file (mode 0600); refuses to overwrite one."""
    from lequan.bootstrap import generate_keys

    active_key_id = generate_keys(path)
    console.print(f"wrote {path} (active key {active_key_id})")


@app.command()
def sweep() -> None:
    """Expire vouchers past validity and time out stale locks, once."""
    from lequan.services.sweeper import sweep as run_sweep

    report = run_sweep(_runtime())
    console.print(f"expired {report.expired}, locks timed out {report.locks_timed_out}")


# -- provinces ------------------------------------------------------------------------

province_app = typer.Typer(
    help="A province from one configuration file: init, serve (docs/operations.md).",
    no_args_is_help=True,
)
app.add_typer(province_app, name="province")
ProvinceFileArg = Annotated[
    Path, typer.Argument(help="The province's configuration file (YAML, see examples/provinces/).")
]


@province_app.command("check")
def province_check(file: ProvinceFileArg) -> None:
    """Check a province file and create nothing (exit 2 naming each broken field)."""
    from lequan.province_file import load_province_file

    province = load_province_file(file)
    config = province.config
    console.print(
        f"{file}: province [bold]{config.code}[/] {config.name} is valid "
        f"({len(config.channels)} channels, {len(config.acquirers)} acquirers, "
        f"{'central ' + config.central.url if config.central else 'no central'})"
    )


@province_app.command("init")
def province_init(file: ProvinceFileArg, as_json: JsonFlag = False) -> None:
    """Stand a province up from its file: data directory, keys, store, apps, merchants,
    first operator and the settings that serve it. Run again, it changes nothing."""
    from lequan.province import init_province

    report = init_province(file)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
        return
    table = Table(
        title=f"province {report.province_code} {report.province_name}", show_header=False
    )
    table.add_row("data directory", f"{report.data_dir} ({report.steps['data_dir']})")
    table.add_row("key file", report.steps["key_file"])
    table.add_row("store", f"{report.store}: {report.steps['store']}")
    for entry in report.apps:
        table.add_row(
            entry["kind"], f"{entry['app_id']} {entry['outcome']}, secret {entry['secret']}"
        )
    table.add_row(
        "merchants",
        f"{report.merchants.get('written', 0)} written, "
        f"{report.merchants.get('unchanged', 0)} unchanged",
    )
    table.add_row("first operator", report.steps["operator"])
    table.add_row("central", report.central or "none: consumption vouchers only")
    for name, path in report.files.items():
        table.add_row(f"{name} file", path)
    console.print(table)
    if report.changed:
        console.print(
            f"province {report.province_code} is ready: [bold]lequan province serve {file}[/]"
        )
    else:
        console.print(f"nothing changed: province {report.province_code} was already initialised")


@province_app.command("serve")
def province_serve(
    file: ProvinceFileArg,
    workers: Annotated[int | None, typer.Option(help="Worker processes (Redis gate only).")] = None,
) -> None:
    """Run the platform of the province the file names, with the settings init wrote."""
    from lequan.province import serve_env

    os.environ.update(serve_env(file))
    serve(host=None, port=None, workers=workers)


# -- risk control: the rules file, the review queue, the blacklists (docs/risk.md) -----

risk_app = typer.Typer(
    help="Risk control: the rules file (maker-checker) and the device and phone blacklists.",
    no_args_is_help=True,
)
rules_app = typer.Typer(help="The risk rules file's versions.", no_args_is_help=True)
risk_blacklist_app = typer.Typer(
    help="The device and phone blacklists (persons: `lequan` admin API /blacklist).",
    no_args_is_help=True,
)
review_app = typer.Typer(
    help="The review queue: claims a risk rule held, redemptions it flagged or whose "
    "payable it held, for an analyst to decide.",
    no_args_is_help=True,
)
sku_prices_app = typer.Typer(
    help="SKU baseline prices, for the rule price_above_sku_baseline (trade-in).",
    no_args_is_help=True,
)
app.add_typer(risk_app, name="risk")
risk_app.add_typer(rules_app, name="rules")
risk_app.add_typer(risk_blacklist_app, name="blacklist")
risk_app.add_typer(sku_prices_app, name="sku-prices")
app.add_typer(review_app, name="review")


def _rules_summary(rt: Any, row: Any) -> dict[str, Any]:
    from lequan.http.routes.risk import rules_view
    from lequan.services.campaigns import CampaignFileLimits

    return rules_view(row, CampaignFileLimits.of(rt.settings))


@rules_app.command("draft")
def risk_rules_draft(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Draft a version of the rules from a file (a maker, checker or analyst); an invalid
    file is refused whole, each broken field named."""
    from lequan.services import risk_rules

    text = file.read_text(encoding="utf-8")
    rt, actor = _runtime_as(token, token_file)
    row = risk_rules.draft_rules(rt, text, actor=actor)
    _emit(_rules_summary(rt, row), as_json, f"drafted version [bold]{row.version}[/]")


@rules_app.command("approve")
def risk_rules_approve(
    version: int,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Put a drafted version in force (a checker who did not draft it); every serving
    process swaps it in within LEQUAN_RISK_RULES_POLL_S, without a restart."""
    from lequan.services import risk_rules

    rt, actor = _runtime_as(token, token_file)
    row = risk_rules.approve_rules(rt, version, actor=actor)
    _emit(_rules_summary(rt, row), as_json, f"version [bold]{row.version}[/] is active")


@rules_app.command("list")
def risk_rules_list(as_json: JsonFlag = False) -> None:
    """The versions of the rules, newest first, and the one in force."""
    from lequan.services import risk_rules

    rt = _runtime()
    rows = [_rules_summary(rt, r) for r in risk_rules.list_rules(rt)]
    if as_json:
        typer.echo(json.dumps({"versions": rows}, ensure_ascii=False, indent=2))
        return
    table = Table(
        "version", "status", "drafted by", "approved by", "claim rules", "redemption rules"
    )
    for r in rows:
        table.add_row(
            str(r["version"]),
            r["status"],
            r["drafted_by"],
            r["approved_by"] or "",
            ", ".join(r["claim_rules"]) or "(none)",
            ", ".join(r["redemption_rules"]) or "(none)",
        )
    console.print(table)


@sku_prices_app.command("import")
def risk_sku_prices_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Import SKU baseline prices from CSV `sku,baseline_price_fen` (a maker, checker or
    analyst; audited); refused whole, naming the line, when a row is wrong."""
    from lequan.services import sku_prices

    text = file.read_text(encoding="utf-8")
    rt, actor = _runtime_as(token, token_file)
    result = sku_prices.import_sku_prices(rt, text, actor=actor)
    _emit({"imported": result.imported}, as_json, f"imported {result.imported} SKU prices")


@sku_prices_app.command("list")
def risk_sku_prices_list(
    after: Annotated[str | None, typer.Option(help="List after this SKU.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """The SKU baseline prices, by SKU."""
    from lequan.services import sku_prices

    rt, actor = _runtime_as(token, token_file)
    limit = min(limit, rt.settings.page_size_max)
    rows = sku_prices.list_sku_prices(rt, actor=actor, after=after, limit=limit)
    if as_json:
        items = [
            {
                "sku": r.sku,
                "baseline_price_fen": r.baseline_price_fen,
                "updated_by": r.updated_by,
                "updated_at": r.updated_at.isoformat(),
            }
            for r in rows
        ]
        typer.echo(json.dumps({"items": items}, ensure_ascii=False, indent=2))
        return
    table = Table("sku", "baseline (fen)", "by", "at")
    for r in rows:
        table.add_row(r.sku, str(r.baseline_price_fen), r.updated_by, r.updated_at.isoformat())
    console.print(table)


KindOption = Annotated[str, typer.Option("--kind", help="device or phone.")]


def _blacklist_kind(kind: str) -> str:
    if kind not in ("device", "phone"):
        err.print("[red]--kind is device or phone[/]")
        raise typer.Exit(2)
    return kind


@risk_blacklist_app.command("add")
def risk_blacklist_add(
    value: Annotated[str, typer.Argument(help="The device id, or the phone number.")],
    kind: KindOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (1-200 characters).")],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Blacklist a device or a phone (a maker, checker or analyst; audited)."""
    from lequan.services import reviews

    rt, actor = _runtime_as(token, token_file)
    added = reviews.blacklist_add(
        rt, kind=_blacklist_kind(kind), value=value, reason=reason, actor=actor
    )
    _emit({"added": added}, as_json, "added" if added else "on the list already")


@risk_blacklist_app.command("remove")
def risk_blacklist_remove(
    value: Annotated[str, typer.Argument(help="The device id, or the phone number.")],
    kind: KindOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (1-200 characters).")],
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """Take a device or a phone off its blacklist (audited)."""
    from lequan.services import reviews

    rt, actor = _runtime_as(token, token_file)
    removed = reviews.blacklist_remove(
        rt, kind=_blacklist_kind(kind), value=value, reason=reason, actor=actor
    )
    _emit({"removed": removed}, as_json, "removed" if removed else "was not on the list")


@risk_blacklist_app.command("list")
def risk_blacklist_list(
    kind: KindOption,
    after: Annotated[str | None, typer.Option(help="List after this value.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """One blacklist's entries (a phone's as its blind index)."""
    from lequan.services import reviews

    rt, actor = _runtime_as(token, token_file)
    rows = reviews.blacklist_list(
        rt, kind=_blacklist_kind(kind), actor=actor, after=after, limit=limit
    )
    items = [
        {
            "value": r.value,
            "reason": r.reason,
            "created_by": r.created_by,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]
    if as_json:
        typer.echo(json.dumps({"items": items}, ensure_ascii=False, indent=2))
        return
    table = Table(kind, "reason", "by", "at")
    for item in items:
        table.add_row(item["value"], item["reason"], item["created_by"], item["created_at"])
    console.print(table)


def _print_review(data: dict[str, Any]) -> None:
    table = Table(title=f"review {data['review_id']} ({data['kind']})", show_header=False)
    table.add_row("status", data["status"])
    table.add_row("created", data["created_at"])
    table.add_row("campaign / rules", f"{data['campaign_id']} / version {data['rules_version']}")
    subject = data["subject"]
    if data["kind"] == "claim":
        table.add_row(
            "claim",
            f"{subject['channel_id']} · {subject['channel_user_id']} · "
            f"{subject['round_id']} · {subject['template_id']}",
        )
        table.add_row("signals", json.dumps(subject.get("signals", {}), ensure_ascii=False))
    else:
        table.add_row(
            "redemption",
            f"{subject['redemption_id']} ({subject['moment']}) · {subject['merchant_id']} · "
            f"{subject['order_amount_fen']} fen, {subject['discount_fen']} off",
        )
        held = f"{subject['held_fen']} fen held" if subject["held_fen"] else "not held"
        if subject["merchant_suspended"]:
            held += "; merchant suspended"
        table.add_row("payable", held)
        table.add_row("signals", json.dumps(subject.get("signals", {}), ensure_ascii=False))
    for fired in data["reasons"]:
        figures = ", ".join(f"{k}={v}" for k, v in sorted(fired["figures"].items()))
        table.add_row(f"{fired['code']} ({fired['action']})", figures)
    if data["decided_by"]:
        table.add_row("decided", f"{data['decided_by']}: {data['decision_reason']}")
    if data["outcome"]:
        table.add_row("outcome", f"{data['outcome']} {data['outcome_detail'] or ''}")
    console.print(table)


@review_app.command("list")
def review_list(
    status: Annotated[str | None, typer.Option(help="pending, approved or rejected.")] = "pending",
    kind: Annotated[str | None, typer.Option(help="claim or redemption.")] = None,
    after: Annotated[str | None, typer.Option(help="List after this review id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """The review queue, oldest first (an analyst or a checker)."""
    from lequan.http.routes.risk import review_view
    from lequan.services import reviews

    if status not in (None, "pending", "approved", "rejected") or kind not in (
        None,
        "claim",
        "redemption",
    ):
        err.print("[red]--status is pending, approved or rejected; --kind claim or redemption[/]")
        raise typer.Exit(2)
    rt, actor = _runtime_as(token, token_file)
    limit = min(limit, rt.settings.page_size_max)
    rows = reviews.list_reviews(
        rt, actor=actor, status=status, kind=kind, after_id=after, limit=limit
    )
    items = [review_view(r) for r in rows]
    if as_json:
        typer.echo(json.dumps({"items": items}, ensure_ascii=False, indent=2))
        return
    table = Table("review", "kind", "status", "created", "campaign", "rules that fired")
    for item in items:
        table.add_row(
            item["review_id"],
            item["kind"],
            item["status"],
            item["created_at"],
            item["campaign_id"] or "",
            ", ".join(f["code"] for f in item["reasons"]),
        )
    console.print(table)


@review_app.command("show")
def review_show(
    review_id: str,
    token: Token = None,
    token_file: TokenFile = None,
    as_json: JsonFlag = False,
) -> None:
    """One review item: each rule that fired, with its figures."""
    from lequan.http.routes.risk import review_view
    from lequan.services import reviews

    rt, actor = _runtime_as(token, token_file)
    data = review_view(reviews.get_review(rt, review_id, actor=actor))
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        _print_review(data)


def _review_decision(approve: bool) -> Any:
    def command(
        review_id: str,
        reason: Annotated[str, typer.Option("--reason", help="Why (1-200 characters).")],
        token: Token = None,
        token_file: TokenFile = None,
        as_json: JsonFlag = False,
    ) -> None:
        from lequan.bootstrap import start_platform
        from lequan.http.routes.risk import review_view
        from lequan.services import reviews

        rt, actor = _runtime_as(token, token_file)
        if not approve:
            row = reviews.reject_review(rt, review_id, actor=actor, reason=reason)
        elif reviews.get_review(rt, review_id, actor=actor).kind == "redemption":
            # Releasing a held payable moves money in the store alone: no claim path.
            row = reviews.approve_review(rt, _NO_CLAIMS, review_id, actor=actor, reason=reason)
        else:
            # The held claim goes through the claim path: this process's own, its gate
            # rebuilt from the store (with Redis, the gate every server shares).
            platform = start_platform(rt, sweep=False, relay=False)
            try:
                row = reviews.approve_review(
                    rt, platform.claims, review_id, actor=actor, reason=reason
                )
            finally:
                platform.close()
        data = review_view(row)
        if as_json:
            typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
        else:
            _print_review(data)

    command.__doc__ = (
        "Approve a held claim: it is issued through the claim path, or refused as it would "
        "be now (sold out, claimed meanwhile); a redemption's held payable is released. The "
        "outcome is recorded (an analyst)."
        if approve
        else "Reject a held claim: it is refused for good; a redemption's payable, held or "
        "still owed, is clawed back to the budget (an analyst)."
    )
    return command


class _NoClaims:
    """The claim path a redemption's approval never takes."""

    def claim(self, channel_id: str, requests: list[Any]) -> list[Any]:
        raise AssertionError("a redemption's review issues no claim")


_NO_CLAIMS = _NoClaims()


review_app.command("approve")(_review_decision(True))
review_app.command("reject")(_review_decision(False))


if __name__ == "__main__":
    main()
