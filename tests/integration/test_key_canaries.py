"""A platform started with another key file than its data's is refused at start,
with the fix, on every store: before, it said ready, answered every signed call
with a 500, filed a known ID number as a second person and let blacklisted
people through. A rotated key ring that keeps its old keys still starts; a
decryption that fails at run time is a 503 ``key_mismatch``, never a 500."""

from __future__ import annotations

import base64
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lequan.adapters.crypto import (
    AesGcmKeyRing,
    generate_keyring,
    keyring_from_json,
    keyring_to_json,
)
from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.sql import tables as t
from lequan.adapters.sql.unit_of_work import sql_store
from lequan.bootstrap import SetupError, build_runtime, start_platform
from lequan.client import LequanAuth
from lequan.config import Settings
from lequan.http.app import create_app
from lequan.services import persons
from lequan.services.keys import BLIND_INDEX_CANARY, key_canary_name
from tests.factories import World, id_number, make_world

with warnings.catch_warnings():
    # starlette's TestClient warns at import that it prefers the httpx2 package.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    with make_world(database_url=database_url, tmp_path=tmp_path / "first") as made:
        made.register(1)
        yield made


@contextmanager
def _started(world: World, keyring: AesGcmKeyRing, tmp_path: Path) -> Iterator[Any]:
    """A second platform on the same store, with ``keyring``."""
    settings = Settings(
        data_dir=tmp_path / "second",
        database_url=world.rt.settings.database_url,
        sweep_interval_s=3600,
    )
    rt = build_runtime(settings, clock=world.clock, keyring=keyring, gate=MemoryGate())
    try:
        platform = start_platform(rt, sweep=False)
    except BaseException:
        rt.store.dispose()
        raise
    try:
        yield platform
    finally:
        platform.close()


def _edited(keyring: AesGcmKeyRing, **changes: Any) -> AesGcmKeyRing:
    """The key ring with some of its key file's fields changed."""
    document = json.loads(keyring_to_json(keyring))
    document.update(changes)
    return keyring_from_json(json.dumps(document))


def _new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _canaries(world: World) -> dict[str, bytes]:
    with world.rt.store.unit_of_work(readonly=True) as uow:
        found: dict[str, bytes] = uow.keys.canaries()
    return found


def test_the_first_start_pins_the_key_ring(world: World) -> None:
    assert set(_canaries(world)) == {BLIND_INDEX_CANARY, key_canary_name("k1")}


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda ring: generate_keyring(), id="another key file"),
        pytest.param(lambda ring: _edited(ring, keys={"k1": _new_key()}), id="another k1"),
        pytest.param(lambda ring: _edited(ring, blind_index_key=_new_key()), id="another bidx"),
        pytest.param(
            lambda ring: _edited(ring, keys={"k2": _new_key()}, active_key_id="k2"),
            id="the old key dropped",
        ),
    ],
)
def test_a_key_ring_that_is_not_the_datas_is_refused_with_the_fix(
    world: World, tmp_path: Path, other: Any
) -> None:
    before = _canaries(world)
    with (
        pytest.raises(SetupError, match="does not match the store's data") as refused,
        _started(world, other(world.rt.keyring), tmp_path),
    ):
        pass
    assert "start with the key file the data was written with" in refused.value.message
    assert _canaries(world) == before  # nothing of the wrong ring was pinned


def test_a_rotated_key_ring_that_keeps_its_old_key_starts(world: World, tmp_path: Path) -> None:
    document = json.loads(keyring_to_json(world.rt.keyring))
    rotated = _edited(
        world.rt.keyring, keys={**document["keys"], "k2": _new_key()}, active_key_id="k2"
    )
    with _started(world, rotated, tmp_path) as platform:
        registered = persons.register(
            platform.rt,
            channel_id="wechat",
            channel_user_id="u1",
            id_number=id_number(1),
            name="张三",
            phone="13900000001",
            region_code="310104",
            location_region=None,
            consent=True,
            consent_version="2024-01",
        )
        assert not registered.created  # the same person, found by the same blind index
    assert set(_canaries(world)) == {BLIND_INDEX_CANARY, key_canary_name("k1"), "key:k2"}


def _forget_canaries(world: World) -> None:
    """The store as an upgrade to 0007 leaves it: data, and no canary yet."""
    with sql_store(world.rt.store).engine.begin() as connection:
        connection.execute(sa.delete(t.key_canaries))


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(lambda ring: generate_keyring(), id="another key file"),
        pytest.param(lambda ring: _edited(ring, blind_index_key=_new_key()), id="another bidx"),
    ],
)
def test_a_store_older_than_its_canaries_is_checked_against_its_data(
    world: World, tmp_path: Path, other: Any
) -> None:
    _forget_canaries(world)
    with (
        pytest.raises(SetupError, match="no key canaries yet"),
        _started(world, other(world.rt.keyring), tmp_path),
    ):
        pass
    assert _canaries(world) == {}
    with _started(world, world.rt.keyring, tmp_path):
        pass
    assert set(_canaries(world)) == {BLIND_INDEX_CANARY, key_canary_name("k1")}


def test_a_value_that_does_not_open_at_run_time_is_a_503_key_mismatch(world: World) -> None:
    """Were a process to hold other keys than its data's, a signed call is told to come
    back later, and the operator sees which code to act on, never a 500."""
    world.rt.keyring = generate_keyring()
    with TestClient(
        create_app(world.platform, close_on_shutdown=False), raise_server_exceptions=False
    ) as client:
        answer = client.get(
            "/v1/persons/u1/vouchers", auth=LequanAuth("wechat", world.secrets["wechat"])
        )
    assert answer.status_code == 503
    assert answer.json()["code"] == "key_mismatch"
    assert answer.headers["retry-after"] == "60"
