"""End-to-end fixtures: one app (main.py, with its own workers) per module, a fresh browser context per test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, expect

from devtools.browser import ChromiumMissing, chromium
from devtools.stack import App
from devtools.waiting import wait_for

expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def e2e_app(stack_env, tmp_path_factory) -> Iterator[App]:
    """main.py with its supervised workers, as a user runs it (but on the tests' Redis and fake LLM)."""
    app = App({**stack_env, "WORKER_PROCESSES": "2", "WORKER_THREADS": "4"}, tmp_path_factory.mktemp("e2e"))
    app.start()
    yield app
    app.kill()


@pytest.fixture
def new_context(browser, e2e_app, redis_server, fake_llm):
    contexts: list[BrowserContext] = []

    def make(locale: str = "en-US", width: int = 1280, height: int = 860) -> BrowserContext:
        context = browser.new_context(base_url=e2e_app.url, locale=locale,
                                      viewport={"width": width, "height": height})
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
    # Let jobs this test left running end, so that they don't take the next test's scripted replies.
    redis.Redis.from_url(redis_server.url).delete("qc:waiting")
    wait_for(lambda: not redis.Redis.from_url(redis_server.url).zcard("qc:leases"), timeout=30,
             what="running jobs to end")
    fake_llm.wait_idle(10)


@pytest.fixture
def page(new_context) -> Page:
    page = new_context().new_page()
    page.goto("/")
    expect(page.get_by_test_id("message-input")).to_be_visible()
    return page


def send(page: Page, text: str) -> None:
    """Type a message and press Enter, as a person would."""
    box = page.get_by_test_id("message-input")
    box.fill(text)
    box.press("Enter")


def last_message(page: Page):
    return page.get_by_test_id("message").last


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module. Not per session: Playwright's sync API keeps an event loop running in
    this thread while it is open, and later tests that call asyncio.run() must not inherit it."""
    with contextlib.ExitStack() as stack:
        try:
            launched = stack.enter_context(chromium())
        except ChromiumMissing as error:
            pytest.fail(f"No Chromium for the end-to-end tests. {error}", pytrace=False)
        yield launched
