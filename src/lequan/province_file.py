"""A province's configuration file: what a provincial operator writes to stand one up.

One YAML file names the province (its GB/T 2260 code), where its data lives,
its store, the central platform it answers to, its channels and acquirers,
its merchants file and its first operator. It is checked here field by
field, strictly, before anything is created, so an operator learns which
field breaks which rule (``setup_error``, each problem in
``details.errors``). ``lequan province init`` (``lequan.province``) turns
it into a store and the ``LEQUAN_*`` settings that serve it.

Relative paths (``data_dir``, ``merchants_file``, ``central.secret_file``)
are relative to the file itself, so a file and its neighbours can be moved
together. Secrets (central's signing secret, a password in ``database_url``)
are never printed back.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lequan.data import regions
from lequan.domain.errors import LequanError

__all__ = [
    "PROVINCE_ENV_FILE",
    "PROVINCE_FILE_BYTES_MAX",
    "Central",
    "CentralConfig",
    "CentralCredentials",
    "ProvinceConfig",
    "ProvinceFile",
    "load_province_file",
    "province_env",
    "read_env_file",
    "render_env_file",
]

# A province file is a page of YAML; anything much larger is not one.
PROVINCE_FILE_BYTES_MAX = 64 * 1024
PROVINCE_FILE_DEPTH_MAX = 8
# A secret file holds one line.
SECRET_FILE_BYTES_MAX = 4096
CHANNELS_MAX = 16
ACQUIRERS_MAX = 64
# The settings init writes for ``serve``, in the data directory (mode 0600: it holds
# central's secret and the database URL).
PROVINCE_ENV_FILE = "province.env"

AppId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,31}$")]
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
# A path as written in the file: one line, no NUL.
PathText = Annotated[str, Field(min_length=1, max_length=300, pattern=r"^[^\x00-\x1f\x7f]+$")]
Secret = Annotated[SecretStr, Field(min_length=16, max_length=200)]
SECRET_CHARS = re.compile(r"^[!-~]+$")  # printable ASCII, no spaces


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class AppConfig(_Model):
    """A channel or an acquirer: its app id (how it signs) and display name."""

    id: AppId
    name: Name


class OperatorConfig(_Model):
    """The first operator of the store, who adds the others (a maker by default)."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{1,31}$")]
    role: Literal["maker", "checker", "viewer"] = "maker"


CentralAppId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{1,63}$")]
# Central's OPRF public key: a ristretto255 element, 32 bytes in hex.
PublicKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _printable(secret: SecretStr | None) -> SecretStr | None:
    if secret is not None and not SECRET_CHARS.match(secret.get_secret_value()):
        raise ValueError("a secret is printable ASCII without spaces")
    return secret


