"""The browser side of the tour: a real Chromium, and one :class:`User` per browser context."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect

from demo import images, script
from demo.services import DemoError
from devtools.browser import ChromiumMissing, chromium, find_chromium
from devtools.page_user import PageUser
from devtools.waiting import wait_for

NARROW = {"width": 720, "height": 900}  # two of these side by side still read well at 960 px
WIDE = {"width": 1280, "height": 860}  # sidebar, chat and metrics panel at once


def start_browser(stack: contextlib.ExitStack, say: Callable[[str], None]) -> Browser:
    try:
        browser = stack.enter_context(chromium())
    except ChromiumMissing as error:
        raise DemoError(str(error)) from None
    say(f"Chromium {browser.version} ({find_chromium()})")
    return browser


class User(PageUser):
    """One person in their own browser context (so their own anonymous id, history and language)."""

    def __init__(self, name: str, page: Page) -> None:
        self.name, self.page = name, page

    # --- finding things

    def message(self, turn: script.Turn) -> Locator:
        return self.testid("message").filter(has_text=turn.prompt)

    def part(self, turn: script.Turn, testid: str) -> Locator:
        """One part of a message: queue-position, message-status, answer, attempt, stop-button, message-note."""
        return self.message(turn).get_by_test_id(testid)

    # --- doing things

    def send(self, turn: script.Turn) -> None:
        """Type the prompt and press Enter; return once the message is in the thread and the input is empty.

        Waiting matters: the composer empties the input when the server has taken the message, and would
        empty a next message typed before that moment along with it.
        """
        self.testid("message-input").fill(turn.prompt)
        self._enter(turn)

    def use_example(self, turn: script.Turn) -> None:
        """Click one of the empty chat's example prompts (it fills the input), then send it."""
        self.testid("example-prompt").filter(has_text=turn.prompt).click()
        expect(self.testid("message-input")).to_have_value(turn.prompt)
        self._enter(turn)

    def _enter(self, turn: script.Turn) -> None:
        self.testid("message-input").press("Enter")
        self.message(turn).last.wait_for()
        expect(self.testid("message-input")).to_have_value("")

    def new_chat(self) -> None:
        self.testid("new-chat").click()
        self.testid("chat-empty").wait_for()

    def widen(self) -> None:
        """A window wide enough for the docked sidebar and the metrics panel (a reload if they did not follow)."""
        self.page.set_viewport_size(WIDE)
        time.sleep(0.5)  # the drawers' slide-in
        if not (self.on_screen(self.testid("metrics-panel")) and self.on_screen(self.testid("new-chat"))):
            self.page.reload()
            self.testid("message-input").wait_for()
            wait_for(lambda: self.on_screen(self.testid("metrics-panel")), 10, "the metrics panel")

    # --- pictures

    def show(self, turn: script.Turn | None = None) -> None:
        """Bring a message into the middle of the thread (default: its end); move the mouse out of the way."""
        if turn is None:
            self.testid("chat-thread").evaluate("thread => thread.scrollTo(0, thread.scrollHeight)")
        else:
            self.message(turn).evaluate("message => message.scrollIntoView({block: 'center'})")
        self.page.mouse.move(self.page.viewport_size["width"] // 2, 28)

    def screenshot(self, testid: str = "") -> Image.Image:
        return images.load(self.testid(testid).screenshot() if testid else self.page.screenshot())
