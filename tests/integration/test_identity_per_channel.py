"""What a channel registers a person with is that channel's own, on every store.

Before, a channel that knew an ID number could replace the name, phone and
residence region another channel registered the person with (moving them
out of Shanghai made them ineligible there), and its answer (``created:
false`` with the person id the other channel had heard) told it the person
was registered elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from lequan.adapters.sql import migrate
from lequan.adapters.sql.engine import create_engine
from lequan.domain.campaigns import Eligibility
from lequan.services import persons
from tests.factories import World, dining_config, id_number, make_world

NOW = "2026-12-06 12:00:00"  # as text: both stores read it as a timestamp
SHANGHAI, BEIJING = "310104", "110101"


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    with make_world(database_url=database_url, tmp_path=tmp_path) as made:
        # Who may claim is decided on where the person lives, as registered.
        made.open_campaign(
            dining_config(eligibility=Eligibility(regions=("310000",), check="residence"))
        )
        yield made


def _register(world: World, n: int, *, channel: str, region: str, name: str = "张三") -> Any:
    return persons.register(
        world.rt,
        channel_id=channel,
        channel_user_id=f"{channel}-user-{n}",
        id_number=id_number(n),
        name=name,
        phone=f"139{n:08d}",
        region_code=region,
        location_region=None,
        consent=True,
        consent_version="2024-01",
    )


def _claimant(world: World, channel: str, n: int) -> tuple[str, str, bool]:
    """What a claim in ``channel`` decides eligibility on (the claim path's own lookup)."""
    user = f"{channel}-user-{n}"
    with world.rt.store.unit_of_work(readonly=True) as uow:
        found: tuple[str, str, bool] = uow.people.claimants(channel, [user])[user]
    return found


def test_another_channel_cannot_change_what_a_channel_registered(world: World) -> None:
    first = _register(world, 1, channel="wechat", region=SHANGHAI)
    assert [v.eligible for v in first.verdicts] == [True]

    elsewhere = _register(world, 1, channel="alipay", region=BEIJING, name="李四")

    assert [v.eligible for v in elsewhere.verdicts] == [False]  # alipay's own say
    person, region, blacklisted = _claimant(world, "wechat", 1)
    assert (region, blacklisted) == (SHANGHAI, False)  # wechat's person still lives here
    again = _register(world, 1, channel="wechat", region=SHANGHAI)
    assert [v.eligible for v in again.verdicts] == [True]
    # Still one human inside: the two accounts share the person limits are kept by.
    assert _claimant(world, "alipay", 1)[0] == person


def test_a_channel_cannot_tell_whether_another_registered_the_person(world: World) -> None:
    known = _register(world, 1, channel="wechat", region=SHANGHAI)
    seen_elsewhere = _register(world, 1, channel="alipay", region=SHANGHAI)
    never_seen = _register(world, 2, channel="alipay", region=SHANGHAI)

    assert seen_elsewhere.created is never_seen.created is True
    assert seen_elsewhere.person_id != known.person_id
    internal = _claimant(world, "wechat", 1)[0]
    assert internal not in (known.person_id, seen_elsewhere.person_id)
    # Stable within a channel: the same account registering again hears the same id.
    again = _register(world, 1, channel="alipay", region=SHANGHAI)
    assert (again.created, again.person_id) == (False, seen_elsewhere.person_id)


def test_a_channel_may_update_what_it_registered_itself(world: World) -> None:
    _register(world, 1, channel="wechat", region=SHANGHAI)
    moved = _register(world, 1, channel="wechat", region=BEIJING)
    assert moved.region_code == BEIJING
    assert [v.eligible for v in moved.verdicts] == [False]
    assert _claimant(world, "wechat", 1)[1] == BEIJING


def test_the_upgrade_gives_every_account_its_persons_attributes_and_back(
    empty_database_url: str,
) -> None:
    engine = create_engine(empty_database_url)
    person = {
        "id": "p_1",
        "id_number_bidx": "b" * 64,
        "id_number_enc": b"id",
        "name_enc": b"name",
        "phone_enc": b"phone",
        "phone_bidx": "f" * 64,
        "key_id": "k1",
        "residence_region": SHANGHAI,
        "consent_version": "2024-01",
        "consent_at": NOW,
        "created_at": NOW,
    }
    try:
        migrate.upgrade(engine, "0007")
        with engine.begin() as connection:
            connection.execute(sa.text(_insert("persons", person)), person)
            for channel in ("wechat", "alipay"):
                account = {
                    "channel_id": channel,
                    "channel_user_id": "u1",
                    "person_id": "p_1",
                    "created_at": NOW,
                }
                connection.execute(sa.text(_insert("person_accounts", account)), account)
        migrate.upgrade(engine, "0008")
        with engine.connect() as connection:
            accounts = connection.execute(
                sa.text(
                    "SELECT channel_id, name_enc, phone_bidx, residence_region "
                    "FROM person_accounts ORDER BY channel_id"
                )
            ).all()
        assert [tuple(a) for a in accounts] == [
            ("alipay", b"name", "f" * 64, SHANGHAI),
            ("wechat", b"name", "f" * 64, SHANGHAI),
        ]
        migrate.downgrade(engine, "0007")
        with engine.connect() as connection:
            back = connection.execute(
                sa.text("SELECT name_enc, phone_bidx, residence_region FROM persons")
            ).all()
        assert [tuple(b) for b in back] == [(b"name", "f" * 64, SHANGHAI)]
    finally:
        engine.dispose()


def _insert(table: str, row: dict[str, Any]) -> str:
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})"
