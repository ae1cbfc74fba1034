"""The operator's commands for what is owed to central: the outbox's backlog and
dead letters, replaying them (an operator's act, audited), the relay worker
and the reconciliation, refused clearly where no central is configured."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from lequan.bootstrap import build_runtime
from lequan.cli import app
from lequan.config import Settings
from tests.system.test_cli import _token_file, data_dir, run  # noqa: F401  # fixture

runner = CliRunner()
T0 = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def _outbox(directory: Path) -> None:
    """Three events written, one delivered, one dead, as a relay would have left them."""
    rt = build_runtime(Settings(data_dir=directory))
    try:
        with rt.store.unit_of_work() as uow:
            uow.ledger.add_outbox_many(
                [(f"e{n}", "redemption.completed", {"voucher_id": f"v{n}"}) for n in range(3)],
                now=T0,
            )
            uow.outbox.mark_delivered(["e0"], now=T0)
            uow.outbox.mark_dead([("e1", "rejected: unknown_lock")], now=T0)
            uow.commit()
    finally:
        rt.store.dispose()


def test_an_operator_sees_the_backlog_and_replays_a_dead_event(data_dir: Path) -> None:  # noqa: F811
    _outbox(data_dir)
    assert json.loads(run("outbox", "status", "--json")) == {
        "pending": 1,
        "dead": 1,
        "delivered": 1,
    }
    (dead,) = json.loads(run("outbox", "dead", "--json"))["items"]
    assert (dead["event_id"], dead["last_error"]) == ("e1", "rejected: unknown_lock")
    assert "e1" in run("outbox", "dead")  # the table an operator reads

    # Replaying is an operator's act: refused without a token, nothing moved.
    refused = runner.invoke(app, ["outbox", "replay", "e1"])
    assert refused.exit_code != 0
    assert "unauthenticated" in refused.output
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))["token"]
    token = _token_file(data_dir, "alice", alice)
    neither = runner.invoke(app, ["outbox", "replay", "--token-file", str(token)])
    assert neither.exit_code == 2
    assert "--all" in neither.output
    replayed = run("outbox", "replay", "e1", "--token-file", str(token), "--json")
    assert json.loads(replayed) == {"replayed": 1}
    assert json.loads(run("outbox", "status", "--json"))["pending"] == 2


def test_without_central_the_relay_and_reconciliation_say_so(data_dir: Path) -> None:  # noqa: F811
    relay = runner.invoke(app, ["relay"])
    assert relay.exit_code != 0
    assert "LEQUAN_CENTRAL_URL" in relay.output
    reconcile = runner.invoke(app, ["reconcile", "--date", "2024-11-30"])
    assert reconcile.exit_code != 0
    assert "central_not_configured" in reconcile.output
    bad = runner.invoke(app, ["reconcile", "--date", "30/11/2024"])
    assert bad.exit_code == 2
