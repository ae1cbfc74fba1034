"""The operator's CLI: creating commands print what they made (and --json),
the maker-checker rule holds, and mistakes come back as clear errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lequan.adapters.crypto import EXAMPLE_KEY_FILE_JSON, generate_key_file
from lequan.bootstrap import SetupError, load_keyring
from lequan.cli import app
from lequan.config import Settings
from tests.factories import EXAMPLES

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (
        "LEQUAN_DATABASE_URL",
        "LEQUAN_REDIS_URL",
        "LEQUAN_KEY_FILE",
        "LEQUAN_OPERATOR_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEQUAN_DATA_DIR", str(tmp_path))
    result = runner.invoke(app, ["migrate"])
    assert result.exit_code == 0, result.output
    return tmp_path


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _token_file(directory: Path, name: str, token: str) -> Path:
    path = directory / f"{name}.token"
    path.write_text(token + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_operator_day_from_import_to_open_round(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first operator needs no token; every later act is an operator's, by token.
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))
    assert alice["token"].startswith("lqo_")
    bob = json.loads(
        run("operator", "add", "bob", "--role", "checker", "--token", alice["token"], "--json")
    )
    as_alice = ["--token-file", str(_token_file(data_dir, "alice", alice["token"]))]
    monkeypatch.setenv("LEQUAN_OPERATOR_TOKEN", bob["token"])  # bob's, unless told otherwise
    imported = json.loads(
        run(
            "campaign",
            "import",
            str(EXAMPLES / "shanghai-dining-2024.yaml"),
            *as_alice,
            "--json",
        )
    )
    assert imported["status"] == "draft"
    assert imported["drafted_by"] == "alice"

    refused = runner.invoke(app, ["campaign", "approve", "sh-dining-2024", *as_alice])
    assert refused.exit_code == 2
    assert "maker_cannot_approve" in refused.stderr  # never one's own draft

    approved = json.loads(run("campaign", "approve", "sh-dining-2024", "--json"))
    assert approved["status"] == "approved"
    assert approved["approved_by"] == "bob"

    run("campaign", "import", str(EXAMPLES / "shanghai-lodging-2024.yaml"), *as_alice)
    channel = json.loads(run("channel", "add", "wechat", *as_alice, "--json"))
    assert channel["kind"] == "channel"
    assert channel["secret"].startswith("lqs_")
    acquirer = json.loads(run("acquirer", "add", "acq-unionpay", *as_alice, "--json"))
    assert acquirer["kind"] == "acquirer"
    # Each merchant names its acquirer, which must exist first.
    assert "imported 6 merchants" in run(
        "merchant", "import", str(EXAMPLES / "merchants.csv"), *as_alice
    )
    shown = json.loads(run("campaign", "show", "sh-dining-2024", "--json"))
    assert [r["round_id"] for r in shown["rounds"]] == ["r1", "r2", "r3"]
    # The example's rounds are in 2024, so opening one now is refused clearly.
    late = runner.invoke(app, ["campaign", "start-round", "sh-dining-2024", "r1", *as_alice])
    assert late.exit_code == 2
    assert "round_ended" in late.stderr
    paused = runner.invoke(app, ["campaign", "pause", "sh-dining-2024"])
    assert paused.exit_code == 2
    assert "campaign_state" in paused.stderr  # approved, not live: nothing to pause
    assert "ok" in run("campaign", "check", "sh-dining-2024")
    # The embedded gate lives in the server process: the CLI says so instead of
    # rebuilding a gate nobody uses.
    local = runner.invoke(app, ["campaign", "rebuild-gate", "sh-dining-2024", *as_alice])
    assert local.exit_code == 2
    assert "the server process" in local.stderr
    assert _audited(data_dir) == [
        ("bootstrap", "operator.add", "alice"),
        ("alice", "operator.add", "bob"),
        ("alice", "campaign.import", "sh-dining-2024"),
        ("bob", "campaign.approve", "sh-dining-2024"),
        ("alice", "campaign.import", "sh-lodging-2024"),
        ("alice", "channel.add", "wechat"),
        ("alice", "acquirer.add", "acq-unionpay"),
        ("alice", "merchant.import", "merchants"),
    ]


def _audited(data_dir: Path) -> list[tuple[str, str, str]]:
    """(actor, action, target) of the audit log, in order."""
    with sqlite3.connect(data_dir / "lequan.db") as connection:
        rows = connection.execute("SELECT actor, action, target FROM audit_log ORDER BY seq")
        found = [tuple(row) for row in rows]
    connection.close()
    return found


def test_an_operator_is_whoever_their_token_says_not_a_name(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, `--as bob` made anyone bob in the audit log."""
    monkeypatch.delenv("LEQUAN_OPERATOR_TOKEN", raising=False)
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))
    campaign = str(EXAMPLES / "shanghai-dining-2024.yaml")

    named = runner.invoke(app, ["campaign", "import", campaign, "--as", "alice"])
    assert named.exit_code == 2
    assert "--as" in named.stderr  # no such option: a name proves nothing

    nameless = runner.invoke(app, ["campaign", "import", campaign])
    assert nameless.exit_code == 2
    assert "unauthenticated" in nameless.stderr

    forged = runner.invoke(app, ["campaign", "import", campaign, "--token", "lqo_" + "x" * 43])
    assert forged.exit_code == 2
    assert "unauthenticated" in forged.stderr

    # The first operator is added once; after that, only by an operator's token.
    second = runner.invoke(app, ["operator", "add", "mallory", "--role", "checker"])
    assert second.exit_code == 2
    assert "unauthenticated" in second.stderr
    assert _audited(data_dir) == [("bootstrap", "operator.add", "alice")]

    vera = json.loads(
        run("operator", "add", "vera", "--role", "viewer", "--token", alice["token"], "--json")
    )
    viewer = runner.invoke(
        app, ["merchant", "import", str(EXAMPLES / "merchants.csv"), "--token", vera["token"]]
    )
    assert viewer.exit_code == 2
    assert "forbidden" in viewer.stderr
    added = runner.invoke(
        app, ["operator", "add", "eve", "--role", "maker", "--token", vera["token"]]
    )
    assert added.exit_code == 2
    assert "forbidden" in added.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_a_token_file_others_can_read_is_refused_with_the_fix(data_dir: Path, mode: int) -> None:
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))
    path = _token_file(data_dir, "alice", alice["token"])
    path.chmod(mode)
    campaign = str(EXAMPLES / "shanghai-dining-2024.yaml")
    refused = runner.invoke(app, ["campaign", "import", campaign, "--token-file", str(path)])
    assert refused.exit_code == 2
    # Rich wraps a long path anywhere: compare without the whitespace it put in.
    assert f"chmod600{path}" in "".join(refused.stderr.split())
    assert "Traceback" not in refused.output + refused.stderr
    path.chmod(0o600)
    run("campaign", "import", campaign, "--token-file", str(path))


