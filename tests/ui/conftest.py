"""Browser fixtures: Debian's Chromium driven by Playwright's async API, and the registry app on a free port.

``browser`` is launched once per test rather than once per session: Playwright's async objects belong
to the event loop that started them, and every test (with its ``db`` connection and ``sms_sandbox``
server) runs in its own loop. A launch costs about a second; sharing one across loops would not work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.support.stack import registry_running

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Playwright's default for waits and navigation; the machine is shared and loaded.
TIMEOUT_MS = 30_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium from Debian's package (Playwright never downloads a browser here)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Browser, ui_server: str) -> AsyncIterator[Page]:
    """A fresh context and page in Chinese, in UTC, so the pages must convert times to Asia/Shanghai.

    It depends on ``ui_server`` so that it is closed first: a page left open keeps its live-update stream,
    which the server would wait for when stopping.
    """
    context = await browser.new_context(locale="zh-CN", timezone_id="UTC", viewport={"width": 1440, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture
async def ui_server(database_url: str) -> AsyncIterator[str]:
    """The registry app (API and UI) under uvicorn on a free loopback port; yields its base URL."""
    async with registry_running(database_url) as base_url:
        yield base_url
