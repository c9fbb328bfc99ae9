"""The web console in a real headless Chromium (Debian's, /usr/bin/chromium), for tests/e2e/test_console*.py.

Playwright drives the browser; its own browser downloads are never used.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from playwright.async_api import Browser, Page, async_playwright

from outbox_worker import api_keys
from outbox_worker.api import create_app
from outbox_worker.settings import Settings
from tests.live_server import serve

CHROMIUM = os.environ.get("OUTBOX_TEST_CHROMIUM", "/usr/bin/chromium")
# docs/console.md's screenshots are refreshed on request only
# (OUTBOX_CONSOLE_SCREENSHOTS=docs/console), so that a test run leaves the
# checkout as it found it; otherwise they go to a scratch directory.
SCREENSHOTS = Path(
    os.environ.get("OUTBOX_CONSOLE_SCREENSHOTS") or tempfile.mkdtemp(prefix="outbox-console-shots-")
)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def serve_console(database_url: str) -> Iterator[str]:
    """``outbox-worker api`` (the console included) over real HTTP on loopback."""
    unlimited = Settings(database_url=database_url, api_rate_per_key=0, api_rate_per_ip=0)
    with serve(create_app(unlimited)) as url:
        yield url


def issue_key(database_url: str, owner: str, *, operator: bool = False) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return api_keys.create_api_key(conn, owner, operator=operator).key


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (as .ci/run does)")
    async with async_playwright() as p:
        # --no-sandbox: tests and CI run as root, where Chromium's sandbox refuses to start.
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """A page with hooks that record any script the console did not ship:
    dialogs (alert, confirm, prompt), console errors (a CSP refusal is one)
    and calls of ``window.__xss``, the function hostile payloads call."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    async def xss_calls(self) -> int:
        calls: int = await self.page.evaluate("window.__xssCalls || 0")
        return calls


async def new_page(browser: Browser, viewport: dict[str, int] = DESKTOP) -> Watched:
    context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = await context.new_page()
    page.set_default_timeout(10_000)
    await page.add_init_script("window.__xss = () => { window.__xssCalls = (window.__xssCalls || 0) + 1; };")
    return Watched(page)


async def sign_in(page: Page, base_url: str, key: str) -> None:
    await page.goto(base_url + "/console/login")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r".*/console/(webhooks|health).*"))


async def shot(page: Page, name: str) -> None:
    """A screenshot for docs/console.md (the viewport only: small PNGs)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


@contextmanager
def http_session(base_url: str, key: str) -> Iterator[tuple[httpx.Client, str]]:
    """A signed-in console session outside the browser, and its CSRF token."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        answer = client.post("/console/login", data={"key": key}, follow_redirects=True)
        assert answer.status_code == 200, answer.text
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', answer.text)
        assert found, "no CSRF token on the signed-in page"
        yield client, found.group(1)