class CentralCredentials(BaseModel):
    """What ``lequan central province add <code> --json`` prints for the province (its
    other keys are not this file's business)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    app_id: CentralAppId
    secret: Secret
    public_key: PublicKey
    code: str | None = None
    province_code: str | None = None
    province: str | None = None  # the key ``province add`` prints

    _secret_printable = field_validator("secret")(_printable)


class CentralConfig(_Model):
    """The central (national) platform and this province's credentials there, as
    ``lequan central province add <code> --json`` printed them: that output saved
    as a file of its owner's alone (``credentials_file``), or its ``app_id`` and
    ``public_key`` here with the secret inline or in a file (``secret_file``)."""

    url: Annotated[str, Field(max_length=200, pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(/[!-~]*)?$")]
    credentials_file: PathText | None = None
    app_id: CentralAppId | None = None
    secret: Secret | None = None
    secret_file: PathText | None = None
    public_key: PublicKey | None = None

    _secret_printable = field_validator("secret")(_printable)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        inline = (self.app_id, self.secret, self.secret_file, self.public_key)
        if self.credentials_file is not None:
            if any(v is not None for v in inline):
                raise ValueError("give credentials_file alone, or app_id, public_key and a secret")
            return self
        if self.app_id is None or self.public_key is None:
            raise ValueError(
                "give credentials_file (the output of `lequan central province add`), "
                "or app_id and public_key"
            )
        if (self.secret is None) == (self.secret_file is None):
            raise ValueError("give exactly one of secret and secret_file")
        return self


@dataclass(frozen=True, slots=True)
class Central:
    """Central's address and this province's credentials there, read."""

    url: str
    app_id: str
    public_key: str
    secret: SecretStr


class ProvinceConfig(_Model):
    """A whole province. Each cross-field rule is checked on the later field, so the
    error names the field an operator has to change."""

    code: Annotated[str, Field(pattern=r"^[1-9][0-9]0000$")]
    name: Name
    data_dir: PathText
    # Empty: SQLite in data_dir. PostgreSQL: postgresql+psycopg://user@host:5432/db
    database_url: Annotated[
        str, Field(max_length=300, pattern=r"^(postgresql\+psycopg://[!-~]+|sqlite:///[!-~]+)?$")
    ] = ""
    # Empty: the in-process claim gate (one process). Keys are prefixed per province.
    redis_url: Annotated[str, Field(max_length=300, pattern=r"^(rediss?://[!-~]+)?$")] = ""
    host: Annotated[str, Field(max_length=100, pattern=r"^[A-Za-z0-9.\-:]+$")] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # None: the province issues consumption vouchers only (no trade-in, no sync).
    central: CentralConfig | None = None
    channels: Annotated[
        tuple[AppConfig, ...], Field(min_length=1, max_length=CHANNELS_MAX, strict=False)
    ]
    acquirers: Annotated[
        tuple[AppConfig, ...], Field(min_length=1, max_length=ACQUIRERS_MAX, strict=False)
    ]
    # None: no merchants yet (``lequan merchant import`` later).
    merchants_file: PathText | None = None
    operator: OperatorConfig

    @field_validator("code")
    @classmethod
    def _a_province(cls, code: str) -> str:
        if code not in regions():
            raise ValueError(f"{code} is not a province of GB/T 2260")
        return code

    @field_validator("acquirers")
    @classmethod
    def _unique_ids(
        cls, acquirers: tuple[AppConfig, ...], info: ValidationInfo
    ) -> tuple[AppConfig, ...]:
        channels = info.data.get("channels") or ()
        ids = [a.id for a in (*channels, *acquirers)]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(
                "channels and acquirers share one namespace of app ids, each once: "
                + ", ".join(repeated)
            )
        return acquirers

    @property
    def region_name(self) -> str:
        return regions()[self.code]


@dataclass(frozen=True, slots=True)
class ProvinceFile:
    """A checked province file, its paths made absolute and its secret read."""

    path: Path
    config: ProvinceConfig
    data_dir: Path
    merchants_file: Path | None
    central: Central | None

    @property
    def key_file(self) -> Path:
        return self.data_dir / "keys.json"


def _problem(field: str, rule: str) -> dict[str, str]:
    return {"field": field, "rule": rule}


def _refused(path: Path, problems: list[dict[str, str]]) -> LequanError:
    summary = "; ".join(f"{p['field']}: {p['rule']}" for p in problems[:10])
    return LequanError(
        "setup_error",
        f"the province file {path} is not valid: {summary}",
        details={"errors": problems},
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(file)"


class _PlainLoader(yaml.SafeLoader):
    """The safe loader without anchors and aliases (a province file needs none, and an
    alias of aliases can expand a few bytes into millions of values), and shallow."""

    def __init__(self, stream: bytes) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("anchors and aliases are not allowed in a province file")
        self._depth += 1
        try:
            if self._depth > PROVINCE_FILE_DEPTH_MAX:
                raise yaml.YAMLError(f"the file nests deeper than {PROVINCE_FILE_DEPTH_MAX}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_yaml(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            raw = handle.read(PROVINCE_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise _refused(path, [_problem("(file)", f"cannot be read: {error.strerror}")]) from None
    if len(raw) > PROVINCE_FILE_BYTES_MAX:
        raise _refused(path, [_problem("(file)", f"larger than {PROVINCE_FILE_BYTES_MAX} bytes")])
    loader = _PlainLoader(raw)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise _refused(path, [_problem("(file)", f"not valid YAML: {error}")]) from None
    finally:
        loader.dispose()


def _read_private(path: Path, field: str, problems: list[dict[str, str]]) -> str | None:
    """The text of ``path``, which must be its owner's alone, as a token file is."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(SECRET_FILE_BYTES_MAX + 1)
    except OSError as error:
        problems.append(_problem(field, f"{path} cannot be read: {error.strerror}"))
        return None
    if mode & 0o077:
        problems.append(
            _problem(
                field,
                f"{path} is open to others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}",
            )
        )
        return None
    if len(data) > SECRET_FILE_BYTES_MAX:
        problems.append(_problem(field, f"{path} is larger than {SECRET_FILE_BYTES_MAX} bytes"))
        return None
    return data.decode("utf-8", errors="replace")


