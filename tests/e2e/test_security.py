"""HTML and JavaScript in prompts and in LLM output are shown inert: no handler fires, in the chat or history."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.e2e.conftest import last_message, send
from tests.fake_ollama import Reply

PAYLOADS = [
    '<img src=x onerror="window.__xss=\'img\'">',
    "<script>window.__xss='script'</script>",
    "[click me](javascript:window.__xss='link')",
    '<a href="javascript:window.__xss=\'href\'">a link</a>',
    '<svg onload="window.__xss=\'svg\'"></svg>',
    '<iframe srcdoc="<script>parent.__xss=\'iframe\'</script>"></iframe>',
    '<details open ontoggle="window.__xss=\'details\'">x</details>',
]


def test_hostile_prompt_and_answer_render_inert(page, fake_llm):
    hostile = "\n\n".join(PAYLOADS)
    fake_llm.script(Reply(tokens=[p + "\n\n" for p in PAYLOADS] + ["</script><b>still here</b>"]))
    send(page, hostile)
    message = last_message(page)
    expect(message.get_by_test_id("message-status")).to_have_text("Completed")
    answer = message.get_by_test_id("answer")
    expect(answer).to_contain_text("still here")
    dangerous = answer.locator("script, iframe, svg[onload], img[onerror], details[ontoggle]")
    assert dangerous.count() == 0, answer.inner_html()
    for link in answer.locator("a").all():
        assert not (link.get_attribute("href") or "").lower().startswith("javascript:")
        link.click(no_wait_after=True, force=True)
    user_bubble = message.get_by_test_id("bubble-user-" + message.get_attribute("data-job-id"))
    expect(user_bubble).to_contain_text("<script>")  # shown as text, not markup
    page.get_by_test_id("tab-history").click()
    expect(page.get_by_test_id("history-item").first).to_contain_text("<img")
    page.reload()
    expect(last_message(page).get_by_test_id("answer")).to_contain_text("still here")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
