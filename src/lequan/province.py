"""``lequan province init | serve``: a province from its configuration file.

``init`` checks the file (``lequan.province_file``) before it creates
anything, then makes the data directory private, generates the key file if
there is none, migrates the store, registers the channels and acquirers,
imports the merchants and adds the first operator
(``lequan.services.province``), and writes into the data directory, each
mode 0600:

- ``credentials.json``: the signing secrets of the channels and acquirers it
  created (they are shown nowhere else; hand each its own);
- ``operator-<id>.token``: the first operator's token, for ``--token-file``;
- ``province.env``: the ``LEQUAN_*`` settings that serve the province.

Run again, it changes nothing that is already there and says so. ``serve``
runs the platform with the settings ``init`` wrote, after checking that the
file still says the same: two files, two data directories and two ports give
two provinces side by side on one machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lequan.bootstrap import (
    SetupError,
    build_runtime,
    generate_keys,
    migrate_store,
    require_matching_keys,
)
from lequan.config import Settings
from lequan.province_file import (
    PROVINCE_ENV_FILE,
    ProvinceFile,
    load_province_file,
    province_env,
    read_env_file,
    render_env_file,
)
from lequan.services.province import AppPlan, ProvinceSetup, provision

__all__ = ["CREDENTIALS_FILE", "InitReport", "init_province", "serve_env"]

CREDENTIALS_FILE = "credentials.json"
# A credentials file of a province with at most 80 apps is a few kilobytes.
CREDENTIALS_FILE_BYTES_MAX = 1_000_000
ENV_FILE_BYTES_MAX = 64 * 1024


@dataclass
class InitReport:
    """What ``init`` found and did, each step ``created``, ``kept``, ``written`` or
    ``unchanged``; never a secret (those are in the files it names)."""

    province_code: str
    province_name: str
    data_dir: str
    store: str
    steps: dict[str, str] = field(default_factory=dict)
    apps: list[dict[str, str]] = field(default_factory=list)
    merchants: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    central: str | None = None
    changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "province_code": self.province_code,
            "province_name": self.province_name,
            "data_dir": self.data_dir,
            "store": self.store,
            "steps": self.steps,
            "apps": self.apps,
            "merchants": self.merchants,
            "files": self.files,
            "central": self.central,
            "changed": self.changed,
        }


def _store_name(database_url: str, data_dir: Path) -> str:
    """Where the store is, without a password the URL may carry."""
    if not database_url:
        return f"SQLite {data_dir / 'lequan.db'}"
    parts = urlsplit(database_url)
    if parts.scheme.startswith("sqlite"):
        return f"SQLite {parts.path.removeprefix('/')}"
    return f"PostgreSQL {parts.hostname}:{parts.port or 5432}{parts.path}"


def _private_dir(path: Path) -> str:
    existed = path.is_dir()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError as error:
        raise SetupError(
            f"the data directory {path} cannot be made private ({error.strerror}): "
            f"make it the lequan user's alone, chmod 700 {path}"
        ) from None
    return "kept" if existed else "created"


def _write_private(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` (0600, replaced whole); ``unchanged`` if it held it."""
    try:
        if path.read_text(encoding="utf-8") == text:
            path.chmod(0o600)
            return "unchanged"
    except FileNotFoundError:
        pass
    scratch = path.with_name(path.name + ".new")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)
    return "written"


def _read_bounded(path: Path, bytes_max: int) -> str:
    """The text of ``path``, of which at most ``bytes_max`` + 1 bytes are read: one that
    long is refused by whoever checks the size (the merchant import), or here."""
    with path.open("rb") as handle:
        raw = handle.read(bytes_max + 1)
    if len(raw) > bytes_max:  # too long anyway: a character cut at the end is no matter
        return raw.decode("utf-8", errors="replace")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SetupError(f"{path} is not UTF-8 (byte {error.start})") from None