def test_a_broken_campaign_file_names_the_field_and_the_rule(
    data_dir: Path, tmp_path: Path
) -> None:
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))
    text = (EXAMPLES / "shanghai-dining-2024.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("discount_fen: 9000}", "discount_fen: 39000}"), encoding="utf-8")
    result = runner.invoke(app, ["campaign", "import", str(broken), "--token", alice["token"]])
    assert result.exit_code == 2
    assert "invalid_campaign_config" in result.stderr
    assert "templates[0]" in result.stderr
    assert "discount_fen must not exceed threshold_fen" in result.stderr
    listed = run("campaign", "list")
    assert "sh-dining-2024" not in listed  # nothing was stored


def test_a_campaign_that_does_not_exist_is_a_clear_error(data_dir: Path) -> None:
    result = runner.invoke(app, ["campaign", "check", "no-such-campaign"])
    assert result.exit_code == 2
    assert "campaign_not_found" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_the_embedded_store_is_made_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `lequan migrate` first: the embedded default sets itself up, as `serve` does."""
    for name in ("LEQUAN_DATABASE_URL", "LEQUAN_REDIS_URL", "LEQUAN_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEQUAN_DATA_DIR", str(tmp_path))
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))
    assert alice["operator_id"] == "alice"


@pytest.mark.postgres
def test_a_store_left_behind_its_schema_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_postgres_url: str
) -> None:
    """A production store is never migrated behind the operator's back."""
    monkeypatch.setenv("LEQUAN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LEQUAN_DATABASE_URL", fresh_postgres_url)
    generate_key_file(tmp_path / "keys.json")
    monkeypatch.setenv("LEQUAN_KEY_FILE", str(tmp_path / "keys.json"))
    result = runner.invoke(app, ["campaign", "check", "sh-dining-2024"])
    assert result.exit_code == 2
    assert "schema none" in result.stderr
    assert "lequan migrate" in result.stderr


