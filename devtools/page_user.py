"""A person at a queuechat page in Chromium: the moves that the demo's tour and the real-model tour both make.

Everything is found by ``data-testid``, never by text, so the same moves work in both languages.
"""

from __future__ import annotations

from playwright.sync_api import Locator, Page

from devtools.waiting import wait_for


class PageUser:
    name: str
    page: Page

    def open(self) -> None:
        self.page.goto("/")
        self.testid("message-input").wait_for()

    def testid(self, testid: str) -> Locator:
        return self.page.get_by_test_id(testid)

    def on_screen(self, locator: Locator) -> bool:
        """Inside the window: a closed drawer is still "visible" to Playwright, just moved off the side."""
        box = locator.bounding_box()
        return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= self.page.viewport_size["width"] + 1

    def set_priority(self, priority: str) -> None:
        """Choose the priority in the sidebar, sliding it open first when the window is too narrow to dock it."""
        button = self.testid(f"priority-{priority}")
        overlay = not self.on_screen(button)
        if overlay:
            self.testid("sidebar-toggle").click()
        button.click()
        if overlay:  # a click beside the drawer closes it
            size = self.page.viewport_size
            self.page.mouse.click(size["width"] - 24, size["height"] // 2)
            wait_for(lambda: not self.on_screen(button), 10, "the sidebar to close")

    def switch_language(self, new_chat_label: str) -> None:
        """Click the language toggle; return once the page speaks the other language (its new-chat button says so)."""
        self.testid("lang-toggle").click()
        self.testid("new-chat").filter(has_text=new_chat_label).first.wait_for(state="attached")