def _read_credentials(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(CREDENTIALS_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        found = None
    if len(raw) > CREDENTIALS_FILE_BYTES_MAX or not isinstance(found, dict):
        raise SetupError(f"{path} is not a credentials file lequan wrote: move it away")
    return found


def _settings(province: ProvinceFile) -> Settings:
    env = province_env(province)
    values = {key.removeprefix("LEQUAN_").lower(): value for key, value in env.items()}
    return Settings.model_validate(values)


def init_province(path: Path) -> InitReport:
    """Stand the province of the file at ``path`` up, or bring it to what the file
    says; ``setup_error`` (nothing created) if the file is not valid."""
    province = load_province_file(path)
    config = province.config
    merchants_csv = None
    settings = _settings(province)
    if province.merchants_file is not None:
        merchants_csv = _read_bounded(province.merchants_file, settings.merchant_file_bytes_max)
    report = InitReport(
        province_code=config.code,
        province_name=config.name,
        data_dir=str(province.data_dir),
        store=_store_name(config.database_url, province.data_dir),
        central=(
            f"{province.central.url} as {province.central.app_id}" if province.central else None
        ),
    )
    report.steps["data_dir"] = _private_dir(province.data_dir)
    if province.key_file.exists():
        report.steps["key_file"] = "kept"
    else:
        generate_keys(province.key_file)
        report.steps["key_file"] = "created"
    rt = build_runtime(settings, create_keys=False)
    try:
        before, head = rt.store.schema_revisions()
        if before != head:
            migrate_store(settings)
            report.steps["store"] = f"migrated {before or 'none'} → {head}"
        else:
            report.steps["store"] = f"kept at {head}"
        require_matching_keys(rt)
        done = provision(
            rt,
            ProvinceSetup(
                province_code=config.code,
                apps=[AppPlan(a.id, "channel", a.name) for a in config.channels]
                + [AppPlan(a.id, "acquirer", a.name) for a in config.acquirers],
                operator_id=config.operator.id,
                operator_role=config.operator.role,
                merchants_csv=merchants_csv,
            ),
        )
    finally:
        rt.gate.close()
        rt.store.dispose()

    credentials_path = province.data_dir / CREDENTIALS_FILE
    credentials = _read_credentials(credentials_path)
    for app in done.apps:
        entry = credentials.get(app.app_id)
        on_file = isinstance(entry, dict) and bool(entry.get("secret"))
        if app.secret is not None:
            credentials[app.app_id] = {"kind": app.kind, "name": app.name, "secret": app.secret}
            on_file = True
        report.apps.append(
            {
                "app_id": app.app_id,
                "kind": app.kind,
                "name": app.name,
                "outcome": app.outcome.value,
                "secret": f"in {CREDENTIALS_FILE}" if on_file else "shown when it was created",
            }
        )
    report.files["credentials"] = str(credentials_path)
    report.steps["credentials"] = _write_private(
        credentials_path, json.dumps(credentials, ensure_ascii=False, indent=2) + "\n"
    )
    token_path = province.data_dir / f"operator-{config.operator.id}.token"
    if done.operator_token is not None:
        _write_private(token_path, done.operator_token + "\n")
        report.steps["operator"] = f"{config.operator.id} ({config.operator.role}) created"
    else:
        report.steps["operator"] = f"{config.operator.id} kept"
    if token_path.exists():
        report.files["operator token"] = str(token_path)
    report.merchants = {
        "written": done.merchants_changed,
        "unchanged": done.merchants_unchanged,
    }
    env_path = province.data_dir / PROVINCE_ENV_FILE
    report.files["settings"] = str(env_path)
    report.steps["settings"] = _write_private(
        env_path,
        render_env_file(
            province_env(province),
            header=f"lequan province {config.code} ({config.name}), written by "
            f"`lequan province init {province.path}`.\nIt holds secrets: keep it mode 0600.",
        ),
    )
    report.changed = (
        done.changed
        or not report.steps["store"].startswith("kept")
        or "created" in (report.steps["data_dir"], report.steps["key_file"])
        or "written" in (report.steps["credentials"], report.steps["settings"])
    )
    return report


def serve_env(path: Path) -> dict[str, str]:
    """The ``LEQUAN_*`` settings that serve the province of the file at ``path``, as
    ``init`` wrote them; ``setup_error`` if it has not run, or the file changed since."""
    province = load_province_file(path)
    env_path = province.data_dir / PROVINCE_ENV_FILE
    try:
        text = _read_bounded(env_path, ENV_FILE_BYTES_MAX)
    except FileNotFoundError:
        raise SetupError(
            f"province {province.config.code} is not initialised (no {env_path}): "
            f"run `lequan province init {path}` first"
        ) from None
    if len(text.encode("utf-8")) > ENV_FILE_BYTES_MAX:
        raise SetupError(f"{env_path} is not a settings file lequan wrote: run init again")
    written = read_env_file(text)
    wanted = province_env(province)
    if written != wanted:
        differ = sorted(
            k for k in wanted.keys() | written.keys() if wanted.get(k) != written.get(k)
        )
        raise SetupError(
            f"{path} says otherwise than {env_path} ({', '.join(differ)}): "
            f"run `lequan province init {path}` again"
        )
    return wanted