def _read_central(
    config: CentralConfig, base: Path, code: str, problems: list[dict[str, str]]
) -> Central | None:
    if config.credentials_file is not None:
        field = "central.credentials_file"
        path = base / config.credentials_file
        if not path.exists():
            problems.append(
                _problem(
                    field,
                    f"no file at {path}: on central, `lequan central province add {code} "
                    f"--json > {path.name}`, then chmod 600 {path.name} and bring it here",
                )
            )
            return None
        text = _read_private(path, field, problems)
        if text is None:
            return None
        try:
            found = CentralCredentials.model_validate_json(text)
        except ValidationError as error:
            for e in error.errors(include_url=False):
                rule = e["msg"].removeprefix("Value error, ")
                where = _loc(e["loc"])
                problems.append(_problem(field, f"{path}: {where}: {rule}" if e["loc"] else rule))
            return None
        said = found.province or found.province_code or found.code
        if said is not None and said != code:
            problems.append(_problem(field, f"{path} holds the credentials of {said}, not {code}"))
            return None
        return Central(config.url, found.app_id, found.public_key, found.secret)
    assert config.app_id is not None
    assert config.public_key is not None
    secret = config.secret
    if config.secret_file is not None:
        field = "central.secret_file"
        path = base / config.secret_file
        text = _read_private(path, field, problems)
        if text is None:
            return None
        text = text.strip()
        if not 16 <= len(text) <= 200:
            problems.append(_problem(field, f"{path} holds no secret (16-200 characters)"))
            return None
        if not SECRET_CHARS.match(text):
            problems.append(_problem(field, f"{path}: a secret is printable ASCII without spaces"))
            return None
        secret = SecretStr(text)
    assert secret is not None
    return Central(config.url, config.app_id, config.public_key, secret)


def load_province_file(path: Path) -> ProvinceFile:
    """The province file at ``path``, checked; or ``setup_error`` naming every broken
    field and rule. Reads the files it names (the secret, whether the merchants file
    is there) and creates nothing."""
    path = path.absolute()
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise _refused(path, [_problem("(file)", "a province file is a mapping")])
    try:
        config = ProvinceConfig.model_validate(data)
    except ValidationError as error:
        problems = []
        for e in error.errors(include_url=False):
            problems.append(_problem(_loc(e["loc"]), e["msg"].removeprefix("Value error, ")))
        raise _refused(path, problems) from None
    base = path.parent
    problems = []
    data_dir = base / config.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        problems.append(_problem("data_dir", f"{data_dir} is not a directory"))
    merchants_file = None
    if config.merchants_file is not None:
        merchants_file = base / config.merchants_file
        if not merchants_file.is_file():
            problems.append(_problem("merchants_file", f"no file at {merchants_file}"))
    central = None
    if config.central is not None:
        central = _read_central(config.central, base, config.code, problems)
    if problems:
        raise _refused(path, problems)
    return ProvinceFile(
        path=path,
        config=config,
        data_dir=data_dir.resolve(),
        merchants_file=merchants_file.resolve() if merchants_file is not None else None,
        central=central,
    )


def province_env(province: ProvinceFile) -> dict[str, str]:
    """The ``LEQUAN_*`` settings that serve this province: every one that places it
    (its data, store, port, keys, central), so that another province's, or the
    shell's, cannot leak in. Limits and tuning stay the shell's to set."""
    config = province.config
    central = province.central
    return {
        "LEQUAN_PROVINCE_CODE": config.code,
        "LEQUAN_DATA_DIR": str(province.data_dir),
        "LEQUAN_DATABASE_URL": config.database_url,
        "LEQUAN_KEY_FILE": str(province.key_file),
        "LEQUAN_REDIS_URL": config.redis_url,
        # Two provinces may share one Redis: each keeps its keys apart.
        "LEQUAN_REDIS_KEY_PREFIX": f"lq:{config.code}:",
        "LEQUAN_HOST": config.host,
        "LEQUAN_PORT": str(config.port),
        "LEQUAN_CENTRAL_URL": central.url if central else "",
        "LEQUAN_CENTRAL_APP_ID": central.app_id if central else "",
        "LEQUAN_CENTRAL_SECRET": central.secret.get_secret_value() if central else "",
        "LEQUAN_CENTRAL_PUBLIC_KEY": central.public_key if central else "",
    }


def render_env_file(env: dict[str, str], *, header: str) -> str:
    """``KEY=value`` lines, quoted only where a shell needs it (systemd's
    ``EnvironmentFile`` and ``set -a; . file`` read them alike)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{key}={shlex.quote(value) if value else ''}" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def read_env_file(text: str) -> dict[str, str]:
    """The settings ``render_env_file`` wrote (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        parts = shlex.split(value) if value else [""]
        env[key.strip()] = parts[0] if parts else ""
    return env
