"""One claim through a whole platform on each store: SQLite, PostgreSQL and the
in-memory one the fast service tests run on."""

from pathlib import Path

from lequan.adapters.memory_store import MemoryStore
from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Idempotency
from lequan.services.invariants import check_campaign
from tests.factories import World, dining_config, make_world


def _claim_one(world: World) -> None:
    world.open_campaign(dining_config(stock={"wechat": {"d300-90": 1}}))
    user = world.register(1)
    [result] = world.platform.claims.claim(
        "wechat",
        [
            ClaimRequest(
                user,
                "sh-dining-2024",
                "r1",
                "d300-90",
                "310104",
                Idempotency("wechat", "k1", "h"),
            )
        ],
    )
    assert result.outcome == "issued"
    check = check_campaign(world.rt, "sh-dining-2024")
    assert check.ok, check.problems
    assert check.issued == 1


def test_claim_on_each_store(database_url: str, tmp_path: Path) -> None:
    with make_world(database_url=database_url, tmp_path=tmp_path) as world:
        _claim_one(world)


def test_claim_on_the_memory_store(tmp_path: Path) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        _claim_one(world)
