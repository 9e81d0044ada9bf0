"""The metrics drawer's LLM servers card and the header's LLM chip follow the fleet live, in both languages: a
server that goes away turns red (the chip amber, '1 of 2 servers up'), and green again when it is back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from devtools.fake_llm import FakeLLM
from devtools.stack import App


@pytest.fixture(scope="module")
def fleet_app(stack_env, tmp_path_factory) -> Iterator[tuple[App, dict[str, FakeLLM]]]:
    fakes = {"gpu": FakeLLM(models=["qwen3:8b"], slots=2).start(),
             "cpu": FakeLLM(models=["phi4-mini:latest"], slots=1).start()}
    config = json.dumps({"backend": [{"name": "gpu", "url": fakes["gpu"].url, "slots": 2},
                                     {"name": "cpu", "kind": "openai", "url": fakes["cpu"].url}]})
    app = App({**stack_env, "LLM_BACKENDS": config, "OLLAMA_MODEL": "qwen3:8b", "LLM_CHECK_SECONDS": "2"},
              tmp_path_factory.mktemp("servers-card")).start("--no-workers")
    try:
        yield app, fakes
    finally:
        app.kill()
        for fake in fakes.values():
            fake.stop()


def test_the_servers_card_and_the_chip_follow_a_server_going_away_and_coming_back(browser, fleet_app, redis_server):
    app, fakes = fleet_app
    contexts = [browser.new_context(locale=locale, viewport={"width": 1280, "height": 860})
                for locale in ("en-US", "zh-CN")]
    try:
        pages = [context.new_page() for context in contexts]  # one in each language, side by side
        for page in pages:
            page.goto(app.url)
            card = page.get_by_test_id("metric-servers")
            expect(card.get_by_test_id("server-gpu")).to_have_attribute("data-state", "ok")
            expect(card.get_by_test_id("server-cpu")).to_have_attribute("data-state", "ok")
            expect(card.get_by_test_id("server-cpu").get_by_test_id("server-slots")).to_contain_text("0/1")
            expect(card.get_by_test_id("server-gpu").get_by_test_id("server-models")).to_have_text("qwen3:8b")
        fakes["cpu"].kill()
        try:
            for page, summary, chip in zip(pages, ("1 of 2 up", "1/2 在线"), ("1 of 2 servers up", "1/2 个服务器在线")):
                expect(page.get_by_test_id("server-cpu")).to_have_attribute("data-state", "down", timeout=25_000)
                expect(page.get_by_test_id("servers-summary")).to_have_text(summary)
                expect(page.get_by_test_id("health-llm")).to_have_attribute("data-state", "warn")
                expect(page.get_by_test_id("health-llm")).to_contain_text(chip)
        finally:
            fakes["cpu"].start()
        for page in pages:
            expect(page.get_by_test_id("server-cpu")).to_have_attribute("data-state", "ok", timeout=30_000)
            expect(page.get_by_test_id("health-llm")).to_have_attribute("data-state", "ok")
    finally:
        for context in contexts:
            context.close()
