"""Public reference data shipped with lequan: GB/T 2260 regions, ISO 18245 MCCs."""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

__all__ = ["province_codes", "regions"]


@cache
def regions() -> dict[str, str]:
    """region code -> Chinese name, for the provinces and Shanghai's districts."""
    text = resources.files(__package__).joinpath("regions.csv").read_text(encoding="utf-8")
    return {row["code"]: row["name_zh"] for row in csv.DictReader(text.splitlines())}


@cache
def province_codes() -> frozenset[str]:
    return frozenset(code[:2] for code in regions() if code.endswith("0000"))
