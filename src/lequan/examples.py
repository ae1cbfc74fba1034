"""The real-shaped example campaigns in ``examples/``, moved in time for use now.

The demo, the benchmarks and the tests all need "the Shanghai dining
campaign, but opening at this instant, with this stock"; this is that one
place. (The files live beside the package in a source checkout.)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from lequan.domain.campaigns import CampaignConfig
from lequan.services.campaigns import parse_campaign

__all__ = ["EXAMPLES_DIR", "example_campaign", "example_merchants"]

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
ROUND_LENGTH = timedelta(days=7)


def example_campaign(
    file: str = "shanghai-dining-2024.yaml",
    *,
    release_at: datetime,
    stock: dict[str, dict[str, int]] | None = None,
    **updates: Any,
) -> CampaignConfig:
    """The example with its weekly rounds moved to start at ``release_at``.

    ``stock`` (channel -> template -> vouchers) replaces every round's
    stock; ``updates`` replace top-level fields (``budget_fen=…``, ``id=…``).
    """
    data = parse_campaign((EXAMPLES_DIR / file).read_bytes()).model_dump()
    for n, round_data in enumerate(data["rounds"]):
        round_data["release_at"] = release_at + n * ROUND_LENGTH
        round_data["ends_at"] = release_at + (n + 1) * ROUND_LENGTH - timedelta(seconds=1)
        if stock is not None:
            round_data["stock"] = stock
    data.update(updates)
    return CampaignConfig.model_validate(data)


def example_merchants(*, dining_only: bool = False) -> str:
    """The example merchants CSV; ``dining_only`` leaves them out of the lodging campaign."""
    text = (EXAMPLES_DIR / "merchants.csv").read_text(encoding="utf-8")
    return text.replace("sh-lodging-2024", "") if dining_only else text
