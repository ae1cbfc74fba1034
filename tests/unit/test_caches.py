"""The campaign and merchant caches never keep a row read before a change this
process made: the caller that read it is answered, the next one reads again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

from lequan.adapters.memory_store import MemoryStore
from lequan.domain.campaigns import CampaignStatus
from lequan.ports import UnitOfWork
from lequan.rows import CampaignRow, MerchantRow
from lequan.services.campaigns import CampaignCache
from lequan.services.redemption_batches import MerchantCache
from tests.factories import dining_config, make_world

CAMPAIGN = "sh-dining-2024"


class _Reads:
    """A unit of work that answers one row, and lets something happen while it reads."""

    def __init__(
        self, row: CampaignRow, meanwhile: Callable[[str], None] = lambda _campaign_id: None
    ) -> None:
        self.row = row
        self.meanwhile = meanwhile

    @property
    def campaigns(self) -> _Reads:  # the unit of work and its one repository
        return self

    def get_campaign(self, campaign_id: str) -> CampaignRow:
        self.meanwhile(campaign_id)
        return self.row


def test_a_campaign_read_while_an_operator_changes_it_is_not_kept(tmp_path: Path) -> None:
    with make_world(store=MemoryStore(), tmp_path=tmp_path) as world:
        world.open_campaign(dining_config())
        cache = CampaignCache(world.rt, ttl_s=3600)
        live = cache.get(CAMPAIGN)
        assert live is not None
        assert live.status is CampaignStatus.LIVE
        cache.invalidate(CAMPAIGN)
        paused = replace(live, status=CampaignStatus.PAUSED)

        # The read sees the row as it was; the operator's pause lands meanwhile.
        during = cache.get(CAMPAIGN, cast(UnitOfWork, _Reads(live, cache.invalidate)))
        assert during is live  # that caller is answered with what it read ...
        after = cache.get(CAMPAIGN, cast(UnitOfWork, _Reads(paused)))
        assert after is paused  # ... but the next one reads again: nothing stale was kept
        assert cache.get(CAMPAIGN, cast(UnitOfWork, _Reads(live))) is paused  # now cached


class _ReadsMerchant:
    def __init__(self, row: MerchantRow, meanwhile: Callable[[], None] = lambda: None) -> None:
        self.row = row
        self.meanwhile = meanwhile

    @property
    def people(self) -> _ReadsMerchant:  # the unit of work and its one repository
        return self

    def get_merchant(self, merchant_id: str) -> MerchantRow:
        self.meanwhile()
        return self.row


def test_a_merchant_read_while_merchants_are_imported_is_not_kept() -> None:
    cache = MerchantCache(ttl_s=3600)
    enrolled = MerchantRow(
        "m-cafe-001", "cafe", "5812", "310106", frozenset({"in_store"}), "acq",
        frozenset({CAMPAIGN}),
    )  # fmt: skip
    unenrolled = replace(enrolled, enrolled_campaigns=frozenset())

    during = cache.get(cast(UnitOfWork, _ReadsMerchant(enrolled, cache.clear)), "m-cafe-001")
    assert during is enrolled
    after = cache.get(cast(UnitOfWork, _ReadsMerchant(unenrolled)), "m-cafe-001")
    assert after is unenrolled
    assert cache.get(cast(UnitOfWork, _ReadsMerchant(enrolled)), "m-cafe-001") is unenrolled
