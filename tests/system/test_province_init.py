"""A province from one configuration file: ``lequan province init`` makes a working
store that the operator's commands see, changes nothing the second time, refuses
a broken file having created nothing, and two provinces so made are served side
by side by ``lequan province serve``, each on its own port."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from benchmarks.servers import free_port
from lequan.bootstrap import build_runtime
from lequan.cli import app
from lequan.client import LequanAuth
from lequan.config import Settings
from lequan.province_file import read_env_file
from tests.loopback import loopback_client
from tests.unit.test_province_file import EXAMPLES, central_credentials
from tests.waiting import wait_until

runner = CliRunner()


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped examples, central's credentials saved beside them, in a scratch copy
    whose data directories land in tmp_path; no LEQUAN_* of the shell's in the way."""
    for name in list(os.environ):
        if name.startswith("LEQUAN_") and not name.startswith("LEQUAN_TEST_"):
            monkeypatch.delenv(name)
    directory = tmp_path / "examples" / "provinces"
    shutil.copytree(EXAMPLES, directory)
    central_credentials(directory, "440000")
    central_credentials(directory, "330000")
    return directory


def init(path: Path, *args: str) -> str:
    result = runner.invoke(app, ["province", "init", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _data_dir(examples: Path, name: str) -> Path:
    return examples.parent.parent / "lequan-data" / "provinces" / name


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _audit_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "lequan.db") as connection:
        (count,) = connection.execute("SELECT count(*) FROM audit_log").fetchone()
    connection.close()
    return int(count)


def test_init_makes_a_store_the_operators_commands_see_and_twice_changes_nothing(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = json.loads(init(examples / "guangdong.yaml", "--json"))
    data_dir = _data_dir(examples, "guangdong")
    assert report["changed"] is True
    assert report["steps"]["store"].startswith("migrated none")
    assert [(a["app_id"], a["outcome"]) for a in report["apps"]] == [
        ("wechat", "created"),
        ("alipay", "created"),
        ("unionpay", "created"),
        ("acq-unionpay", "created"),
        ("ec-jd", "created"),
        ("ec-suning", "created"),
    ]
    assert report["merchants"] == {"written": 10, "unchanged": 0}
    # Private: the directory, and each file with a secret in it.
    assert _mode(data_dir) == 0o700
    for name in ("keys.json", "credentials.json", "operator-gd-admin.token", "province.env"):
        assert _mode(data_dir / name) == 0o600, name
    credentials = json.loads((data_dir / "credentials.json").read_text(encoding="utf-8"))
    assert credentials["wechat"]["kind"] == "channel"
    assert credentials["ec-jd"]["secret"].startswith("lqs_")
    # No secret on stdout: each is in its file.
    shown = json.dumps(report) + init(examples / "guangdong.yaml")
    assert credentials["wechat"]["secret"] not in shown
    assert "lqs_" not in shown

    # The written settings are those of the platform: the operator's commands see it.
    env = read_env_file((data_dir / "province.env").read_text(encoding="utf-8"))
    assert env["LEQUAN_CENTRAL_APP_ID"] == "prov-440000"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    token = ["--token-file", str(data_dir / "operator-gd-admin.token")]
    again = runner.invoke(app, ["channel", "add", "wechat", *token])
    assert again.exit_code == 2
    assert "app_exists" in again.stderr
    added = runner.invoke(app, ["operator", "add", "gd-checker", "--role", "checker", *token])
    assert added.exit_code == 0, added.output
    settings = Settings()
    assert settings.province_code == "440000"
    assert settings.central_secret.get_secret_value().startswith("lqs_")
    rt = build_runtime(settings, create_keys=False)
    try:
        with rt.store.unit_of_work(readonly=True) as uow:
            jd = uow.people.get_merchant("gd-jd-appliances")
            assert jd is not None
            assert (jd.acquirer_id, jd.modes) == ("ec-jd", frozenset({"online"}))
            assert uow.people.operator_role("gd-admin") == "maker"
    finally:
        rt.store.dispose()
    audited = _audit_rows(data_dir)

    # Twice: nothing made again, nothing written, and it says so.
    second = json.loads(init(examples / "guangdong.yaml", "--json"))
    assert second["changed"] is False
    assert {a["outcome"] for a in second["apps"]} == {"kept"}
    assert second["merchants"] == {"written": 0, "unchanged": 10}
    assert second["steps"]["credentials"] == "unchanged"
    assert second["steps"]["settings"] == "unchanged"
    assert json.loads((data_dir / "credentials.json").read_text(encoding="utf-8")) == credentials
    assert _audit_rows(data_dir) == audited
    assert "nothing changed" in init(examples / "guangdong.yaml")


def test_a_broken_file_creates_nothing_and_names_the_field(examples: Path) -> None:
    data = yaml.safe_load((examples / "guangdong.yaml").read_text(encoding="utf-8"))
    data["code"] = "440001"
    data["operator"]["rank"] = "root"
    broken = examples / "broken.yaml"
    broken.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = runner.invoke(app, ["province", "init", str(broken)])
    assert result.exit_code == 2
    said = " ".join(result.stderr.split())
    assert "setup_error" in said
    assert "• code:" in said
    assert "• operator.rank: Extra inputs are not permitted" in said
    assert not _data_dir(examples, "guangdong").exists()
    assert not (examples.parent.parent / "lequan-data").exists()
    # `check` says the same of a broken file, and of a good one that it is good.
    assert runner.invoke(app, ["province", "check", str(broken)]).exit_code == 2
    checked = runner.invoke(app, ["province", "check", str(examples / "guangdong.yaml")])
    assert checked.exit_code == 0, checked.output
    assert "province 440000 广东省消费券与以旧换新平台 is valid" in " ".join(checked.stdout.split())
    assert not (examples.parent.parent / "lequan-data").exists()


def test_a_merchant_outside_the_province_is_refused_at_its_line(examples: Path) -> None:
    merchants = examples / "guangdong-merchants.csv"
    rows = merchants.read_text(encoding="utf-8").splitlines()
    rows[3] = rows[3].replace(",440600,", ",330100,")
    merchants.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["province", "init", str(examples / "guangdong.yaml")])
    assert result.exit_code == 2
    assert "line 4: region_code 330100 is not in province 440000" in " ".join(result.stderr.split())


@pytest.mark.postgres
def test_init_on_postgresql(examples: Path, fresh_postgres_url: str) -> None:
    data = yaml.safe_load((examples / "zhejiang.yaml").read_text(encoding="utf-8"))
    data["database_url"] = fresh_postgres_url
    path = examples / "zhejiang-pg.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    first = json.loads(init(path, "--json"))
    assert first["store"].startswith("PostgreSQL 127.0.0.1:5432/")
    assert first["steps"]["store"].startswith("migrated none")
    assert first["merchants"] == {"written": 10, "unchanged": 0}
    data_dir = _data_dir(examples, "zhejiang")
    assert not (data_dir / "lequan.db").exists()  # the store is PostgreSQL's
    env = read_env_file((data_dir / "province.env").read_text(encoding="utf-8"))
    assert env["LEQUAN_DATABASE_URL"] == fresh_postgres_url
    second = json.loads(init(path, "--json"))
    assert second["changed"] is False
    assert second["merchants"] == {"written": 0, "unchanged": 10}


@contextmanager
def _serving(path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``lequan province serve`` as its own process; its stderr shown if it fails."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-c", "from lequan.cli import main; main()"),
                *("province", "serve", str(path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            yield process
        except BaseException:
            stderr.seek(0)
            sys.stderr.write(stderr.read().decode("utf-8", errors="replace")[-4000:])
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)


def _ready(port: int) -> bool:
    try:
        with loopback_client(timeout=1.0) as probe:
            return probe.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _ready_or_gone(port: int, process: subprocess.Popen[bytes]) -> bool:
    return _ready(port) or process.poll() is not None


def test_two_provinces_are_served_side_by_side(examples: Path) -> None:
    ports = {}
    for name in ("guangdong", "zhejiang"):
        path = examples / f"{name}.yaml"
        ports[name] = free_port()
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["port"] = ports[name]
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        init(path)
    with (
        _serving(examples / "guangdong.yaml", ports["guangdong"]) as guangdong,
        _serving(examples / "zhejiang.yaml", ports["zhejiang"]) as zhejiang,
    ):
        for name, process in (("guangdong", guangdong), ("zhejiang", zhejiang)):
            wait_until(
                partial(_ready_or_gone, ports[name], process),
                what=f"{name} answers /readyz on port {ports[name]}",
            )
            assert process.poll() is None, f"{name} exited with {process.returncode}"
        # Each is its own platform: its channel signs with its own secret there, and
        # that secret is nothing to the other province.
        secrets = {
            name: json.loads(
                (_data_dir(examples, name) / "credentials.json").read_text(encoding="utf-8")
            )["wechat"]["secret"]
            for name in ports
        }
        for name, port in ports.items():
            for signer, secret in secrets.items():
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/v1/persons/u-1/vouchers",
                    auth=LequanAuth("wechat", secret),
                    timeout=10,
                )
                if signer == name:
                    assert answer.status_code != 401, answer.text
                else:
                    assert answer.status_code == 401
                    assert answer.json()["code"] == "invalid_signature"


def test_serve_refuses_a_province_not_initialised_or_changed_since(examples: Path) -> None:
    path = examples / "guangdong.yaml"
    before = runner.invoke(app, ["province", "serve", str(path)])
    assert before.exit_code == 2
    assert "run `lequan province init" in " ".join(before.stderr.split())
    init(path)
    path.write_text(
        path.read_text(encoding="utf-8").replace("port: 8440", "port: 8441"), encoding="utf-8"
    )
    changed = runner.invoke(app, ["province", "serve", str(path)])
    assert changed.exit_code == 2
    said = " ".join(changed.stderr.split())
    assert "LEQUAN_PORT" in said
    assert "again" in said
