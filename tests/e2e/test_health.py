"""The header's health chips follow reality without a reload: the LLM going away and coming back, Redis too."""

from __future__ import annotations

from playwright.sync_api import expect

from devtools.fake_llm import FakeLLM
from tests.e2e.conftest import last_message, send


def test_llm_chip_turns_red_when_ollama_is_gone_and_green_when_it_is_back(app_factory, browser):
    llm = FakeLLM().start()
    port = llm.port
    app = app_factory(OLLAMA_HOST=llm.url, WORKER_PROCESSES="1", LLM_CHECK_SECONDS="2")
    context = browser.new_context(base_url=app.url)
    page = context.new_page()
    try:
        page.goto("/")
        chip = page.get_by_test_id("health-llm")
        expect(chip).to_have_attribute("data-state", "ok")
        llm.stop()
        expect(chip).to_have_attribute("data-state", "down", timeout=15_000)
        send(page, "are you there?")
        expect(last_message(page).get_by_test_id("attempt")).to_be_visible(timeout=20_000)  # retrying meanwhile
        llm = FakeLLM(port=port).start()
        expect(chip).to_have_attribute("data-state", "ok", timeout=15_000)
        expect(last_message(page).get_by_test_id("answer")).to_have_text("You said: are you there?", timeout=30_000)
    finally:
        context.close()
        llm.stop()


def test_redis_chip_and_recovery_without_a_reload(app_factory, browser, redis_server):
    app = app_factory(WORKER_PROCESSES="1")
    context = browser.new_context(base_url=app.url)
    page = context.new_page()
    try:
        page.goto("/")
        chip = page.get_by_test_id("health-redis")
        expect(chip).to_have_attribute("data-state", "ok")
        redis_server.stop()
        try:
            expect(chip).to_have_attribute("data-state", "down", timeout=15_000)
            send(page, "while Redis is away")
            expect(page.get_by_test_id("composer-error")).to_be_visible()
            expect(page.get_by_test_id("message-input")).to_have_value("while Redis is away")  # nothing lost
        finally:
            redis_server.start()
        expect(chip).to_have_attribute("data-state", "ok", timeout=20_000)
        page.get_by_test_id("send-button").click()
        expect(last_message(page).get_by_test_id("answer")).to_have_text("You said: while Redis is away",
                                                                         timeout=30_000)
    finally:
        context.close()
