"""Public reference data shipped with lequan: GB/T 2260 regions, ISO 18245 MCCs."""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

__all__ = ["CATEGORY_NAMES", "mcc_category", "province_codes", "region_names", "regions"]


@cache
def regions() -> dict[str, str]:
    """region code -> Chinese name, for the provinces and Shanghai's districts."""
    text = resources.files(__package__).joinpath("regions.csv").read_text(encoding="utf-8")
    return {row["code"]: row["name_zh"] for row in csv.DictReader(text.splitlines())}


@cache
def province_codes() -> frozenset[str]:
    return frozenset(code[:2] for code in regions() if code.endswith("0000"))


@cache
def region_names() -> dict[str, tuple[str, str]]:
    """region code -> (Chinese name, English name)."""
    text = resources.files(__package__).joinpath("regions.csv").read_text(encoding="utf-8")
    return {
        row["code"]: (row["name_zh"], row["name_en"]) for row in csv.DictReader(text.splitlines())
    }


@cache
def mcc_category() -> dict[str, str]:
    """MCC -> its merchant category group (dining, lodging, ...)."""
    text = resources.files(__package__).joinpath("mcc.csv").read_text(encoding="utf-8")
    return {row["mcc"]: row["category"] for row in csv.DictReader(text.splitlines())}


# The merchant category groups of mcc.csv, as a screen names them (Chinese, English).
CATEGORY_NAMES: dict[str, tuple[str, str]] = {
    "dining": ("餐饮", "Dining"),
    "lodging": ("住宿", "Lodging"),
    "retail": ("零售", "Retail"),
    "grocery": ("商超", "Grocery"),
    "appliances": ("家电", "Appliances"),
    "electronics": ("数码", "Electronics"),
    "tourism": ("文旅", "Tourism"),
    "travel": ("出行", "Travel"),
    "stored_value": ("储值", "Stored value"),
    "other": ("其他", "Other"),
    "unknown": ("未知", "Unknown"),
}
