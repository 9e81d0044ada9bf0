"""A browser that a load balancer sends to one app instance, then to another (both ``main.py --no-workers`` on
one Redis, one set of workers, the same STORAGE_SECRET): its session lives in Redis, so the second instance shows
the same conversations and the conversation itself."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import last_message, send


def test_a_session_started_on_one_instance_goes_on_on_the_other(browser, two_apps, redis_server, fake_llm):
    a, b = two_apps
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
    try:
        on_a = context.new_page()
        on_a.goto(a.url)
        send(on_a, "asked on instance A")
        expect(last_message(on_a).get_by_test_id("message-status")).to_have_text("Completed")
        conversation = on_a.url.rsplit("/", 1)[-1]
        on_b = context.new_page()  # the same cookies (they are not per port), the other instance
        on_b.goto(b.url)
        item = on_b.get_by_test_id("conversation-item")
        expect(item).to_have_count(1)
        expect(item).to_have_attribute("data-conversation-id", conversation)
        on_b.goto(on_a.url.replace(a.url, b.url))  # the conversation's own link, on B
        expect(last_message(on_b).get_by_test_id("answer")).to_have_text("You said: asked on instance A")
    finally:
        context.close()
