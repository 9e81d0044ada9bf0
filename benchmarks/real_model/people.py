"""People in browsers: each in a browser context of their own (their own session, language and history), driving
the chat as a person does — the options popover, Enter, Stop, reload, the suggestion button, the language toggle.

The patterns are the demo's (``demo/browser.py``): wait for what the page shows, never for a guessed time.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from PIL import Image
from playwright.sync_api import Browser, Locator, expect

from devtools.page_user import PageUser
from devtools.waiting import wait_for

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
ANSWER_MS = 300_000  # an answer of the real model: its own pace, on a machine others share


class Person(PageUser):
    def __init__(self, browser: Browser, app_url: str, name: str, *, phone: bool = False) -> None:
        self.name = name
        self.context = browser.new_context(base_url=app_url, locale="en-US", viewport=PHONE if phone else DESKTOP,
                                           is_mobile=phone, has_touch=phone)
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()

    def open(self) -> Person:
        super().open()
        return self

    def close(self) -> None:
        self.context.close()

    # --- finding things

    def message(self, prompt: str) -> Locator:
        return self.testid("message").filter(has_text=prompt).last

    def job_id(self, prompt: str) -> str:
        return self.message(prompt).get_attribute("data-job-id")

    def status(self, prompt: str) -> str:
        return self.message(prompt).get_by_test_id("message-status").get_attribute("data-status") or ""

    def answer_text(self, prompt: str) -> str:
        answer = self.message(prompt).get_by_test_id("answer")
        return answer.inner_text() if answer.is_visible() else ""

    # --- doing things

    def new_chat(self) -> None:
        self.testid("new-chat").first.click()
        self.testid("chat-empty").wait_for()

    def answer_length(self, tokens: int | None) -> None:
        """The conversation's answer length in the settings popover (None: the server's default)."""
        self.options(max_tokens=tokens)

    def options(self, **values: float | None) -> None:
        """Set answer settings in the popover beside the composer (None: the server's default)."""
        self.testid("options-button").click()
        self.testid("options-panel").wait_for()
        for name, value in values.items():
            field = self.testid(f"option-{name}")
            field.fill("" if value is None else f"{value:g}")
            expect(field).to_have_value("" if value is None else f"{value:g}")
        self.page.keyboard.press("Escape")
        self.testid("options-panel").wait_for(state="hidden")

    def type(self, prompt: str) -> None:
        self.testid("message-input").fill(prompt)

    def enter(self, prompt: str) -> float:
        """Press Enter on a typed message; return the seconds until the thread shows it (a new chat's first
        message moves the page to the conversation's address first)."""
        pressed = time.monotonic()
        self.testid("message-input").press("Enter")
        self.message(prompt).wait_for(timeout=90_000)
        shown = time.monotonic() - pressed
        expect(self.testid("message-input")).to_have_value("")
        return shown

    def send(self, prompt: str) -> float:
        self.type(prompt)
        return self.enter(prompt)

    def wait_status(self, prompt: str, *statuses: str, timeout_ms: int = ANSWER_MS) -> str:
        badge = self.message(prompt).get_by_test_id("message-status")
        pattern = "|".join(statuses)
        expect(badge).to_have_attribute("data-status", re.compile(f"^({pattern})$"), timeout=timeout_ms)
        return badge.get_attribute("data-status")

    def wait_answer(self, prompt: str, chars: int, timeout_ms: int = ANSWER_MS) -> str:
        """Wait until the answer on screen has at least ``chars`` characters; return it."""
        deadline = time.monotonic() + timeout_ms / 1000
        while time.monotonic() < deadline:
            text = self.answer_text(prompt)
            if len(text) >= chars:
                return text
            self.page.wait_for_timeout(100)
        raise AssertionError(f"{self.name}: the answer to {prompt!r} did not reach {chars} characters")

    def show_metrics(self) -> None:
        if not self.on_screen(self.testid("metrics-panel")):
            self.testid("metrics-toggle").click()
            wait_for(lambda: self.on_screen(self.testid("metrics-panel")), 10, "the metrics panel")

    # --- pictures

    def shoot(self, path: Path, prompt: str | None = None) -> None:
        """The window, the message ``prompt`` (if given) in the middle, saved as a small PNG (256 colours)."""
        if prompt:
            self.message(prompt).evaluate("message => message.scrollIntoView({block: 'center'})")
        self.page.mouse.move(2, self.page.viewport_size["height"] // 2)  # no tooltip in the picture
        time.sleep(0.4)  # the last update paints
        picture = Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")
        picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path, optimize=True)
