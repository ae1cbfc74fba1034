"""A province's configuration file is refused field by field, with the field's path,
before anything is created; the shipped examples are valid once central's
credentials are there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from lequan.domain.errors import LequanError
from lequan.province_file import (
    load_province_file,
    province_env,
    read_env_file,
    render_env_file,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "provinces"
# The ristretto255 generator: a valid point, as central's public key must be.
PUBLIC_KEY = "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76"
SECRET = "lqs_" + "s" * 40


NAMES = {"440000": "guangdong", "330000": "zhejiang"}


def central_credentials(directory: Path, province: str, *, mode: int = 0o600, **extra: Any) -> Path:
    """What `lequan central province add <code> --json` prints, saved as the docs say."""
    path = directory / f"{NAMES[province]}-central.json"
    values = {
        "code": province,
        "app_id": f"prov-{province}",
        "secret": SECRET,
        "public_key": PUBLIC_KEY,
    }
    path.write_text(json.dumps({**values, **extra}), encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """The shipped examples in a scratch copy (their data_dir lands in tmp_path)."""
    directory = tmp_path / "examples" / "provinces"
    shutil.copytree(EXAMPLES, directory)
    central_credentials(directory, "440000")
    central_credentials(directory, "330000")
    return directory


def _edited(examples: Path, change: dict[str, Any], *, drop: tuple[str, ...] = ()) -> Path:
    data = yaml.safe_load((examples / "guangdong.yaml").read_text(encoding="utf-8"))
    for key in drop:
        data.pop(key)
    data.update(change)
    path = examples / "edited.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(LequanError) as refused:
        load_province_file(path)
    assert refused.value.code == "setup_error"
    return {p["field"]: p["rule"] for p in refused.value.details["errors"]}


def test_the_examples_are_valid_provinces(examples: Path) -> None:
    guangdong = load_province_file(examples / "guangdong.yaml")
    zhejiang = load_province_file(examples / "zhejiang.yaml")
    assert (guangdong.config.code, zhejiang.config.code) == ("440000", "330000")
    assert guangdong.config.region_name == "广东省"
    assert guangdong.data_dir != zhejiang.data_dir
    assert guangdong.config.port != zhejiang.config.port
    assert guangdong.central is not None
    assert guangdong.central.app_id == "prov-440000"
    # Relative to the file, wherever it is run from.
    assert guangdong.data_dir == (examples.parent.parent / "lequan-data/provinces/guangdong")
    assert guangdong.merchants_file == examples / "guangdong-merchants.csv"


def test_an_example_without_central_credentials_says_how_to_get_them(examples: Path) -> None:
    (examples / "guangdong-central.json").unlink()
    problems = _problems(examples / "guangdong.yaml")
    assert "lequan central province add 440000 --json" in problems["central.credentials_file"]


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"code": "440001"}, "code", "should match pattern"),
        ({"code": "990000"}, "code", "not a province of GB/T 2260"),
        ({"code": 440000}, "code", "valid string"),  # strict: no number for a code
        ({"port": "8440"}, "port", "valid integer"),
        ({"port": 70000}, "port", "less than or equal to 65535"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"operator": {"id": "gd-admin", "rank": 1}}, "operator.rank", "Extra inputs"),
        ({"operator": {"id": "gd-admin", "role": "root"}}, "operator.role", "'maker'"),
        ({"channels": [{"id": "wechat", "name": "x", "key": 1}]}, "channels[0].key", "Extra"),
        ({"channels": []}, "channels", "at least 1 item"),
        ({"channels": [{"id": "ec-jd", "name": "JD pay"}]}, "acquirers", "ec-jd"),
        ({"database_url": "mysql://db/lequan"}, "database_url", "should match pattern"),
        ({"merchants_file": "nowhere.csv"}, "merchants_file", "no file at"),
        ({"name": "a\nb"}, "name", "should match pattern"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_a_broken_field_is_refused_with_its_path(
    examples: Path, change: dict[str, Any], field: str, rule: str
) -> None:
    problems = _problems(_edited(examples, change))
    assert field in problems, problems
    assert rule in problems[field]


def test_a_missing_field_is_named(examples: Path) -> None:
    problems = _problems(_edited(examples, {}, drop=("code", "operator")))
    assert problems == {"code": "Field required", "operator": "Field required"}


@pytest.mark.parametrize(
    ("central", "field", "rule"),
    [
        (
            {"app_id": "p", "secret": SECRET, "public_key": PUBLIC_KEY},
            "central.app_id",
            "should match pattern",
        ),
        (
            {"app_id": "prov-440000", "secret": "short", "public_key": PUBLIC_KEY},
            "central.secret",
            "at least 16",
        ),
        (
            {"app_id": "prov-440000", "secret": "with spaces in it ok", "public_key": PUBLIC_KEY},
            "central.secret",
            "without spaces",
        ),
        (
            {"app_id": "prov-440000", "public_key": PUBLIC_KEY},
            "central",
            "exactly one of secret and secret_file",
        ),
        (
            {"app_id": "prov-440000", "secret": SECRET, "public_key": "xyz"},
            "central.public_key",
            "should match pattern",
        ),
        (
            {"credentials_file": "guangdong-central.json", "secret": SECRET},
            "central",
            "credentials_file alone",
        ),
    ],
    ids=lambda v: str(v)[:30],
)
def test_a_bad_central_secret_is_refused(
    examples: Path, central: dict[str, Any], field: str, rule: str
) -> None:
    problems = _problems(
        _edited(examples, {"central": {"url": "http://127.0.0.1:8100", **central}})
    )
    assert rule in problems[field], problems
    assert SECRET not in json.dumps(problems)  # never printed back


def test_a_secret_file_must_be_its_owners_alone(examples: Path) -> None:
    secret_file = examples / "gd.secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    secret_file.chmod(0o644)
    central = {
        "url": "http://127.0.0.1:8100",
        "app_id": "prov-440000",
        "secret_file": "gd.secret",
        "public_key": PUBLIC_KEY,
    }
    path = _edited(examples, {"central": central})
    assert "chmod 600" in _problems(path)["central.secret_file"]
    secret_file.chmod(0o600)
    found = load_province_file(path).central
    assert found is not None
    assert found.secret.get_secret_value() == SECRET


def test_credentials_of_another_province_or_open_to_others_are_refused(examples: Path) -> None:
    central_credentials(examples, "440000", code="330000")
    assert (
        "credentials of 330000, not 440000"
        in (_problems(examples / "guangdong.yaml")["central.credentials_file"])
    )
    central_credentials(examples, "440000", mode=0o644)
    assert "open to others" in _problems(examples / "guangdong.yaml")["central.credentials_file"]
    central_credentials(examples, "440000", secret="short")
    assert "secret" in _problems(examples / "guangdong.yaml")["central.credentials_file"]


@pytest.mark.parametrize(
    "text",
    [
        b"code: &a 440000\nname: *a\n",  # aliases
        b"a: " + b"[" * 50 + b"]" * 50 + b"\n",  # nesting
        b"- just a list\n",
        b"code: [unclosed\n",
        b"x" * 70_000,
    ],
    ids=["alias", "deep", "not-a-mapping", "not-yaml", "too-large"],
)
def test_a_file_that_is_not_a_province_file_is_refused_whole(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "province.yaml"
    path.write_bytes(text)
    assert "(file)" in _problems(path)


def test_the_settings_file_reads_back_as_written(examples: Path) -> None:
    province = load_province_file(examples / "guangdong.yaml")
    env = province_env(province)
    assert env["LEQUAN_CENTRAL_SECRET"] == SECRET
    assert env["LEQUAN_REDIS_KEY_PREFIX"] == "lq:440000:"
    odd = {**env, "LEQUAN_DATA_DIR": "/srv/a dir/with 'quotes'", "LEQUAN_DATABASE_URL": ""}
    assert read_env_file(render_env_file(odd, header="two\nlines")) == odd
