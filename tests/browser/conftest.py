"""A real browser for the page tests: Debian's headless Chromium, driven by
Playwright from PyPI (never ``playwright install``: no browser build is
downloaded). Without ``/usr/bin/chromium`` the tests are skipped, and fail
under ``LEQUAN_TEST_REQUIRE_SERVICES=1`` as CI sets it.

Each test saves its screenshots under ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    ViewportSize,
    sync_playwright,
)

from tests.conftest import REQUIRE_SERVICES

CHROMIUM = os.environ.get("LEQUAN_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless, and quiet: no network of its own (updates, sync, safe browsing),
# so every request the tests see is one the page made.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREEN_VIEWPORT: ViewportSize = {"width": 1920, "height": 1080}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the whole run."""
    if not Path(CHROMIUM).exists():
        message = f"no browser at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (LEQUAN_TEST_REQUIRE_SERVICES=1: required)", pytrace=False)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Visit:
    """A browser context of a test's own (its own cookies and storage), with every
    request its pages made, to check that none left the server's origin."""

    context: BrowserContext
    origin: str
    requests: list[str] = field(default_factory=list)

    def page(self) -> Page:
        return self.context.new_page()

    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the server (data: and blob: URLs are no requests)."""
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in ("data", "blob")
            and f"{urlsplit(url).scheme}://{urlsplit(url).netloc}" != self.origin
        ]


@pytest.fixture
def visit(browser: Browser) -> Iterator[Visit]:
    """A fresh context; the test sets ``origin`` before it browses."""
    context = browser.new_context(viewport=SCREEN_VIEWPORT, locale="zh-CN")
    found = Visit(context, origin="")

    def record(request: Request) -> None:
        found.requests.append(request.url)

    context.on("request", record)
    try:
        yield found
    finally:
        context.close()


def screenshot(page: Page, test: str, name: str) -> Path:
    """Save what the page shows now as ``test-artifacts/screenshots/<test>-<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / re.sub(r"[^\w.-]+", "_", f"{test}-{name}.png")
    page.screenshot(path=str(path))
    return path
