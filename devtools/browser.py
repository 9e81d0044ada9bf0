"""The system Chromium, driven by Playwright, for the end-to-end tests, the benchmarks and the demo.

Always a Chromium installed on the machine (Playwright's own download is not used: a fresh machine cannot fetch
it), found in ``CHROMIUM_PATH``, ``/usr/bin/chromium``, or ``chromium``/``chromium-browser`` on the PATH. Without
one, this fails at once and says how to install one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Error, Playwright, sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic", "--no-first-run",
        "--disable-component-update", "--disable-sync"]
INSTALL = "Install one (`sudo apt-get install chromium`), or set CHROMIUM_PATH to a Chromium or Chrome binary."


class ChromiumMissing(RuntimeError):
    """No usable Chromium: the message says how to get one."""


def find_chromium() -> str:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        if Path(configured).exists():
            return configured
        raise ChromiumMissing(f"CHROMIUM_PATH is {configured}, which does not exist. {INSTALL}")
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    raise ChromiumMissing("No Chromium found (CHROMIUM_PATH, /usr/bin/chromium, chromium, chromium-browser). "
                          + INSTALL)


def launch(playwright: Playwright) -> Browser:
    """A headless Chromium for ``playwright`` (the sync API)."""
    executable = find_chromium()
    try:
        return playwright.chromium.launch(executable_path=executable, args=ARGS)
    except Error as error:
        raise ChromiumMissing(f"Chromium at {executable} did not start. {INSTALL}\n{error}") from None


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Playwright and a headless Chromium, closed on the way out.

    Playwright's sync API keeps an event loop running in this thread while it is open: code that later calls
    ``asyncio.run()`` in the same thread must run after the block, not inside it.
    """
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            with contextlib.suppress(Error):
                browser.close()
