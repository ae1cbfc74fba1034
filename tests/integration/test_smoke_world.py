from pathlib import Path

from lequan.services.claiming import ClaimRequest
from lequan.services.idempotency import Idempotency
from tests.factories import dining_config, make_world


def test_claim_on_each_store(database_url: str, tmp_path: Path) -> None:
    with make_world(database_url=database_url, tmp_path=tmp_path) as world:
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
