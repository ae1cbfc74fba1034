"""The screen's own assets, without a browser: the subset font has every
character the pages write, the tile charts name the regions of regions.csv,
every label exists in both languages, and nothing points off the server."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fontTools.ttLib import TTFont

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "src" / "lequan" / "web"
PAGES = sorted((WEB / "pages").glob("*.html"))
SCRIPTS = sorted((WEB / "static" / "screen").glob("*.js"))
STYLES = sorted((WEB / "static" / "screen").glob("*.css"))
FONTS = sorted((WEB / "static" / "vendor" / "noto-sans-sc").glob("*.woff2"))
REGIONS = ROOT / "src" / "lequan" / "data" / "regions.csv"
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def _regions() -> list[dict[str, str]]:
    with REGIONS.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _tiles(name: str) -> dict[str, list[Any]]:
    """One tile layout of tilemap.js, read as the JSON it is written as."""
    text = (WEB / "static" / "screen" / "tilemap.js").read_text(encoding="utf-8")
    body = re.search(rf"export const {name} = (\{{.*?\n\}});", text, re.S)
    assert body, name
    return dict(json.loads(re.sub(r",\n\}$", "\n}", body.group(1))))


def test_the_pages_and_their_assets_exist() -> None:
    assert [p.name for p in PAGES] == ["login.html", "public.html", "screen.html"]
    assert {p.name for p in FONTS} == {
        "noto-sans-sc-subset-400.woff2",
        "noto-sans-sc-subset-700.woff2",
    }
    assert (WEB / "static" / "vendor" / "echarts" / "echarts.min.js").exists()
    assert (WEB / "static" / "vendor" / "noto-sans-sc" / "LICENSE").read_text().find("OFL") > 0


@pytest.mark.parametrize("font", FONTS, ids=lambda p: p.name)
def test_the_subset_font_writes_every_character_the_pages_show(font: Path) -> None:
    """Else Chinese shows as empty boxes on a machine without a CJK font.
    After changing the pages' text: scripts/vendor-assets."""
    shown = set(" 0123456789¥%:：，、（）·—…")
    for path in [*PAGES, *SCRIPTS]:
        shown |= set(HAN.findall(path.read_text(encoding="utf-8")))
    for row in _regions():
        shown |= set(row["name_zh"])
    covered = {chr(c) for c in TTFont(font).getBestCmap()}
    assert sorted(shown - covered) == []


def test_the_district_tiles_are_shanghais_sixteen_districts() -> None:
    districts = {r["code"]: r for r in _regions() if r["parent"] == "310000"}
    tiles = _tiles("CITY_TILES")
    assert len(districts) == 16
    assert set(tiles) == set(districts)
    for code, (name, name_en, *_rest) in tiles.items():
        assert (name, name_en) == (districts[code]["name_zh"], districts[code]["name_en"])


def test_the_province_tiles_are_the_provinces() -> None:
    provinces = {r["code"]: r for r in _regions() if r["level"] == "province"}
    tiles = _tiles("NATIONAL_TILES")
    assert set(tiles) == set(provinces)
    for code, (name, name_en, *_rest) in tiles.items():
        assert (name, name_en) == (provinces[code]["name_zh"], provinces[code]["name_en"])


@pytest.mark.parametrize("layout", ["CITY_TILES", "NATIONAL_TILES"])
def test_no_two_regions_share_a_tile(layout: str) -> None:
    cells = [tuple(cell) for region in _tiles(layout).values() for cell in region[3]]
    assert len(cells) == len(set(cells))


def _labels(lang: str) -> set[str]:
    text = (WEB / "static" / "screen" / "i18n.js").read_text(encoding="utf-8")
    block = re.search(rf"\n  {lang}: \{{\n(.*?)\n  \}},", text, re.S)
    assert block, lang
    return set(re.findall(r"^\s{4}(\w+):", block.group(1), re.M))


def test_every_label_is_in_both_languages_and_every_use_has_a_label() -> None:
    zh, en = _labels("zh"), _labels("en")
    assert zh == en
    used: set[str] = set()
    for page in PAGES:
        used |= set(re.findall(r'data-i18n(?:-title|-placeholder)?="(\w+)"', page.read_text()))
    for script in SCRIPTS:
        used |= set(re.findall(r'\bt\("(\w+)"', script.read_text(encoding="utf-8")))
    assert sorted(used - zh) == []


def test_nothing_is_loaded_from_anywhere_but_the_server() -> None:
    """No CDN, no web font service: every URL in the pages, scripts and styles is
    the server's own (the browser tests check the requests themselves)."""
    for path in [*PAGES, *SCRIPTS, *STYLES]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?:src|href|url)\s*[=(]\s*[\"']?(?:https?:)?//", text), path.name
        assert not re.search(r"fetch\(\s*[\"'`](?:https?:)?//", text), path.name