def test_serve_refuses_several_workers_on_the_in_process_gate(data_dir: Path) -> None:
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "LEQUAN_REDIS_URL" in result.stderr


def test_a_server_process_takes_its_start_up_heap_out_of_garbage_collection(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serving process's collector skips what was built at start, and collects
    young objects at the configured pace (its own process: GC is process-wide)."""
    monkeypatch.setenv("LEQUAN_GC_GEN0_THRESHOLD", "12345")
    script = (
        "import gc\n"
        "from lequan.bootstrap import load_keyring\n"
        "from lequan.config import Settings\n"
        "from lequan.http.asgi import create\n"
        "load_keyring(Settings(), create=True)\n"
        "create()\n"
        "print(gc.get_threshold()[0], gc.get_freeze_count())\n"
    )
    done = subprocess.run(  # our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    threshold, frozen = map(int, done.stdout.split()[-2:])
    assert threshold == 12345
    assert frozen > 10_000  # the framework, the schemas and the platform


def test_keys_are_generated_only_for_the_embedded_default(tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path / "embedded", database_url="", redis_url="")
    keyring = load_keyring(embedded, create=True)
    assert (tmp_path / "embedded" / "keys.json").stat().st_mode & 0o777 == 0o600
    assert load_keyring(embedded, create=False).active_key_id == keyring.active_key_id

    production = Settings(
        data_dir=tmp_path / "prod",
        database_url="postgresql+psycopg://lequan@db/lequan",
    )
    with pytest.raises(SetupError, match="no key file"):
        load_keyring(production, create=True)

    example = tmp_path / "example-keys.json"
    example.write_text(EXAMPLE_KEY_FILE_JSON, encoding="utf-8")
    example.chmod(0o600)
    with pytest.raises(SetupError, match="example key"):
        load_keyring(
            Settings(
                data_dir=tmp_path / "prod",
                database_url="postgresql+psycopg://lequan@db/lequan",
                key_file=example,
            ),
            create=False,
        )


def test_an_open_key_file_is_refused_in_one_clear_line(data_dir: Path) -> None:
    run("campaign", "list")  # the first start makes the key file
    (data_dir / "keys.json").chmod(0o644)
    result = runner.invoke(app, ["campaign", "list"])
    assert result.exit_code == 2
    assert "setup_error" in result.stderr
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_serve_and_the_cli_refuse_another_key_file_than_the_datas(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("campaign", "list")  # the first start pins the store's key file
    generate_key_file(data_dir / "other-keys.json")
    monkeypatch.setenv("LEQUAN_KEY_FILE", str(data_dir / "other-keys.json"))
    for command in (["campaign", "list"], ["serve"]):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 2, command
        assert "setup_error" in refused.stderr
        assert "does not match the store's data" in " ".join(refused.stderr.split())
        assert "Traceback" not in refused.output + refused.stderr


def test_serve_refuses_a_store_that_does_not_answer_in_one_clear_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generate_key_file(data_dir / "keys-prod.json")
    monkeypatch.setenv("LEQUAN_KEY_FILE", str(data_dir / "keys-prod.json"))
    monkeypatch.setenv("LEQUAN_DATABASE_URL", "postgresql+psycopg://lequan@127.0.0.1:1/lequan")
    refused = runner.invoke(app, ["serve"])
    assert refused.exit_code == 2
    assert "the store does not answer" in refused.stderr
    assert "Traceback" not in refused.output + refused.stderr


def test_the_switches_from_the_command_line(data_dir: Path) -> None:
    """`campaign redemptions pause|resume` and `merchant suspend|reinstate --reason`:
    a maker or a checker, by token; a viewer is refused; each pull audited."""
    alice = json.loads(run("operator", "add", "alice", "--role", "maker", "--json"))
    token = ["--token", alice["token"]]
    vera = json.loads(run("operator", "add", "vera", "--role", "viewer", *token, "--json"))
    for campaign in ("shanghai-dining-2024.yaml", "shanghai-lodging-2024.yaml"):
        run("campaign", "import", str(EXAMPLES / campaign), *token)
    run("acquirer", "add", "acq-unionpay", *token)
    run("merchant", "import", str(EXAMPLES / "merchants.csv"), *token)

    paused = json.loads(
        run("campaign", "redemptions", "pause", "sh-dining-2024", "--reason", "drill", *token,
            "--json")
    )  # fmt: skip
    assert (paused["redemptions_paused"], paused["status"]) == (True, "draft")
    assert "redemptions" in run("campaign", "show", "sh-dining-2024")
    shown = json.loads(run("campaign", "show", "sh-dining-2024", "--json"))
    assert shown["redemptions_paused"] is True
    assert "open" in run("campaign", "redemptions", "resume", "sh-dining-2024", *token)

    suspended = runner.invoke(
        app, ["merchant", "suspend", "m-cafe-001", "--reason", "套现 suspected", *token]
    )
    assert suspended.exit_code == 0, suspended.output
    assert "suspended" in suspended.stdout
    merchant = json.loads(run("merchant", "show", "m-cafe-001", "--json"))
    assert merchant["suspension"]["reason"] == "套现 suspected"
    assert merchant["suspension"]["suspended_by"] == "alice"
    reasonless = runner.invoke(app, ["merchant", "reinstate", "m-cafe-001", *token])
    assert reasonless.exit_code == 2
    assert "--reason" in reasonless.output + reasonless.stderr
    viewer = runner.invoke(
        app, ["merchant", "reinstate", "m-cafe-001", "--reason", "x", "--token", vera["token"]]
    )
    assert viewer.exit_code == 2
    assert "forbidden" in viewer.stderr
    unknown = runner.invoke(app, ["merchant", "suspend", "m-nope", "--reason", "x", *token])
    assert unknown.exit_code == 2
    assert "merchant_not_found" in unknown.stderr
    bad = runner.invoke(app, ["merchant", "suspend", "m cafe", "--reason", "x", *token])
    assert bad.exit_code == 2
    assert "invalid_merchant" in bad.stderr
    blank = runner.invoke(app, ["merchant", "suspend", "m-cafe-001", "--reason", " ", *token])
    assert blank.exit_code == 2
    assert "invalid_reason" in blank.stderr
    assert "takes vouchers" in run(
        "merchant", "reinstate", "m-cafe-001", "--reason", "cleared", *token
    )
    assert _audited(data_dir)[-4:] == [
        ("alice", "campaign.redemptions_pause", "sh-dining-2024"),
        ("alice", "campaign.redemptions_resume", "sh-dining-2024"),
        ("alice", "merchant.suspend", "m-cafe-001"),
        ("alice", "merchant.reinstate", "m-cafe-001"),
    ]
