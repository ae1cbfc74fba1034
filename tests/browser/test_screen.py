"""The big screen and the public page in headless Chromium, against a real
``lequan serve`` on the embedded default, as an operator and a reader use them.

One server for the module: the dining campaign live with a small stock for
WeChat's people (so a paced crowd sells it out while the screen watches)
and a larger one for Alipay's (so a claim after the pause meets the pause,
not an empty pool); a maker made in-process and a viewer made by the maker
with ``lequan operator add``. Every page is checked to load nothing from
anywhere but the server, and every test saves its screenshots.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from benchmarks import scenarios
from benchmarks.servers import serve_lequan
from lequan.client import LequanAuth
from lequan.services import admin
from tests.browser.conftest import Visit, screenshot

CHANNELS = (scenarios.CHANNEL, "alipay")
PEOPLE = 400
WECHAT_STOCK = 30
ALIPAY_STOCK = 200
CAMPAIGN = scenarios.CAMPAIGN_ID
TEMPLATE = scenarios.TEMPLATE
POOL = f"{CAMPAIGN}:r1:{scenarios.CHANNEL}"
# A bound on every wait for the screen: it is sent a snapshot a second, and
# this machine is small and shared.
WAIT_MS = 30_000
# The crowd's pace: slow enough that the screen sees the stock go down.
CROWD_PAUSE_S = 0.1

expect.set_options(timeout=WAIT_MS)


@dataclass(frozen=True)
class Served:
    origin: str
    secrets: dict[str, str]
    maker_token: str
    viewer_token: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with (
        tempfile.TemporaryDirectory() as directory,
        scenarios.prepare_stack(
            Path(directory),
            database_url=f"sqlite:///{directory}/lequan.db",
            redis_url="",
            people=PEOPLE,
            stock_by_channel={scenarios.CHANNEL: WECHAT_STOCK, "alipay": ALIPAY_STOCK},
            channels=CHANNELS,
        ) as stack,
    ):
        maker = admin.add_operator(stack.rt, "screen-maker", role="maker")
        stack.rt.store.dispose()
        added = subprocess.run(
            [
                sys.executable,
                "-c",
                "from lequan.cli import main; main()",
                *("operator", "add", "screen-viewer", "--role", "viewer"),
                *("--token", maker, "--json"),
            ],
            env={**os.environ, **stack.env},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        viewer = json.loads(added.stdout)["token"]
        with serve_lequan(stack.env) as port:
            yield Served(f"http://127.0.0.1:{port}", stack.secrets, maker, viewer)


def claim(served: Served, person: int, key: str) -> httpx.Response:
    """One signed claim for ``person``, through the channel they registered with."""
    channel = scenarios.channel_for(person, CHANNELS)
    auth = LequanAuth(channel, served.secrets[channel])
    with httpx.Client(base_url=served.origin, auth=auth, timeout=30) as client:
        return client.post(
            "/v1/claims", json=scenarios._claim_item(person), headers={"Idempotency-Key": key}
        )


class Crowd(threading.Thread):
    """WeChat's people claiming one after another, until stopped or all have."""

    def __init__(self, served: Served) -> None:
        super().__init__(daemon=True)
        self.served = served
        self.outcomes: Counter[str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        for person in range(0, PEOPLE, len(CHANNELS)):  # the even ones are WeChat's
            if self.stopping.wait(CROWD_PAUSE_S):
                return
            answer = claim(self.served, person, f"crowd-{person}")
            self.outcomes["issued" if answer.status_code == 201 else answer.json()["code"]] += 1

    def stop(self) -> None:
        self.stopping.set()
        self.join(60)


def open_screen(visit: Visit, served: Served, token: str) -> Page:
    """Sign in through the login page's fragment, as the link `make demo` prints does."""
    visit.origin = served.origin
    page = visit.page()
    page.goto(f"{served.origin}/screen/login#token={token}")
    page.wait_for_url(f"{served.origin}/screen", timeout=WAIT_MS)
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    return page


def kpi(page: Page, name: str) -> int:
    value = page.locator(f'.kpi[data-kpi="{name}"]').get_attribute("data-value")
    return int(value or 0)


def test_an_operator_watches_a_release_sell_out_and_pauses_it(
    served: Served, visit: Visit, request: pytest.FixtureRequest
) -> None:
    page = open_screen(visit, served, served.maker_token)
    pool = page.locator(f'.pool[data-pool="{POOL}"][data-template="{TEMPLATE}"]')
    expect(pool).to_have_attribute("data-remaining", str(WECHAT_STOCK))
    claims_before = kpi(page, "claims")
    screenshot(page, request.node.name, "1-before")

    crowd = Crowd(served)
    crowd.start()
    try:
        # The claim counter and the stock move while the crowd runs...
        page.wait_for_function(
            "([name, n]) => Number(document.querySelector(`.kpi[data-kpi='${name}']`)"
            ".dataset.value) > n",
            arg=["claims", claims_before],
            timeout=WAIT_MS,
        )
        page.wait_for_function(
            "([pool, n]) => { const e = document.querySelector(`.pool[data-pool='${pool}']`);"
            " return e && e.dataset.remaining !== '' && Number(e.dataset.remaining) < n; }",
            arg=[POOL, WECHAT_STOCK],
            timeout=WAIT_MS,
        )
        screenshot(page, request.node.name, "2-selling")
        # ...and the sell-out is marked on the pool and on the time series.
        expect(pool).to_have_class(re.compile(r"\bsold-out\b"))
        expect(pool).to_have_attribute("data-remaining", "0")
        expect(pool.locator(".soldout")).to_contain_text("售罄于")
        expect(page.locator("#chart-series")).not_to_have_attribute("data-sold-out-marks", "0")
        expect(page.locator('.kpi[data-kpi="issued"]')).to_have_attribute(
            "data-value", str(WECHAT_STOCK)
        )
        screenshot(page, request.node.name, "3-sold-out")
    finally:
        crowd.stop()
    assert crowd.outcomes["issued"] == WECHAT_STOCK, crowd.outcomes
    assert kpi(page, "claims") > claims_before

    # English, and still English after a reload: the choice is remembered.
    page.click("#lang-switch")
    expect(page.locator("h1")).to_have_text("Live Transaction Monitor")
    expect(page.locator('.kpi[data-kpi="sold_out_after"] h3')).to_have_text("Time to sell-out")
    expect(pool.locator(".soldout")).to_contain_text("Sold out at")
    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator("h1")).to_have_text("Live Transaction Monitor")
    expect(page.locator(".area-pools h2")).to_have_text("Stock by pool")
    screenshot(page, request.node.name, "4-english")

    # The kill switch, confirmed first; the next claim is refused.
    campaign = page.locator(f'.campaign[data-campaign="{CAMPAIGN}"]')
    expect(campaign).to_have_attribute("data-claims-paused", "false")
    pause = campaign.locator('button[data-action="pause-claims"]')
    expect(pause).to_be_enabled()
    pause.click()
    expect(page.locator("#confirm")).to_be_visible()
    screenshot(page, request.node.name, "5-confirm")
    page.click("#confirm-ok")
    expect(campaign).to_have_attribute("data-claims-paused", "true")
    expect(campaign.locator('button[data-action="resume-claims"]')).to_be_enabled()
    refused = claim(served, 1, "after-the-pause")  # Alipay's pool still has stock
    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "campaign_paused"
    screenshot(page, request.node.name, "6-paused")

    assert visit.foreign_requests() == []


