"""``python -m benchmarks``: the bench table, or ``simulate`` for a flash crowd.

The options and the printed output are those of ``lequan bench`` and
``lequan simulate`` before the lab left the product: the figures in
``docs/benchmarks.md`` stay comparable across the move.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lequan.config import Settings

console = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]

RUNS = 3
DURATION_S = 5.0

app = typer.Typer(
    name="benchmarks",
    help="lequan's lab: measure it against its baselines, or rehearse a flash crowd.",
    pretty_exceptions_enable=False,
)


def main() -> None:
    app()


@app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    runs: Annotated[
        int, typer.Option(help="Runs per scenario; the table shows medians.", min=1, max=9)
    ] = RUNS,
    duration_s: Annotated[
        float, typer.Option(help="Seconds per timed scenario.", min=1, max=60)
    ] = DURATION_S,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these scenarios (repeatable).")
    ] = None,
    postgres_url: Annotated[
        str,
        typer.Option(
            envvar="LEQUAN_TEST_POSTGRES_URL",
            help="A PostgreSQL server to create scratch databases on.",
        ),
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    redis_url: Annotated[
        str, typer.Option(envvar="LEQUAN_TEST_REDIS_URL", help="A Redis server.")
    ] = "redis://127.0.0.1:6379/0",
    as_json: JsonFlag = False,
) -> None:
    """Measure lequan and its baselines in one run on this machine; print a table.

    ``simulate`` runs a flash crowd instead (its own options follow it).
    """
    from lequan.logging import configure_logging

    # Logs go to stderr, so that stdout (--json) carries the result alone.
    settings = Settings()
    configure_logging(json=settings.log_json, level=settings.log_level)
    if ctx.invoked_subcommand is not None:
        # `--json simulate` would otherwise print a table: the bench's options are refused.
        if runs != RUNS or duration_s != DURATION_S or only or as_json:
            raise typer.BadParameter(
                f"the bench's options go without a command; {ctx.invoked_subcommand}'s go after it"
            )
        return
    from benchmarks.run import BenchConfig, machine, run_bench

    config = BenchConfig(
        runs=runs,
        duration_s=duration_s,
        postgres_url=postgres_url,
        redis_url=redis_url,
        only=frozenset(only or ()),
    )
    rows = run_bench(config, lambda message: err.print(f"[dim]{message}[/]"))
    info = machine(config)
    by_name = {row.name: row for row in rows}

    def ratio(row_name: str, base: str) -> float | None:
        row, baseline = by_name.get(row_name), by_name.get(base)
        if row is None or baseline is None or not baseline.median:
            return None
        return row.median / baseline.median

    def risk_ratio(row_name: str) -> float | None:
        """A row measured with every risk rule on, against the same with none."""
        if not row_name.endswith("_risk"):
            return None
        return ratio(row_name, row_name.removesuffix("_risk") + "_signals")

    def screen_ratio(row_name: str) -> float | None:
        """A row measured with the big screen open, against the same row without it."""
        if not row_name.endswith("_screen"):
            return None
        return ratio(row_name, row_name.removesuffix("_screen"))

    def window_ratio(row_name: str) -> float | None:
        """A path with a start window on, against the same path with it off."""
        if not row_name.endswith("_window"):
            return None
        return ratio(row_name, row_name.removesuffix("_window"))

    if as_json:
        typer.echo(
            json.dumps(
                {
                    "machine": info,
                    "runs": runs,
                    "rows": [
                        {
                            **row.as_dict(),
                            "vs_pg_hot_row": ratio(row.name, "baseline_pg_hot_row"),
                            "vs_bare_fastapi": ratio(row.name, "baseline_bare_fastapi"),
                            "vs_bare_asgi": ratio(row.name, "baseline_bare_asgi"),
                            "vs_without_screen": screen_ratio(row.name),
                            "vs_without_risk_rules": risk_ratio(row.name),
                            "vs_without_window": window_ratio(row.name),
                        }
                        for row in rows
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"lequan bench — median of {runs} run(s)")
    for column in (
        "scenario",
        "median",
        "unit",
        "p50 ms",
        "p99 ms",
        "×hot row",
        "×FastAPI",
        "×ASGI",
    ):
        table.add_column(
            column, justify="left" if column in ("scenario", "unit") else "right", no_wrap=True
        )

    def fmt(value: float | None, digits: int = 1) -> str:
        return "" if value is None else f"{value:,.{digits}f}"

    for row in rows:
        d = row.as_dict()
        table.add_row(
            row.name,
            f"{row.median:,.0f}",
            row.unit,
            fmt(d["p50_ms"]),
            fmt(d["p99_ms"]),
            fmt(ratio(row.name, "baseline_pg_hot_row"), 2),
            fmt(ratio(row.name, "baseline_bare_fastapi"), 2),
            fmt(ratio(row.name, "baseline_bare_asgi"), 2),
        )
    console.print(table, soft_wrap=True)
    for row in rows:
        console.print(
            f"  [bold]{row.name}[/]: {row.note}; runs {', '.join(f'{v:,.0f}' for v in row.values)}"
        )
    for row in rows:
        kept = screen_ratio(row.name)
        if kept is not None:
            console.print(
                f"  with the screen open, {row.name.removesuffix('_screen')} keeps "
                f"{kept:.1%} of its rate (same run)"
            )
    for row in rows:
        kept = risk_ratio(row.name)
        if kept is not None:
            console.print(
                f"  with every risk rule on, {row.name.removesuffix('_risk')} keeps "
                f"{kept:.1%} of its rate with none (same run, same signals)"
            )
        kept = window_ratio(row.name)
        if kept is not None:
            console.print(
                f"  with a start window, {row.name.removesuffix('_window')} keeps "
                f"{kept:.1%} of its rate (same run)"
            )
    console.print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))


@app.command()
def simulate(
    people: Annotated[
        int, typer.Option(help="Distinct people in the crowd.", min=10, max=2_000_000)
    ] = 1_000_000,
    stock: Annotated[int, typer.Option(help="Vouchers released.", min=1)] = 100_000,
    bot_share: Annotated[
        float, typer.Option(help="Share of people who are bots.", min=0, max=0.5)
    ] = 0.02,
    retry_share: Annotated[
        float, typer.Option(help="Share of people who retry.", min=0, max=1)
    ] = 0.05,
    database_url: Annotated[
        str, typer.Option(help="Empty: the embedded default in a scratch directory.")
    ] = "",
    redis_url: Annotated[str, typer.Option(help="Empty: the in-process gate.")] = "",
    workers: Annotated[
        int, typer.Option(help="API processes (more than one needs --redis-url).", min=1, max=64)
    ] = 1,
    gate_buckets: Annotated[
        int, typer.Option(help="Buckets per pool in the Redis gate.", min=1, max=1024)
    ] = 1,
    # Issue 16's adversaries: each on by default, 0 switches one off.
    farm_identities: Annotated[
        int, typer.Option(help="Scalper farm: identities (0: no farm).", min=0, max=100_000)
    ] = 500,
    farm_devices: Annotated[
        int, typer.Option(help="Scalper farm: devices they share.", min=1, max=1000)
    ] = 5,
    farm_ips: Annotated[
        int, typer.Option(help="Scalper farm: addresses, all in one /24.", min=1, max=200)
    ] = 3,
    spoofer_share: Annotated[
        float, typer.Option(help="Share of people spoofing a Shanghai location.", min=0, max=0.2)
    ] = 0.002,
    ring_people: Annotated[
        int, typer.Option(help="Colluding ring: accounts (0: no ring).", min=0, max=100_000)
    ] = 300,
    ring_merchants: Annotated[
        int, typer.Option(help="Colluding ring: merchants of theirs.", min=1, max=100)
    ] = 3,
    ring_payers: Annotated[
        int, typer.Option(help="Colluding ring: payer tokens they pay with.", min=1, max=100)
    ] = 3,
    redeem_share: Annotated[
        float,
        typer.Option(
            help="Share of vouchers spent after the sale (the ring spends all).", min=0, max=1
        ),
    ] = 0.1,
    redemptions_max: Annotated[
        int, typer.Option(help="Orders planned after the sale, at most.", min=0, max=1_000_000)
    ] = 20_000,
    device_limit: Annotated[
        int,
        typer.Option(
            help="What one farm device may win: the risk rules' identities per device "
            "(0: the limit of --rules' identities_per_device, 1 without that rule).",
            min=0,
            max=100,
        ),
    ] = 0,
    flag_wait_s: Annotated[
        float,
        typer.Option(help="Seconds the review queue is read after the last order.", min=0, max=600),
    ] = 2.0,
    rules: Annotated[
        str,
        typer.Option(
            help="The risk rules file put in force before the release (empty: every rule off)."
        ),
    ] = "examples/risk-rules.yaml",
    require_targets: Annotated[
        bool, typer.Option("--require-targets", help="Exit 1 when an issue 16 target fails.")
    ] = False,
    start_window_s: Annotated[
        int,
        typer.Option(help="The round's fair-start window (docs/risk.md); 0: off.", min=0, max=30),
    ] = 0,
    start_window_intake_s: Annotated[
        int,
        typer.Option(
            help="How long after the window its draw takes in claims pressed inside it; "
            "the channels then stamp pressed_at and ask for answers at once. 0: off.",
            min=0,
            max=300,
        ),
    ] = 0,
    as_json: JsonFlag = False,
) -> None:
    """A flash crowd against a real lequan server; then the store is checked (exit 1 if broken)."""
    if workers > 1 and not redis_url:
        raise typer.BadParameter("many processes need a shared gate: give --redis-url too")
    from benchmarks.adversaries import AdversaryConfig
    from benchmarks.simulate import SimulationConfig
    from benchmarks.simulate import simulate as run_simulation

    adversaries = AdversaryConfig(
        farm_identities=farm_identities,
        farm_devices=farm_devices,
        farm_ips=farm_ips,
        spoofer_share=spoofer_share,
        ring_people=ring_people,
        ring_merchants=ring_merchants,
        ring_payers=ring_payers,
        redeem_share=redeem_share,
        redemptions_max=redemptions_max,
        device_limit=device_limit or _identities_per_device(Path(rules) if rules else None),
        flag_wait_s=flag_wait_s,
    )
    if adversaries.adversaries(people, bot_share) > people // 2:
        raise typer.BadParameter(
            "bots, farm, spoofers and ring together may be at most half the people"
        )

    summary = run_simulation(
        SimulationConfig(
            people=people,
            stock=stock,
            bot_share=bot_share,
            retry_share=retry_share,
            database_url=database_url,
            redis_url=redis_url,
            workers=workers,
            gate_buckets=gate_buckets,
            adversaries=adversaries,
            rules_file=Path(rules) if rules else None,
            start_window_s=start_window_s,
            start_window_intake_s=start_window_intake_s,
        ),
        lambda message: err.print(f"[dim]{message}[/]"),
    )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        table = Table(title=f"{people:,} people, {stock:,} vouchers", show_header=False)
        for key in (
            "issued",
            "oversold",
            "duplicates",
            "acknowledged_missing",
            "sold_out_after_s",
            "elapsed_s",
            "answered_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "bot_people_share",
            "bot_voucher_share",
            "start_window_entries",
            "invariants_ok",
        ):
            if key in summary:
                table.add_row(key, str(summary[key]))
        console.print(table)
        outcomes = Table(
            "outcome", "answers", "p50 ms", "p95 ms", "p99 ms", title="answers by outcome"
        )
        for outcome, count in sorted(summary["outcomes"].items(), key=lambda kv: -kv[1]):
            lat = summary["latency_ms_by_outcome"][outcome]
            outcomes.add_row(
                outcome, f"{count:,}", str(lat["p50"]), str(lat["p95"]), str(lat["p99"])
            )
        console.print(outcomes)
        _print_risk(summary)
    if not summary["invariants_ok"]:
        raise typer.Exit(1)
    if require_targets and not summary["targets_met"]:
        raise typer.Exit(1)


def _print_risk(summary: dict[str, Any]) -> None:
    """Issue 16's report: each kind of person, then the targets, pass or fail."""
    risk = summary["risk"]
    kinds = risk["kinds"]
    table = Table("", *kinds, title="what the risk controls did, by kind of person")

    def count(value: int) -> str:
        return f"{value:,}"

    def share(value: float | None) -> str:
        return "" if value is None else f"{value:.2%}"

    lines: tuple[tuple[str, str, Any], ...] = (
        ("people", "people", count),
        ("vouchers won", "vouchers_won", count),
        ("vouchers redeemed", "vouchers_redeemed", count),
        ("claims refused", "claims_refused", count),
        ("claims held", "claims_held", count),
        ("people refused or held", "people_refused_or_held_share", share),
        ("orders", "redemption_attempts", count),
        ("orders through", "redemptions", count),
        ("orders flagged", "redemptions_flagged", count),
    )
    for label, key, render in lines:
        table.add_row(label, *(render(row[key]) for row in kinds.values()))
    table.add_row(
        "orders refused by risk",
        *(count(sum(row["redemptions_stopped"].values())) for row in kinds.values()),
    )
    console.print(table)
    for kind, row in risk["kinds"].items():
        if row["claims_refused_by_reason"]:
            reasons = ", ".join(f"{k} {v:,}" for k, v in row["claims_refused_by_reason"].items())
            console.print(f"  {kind}: claims refused by {reasons}")
    ring = risk["kinds"]["ring"]
    console.print(
        f"  ring: {ring['fake_order_attempts']:,} fake orders, {ring['fake_redemptions']:,} "
        f"went through ({ring['fake_redemptions_stored']:,} in the store), "
        f"{ring['fake_orders_caught']:,} caught, {ring['refunds']:,} refunds"
    )
    for name in ("claim_flags", "redemption_flags"):
        flags = risk[name]
        console.print(
            f"  {name}: precision {flags['precision']}, recall {flags['recall']} "
            f"(tp {flags['tp']}, fp {flags['fp']}, fn {flags['fn']}, tn {flags['tn']}; "
            f"over {flags['over']})"
        )
    console.print(
        f"  orders: {risk['redemption_phase_s']} s from "
        f"{risk['redemption_phase_started_at']} (the server's clock stamps them); "
        f"review queue: {risk['redemption_flags']['review_queue']}"
    )
    marks = {"pass": "[green]pass[/]", "fail": "[red]fail[/]", "n/a": "[dim]n/a[/]"}
    for target in summary["targets"]:
        console.print(
            f"  target {target['name']}: {marks[target['status']]} — {target['value']} "
            f"{target['comparison']} {target['limit']} ({target['note']})"
        )


def _identities_per_device(rules: Path | None) -> int:
    """The identities one device may claim for under the rules file: what a scalper
    farm's device may win (1 with no such rule: one voucher per device)."""
    if rules is None:
        return 1
    from lequan.services.campaigns import CampaignFileLimits
    from lequan.services.risk_rules import parse_rules

    parsed = parse_rules(rules.read_bytes(), limits=CampaignFileLimits.of(Settings()))
    rule = parsed.claim.identities_per_device
    return 1 if rule is None else rule.limit