def test_a_viewer_watches_but_every_switch_is_disabled(
    served: Served, visit: Visit, request: pytest.FixtureRequest
) -> None:
    page = open_screen(visit, served, served.viewer_token)
    expect(page.locator("#operator")).to_contain_text("screen-viewer")
    expect(page.locator("#readonly-note")).to_be_visible()
    switches = page.locator(f'.campaign[data-campaign="{CAMPAIGN}"] button[data-action]')
    expect(switches).to_have_count(2)
    for n in range(2):
        expect(switches.nth(n)).to_be_disabled()
    screenshot(page, request.node.name, "viewer")
    assert visit.foreign_requests() == []


def test_the_screen_asks_for_a_token_and_refuses_a_wrong_one(
    served: Served, visit: Visit, request: pytest.FixtureRequest
) -> None:
    visit.origin = served.origin
    page = visit.page()
    page.goto(f"{served.origin}/screen")
    expect(page).to_have_url(f"{served.origin}/screen/login")
    page.fill("#token", "lqo_" + "x" * 43)
    page.click("#submit")
    expect(page.locator("#message")).to_have_text("令牌无效或已停用")
    # A wrong token in the fragment: refused, and wiped from the address bar.
    page = visit.page()
    page.goto(f"{served.origin}/screen/login#token=lqo_wrong")
    expect(page.locator("#message")).to_have_text("令牌无效或已停用")
    assert "token" not in page.url
    expect(page).to_have_url(f"{served.origin}/screen/login")
    screenshot(page, request.node.name, "refused")
    assert visit.foreign_requests() == []


def test_the_public_page_needs_no_login_and_shows_no_person(
    served: Served, visit: Visit, request: pytest.FixtureRequest
) -> None:
    visit.origin = served.origin
    page = visit.page()
    page.goto(f"{served.origin}/public")
    card = page.locator(f'article.campaign[data-campaign="{CAMPAIGN}"]')
    expect(card).to_be_visible()
    expect(card.locator(f'.pool[data-pool="{POOL}"]').first).to_be_visible()
    expect(card.locator("dt").first).to_have_text("开抢时间")
    text = page.locator("body").inner_text()
    assert not re.search(r"\d{17}[\dX]|1\d{10}", text), "an ID number or a phone on the page"
    screenshot(page, request.node.name, "desktop")
    page.click("#lang-switch")
    expect(page.locator("h1")).to_have_text("Consumption vouchers, live")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, request.node.name, "phone")
    assert visit.foreign_requests() == []
