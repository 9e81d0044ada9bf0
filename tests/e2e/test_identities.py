"""Browser identities in a real Chromium: a browser's jobs are nobody else's (pages, API, SSE), a session cookie
signed with another secret is a stranger's, sessions are written to Redis only when something changes, and the
page runs under its Content-Security-Policy without a single violation."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
from itsdangerous import TimestampSigner
from playwright.sync_api import expect

from devtools.fake_llm import Reply
from tasks import identities
from tests.e2e.conftest import last_message, send
from tests.ui.conftest import bearer


def session_id(cookie: str) -> str:
    return json.loads(base64.b64decode(cookie.split(".")[0] + "=="))["id"]


def forged(session: str, secret: str) -> str:
    """A session cookie for ``session`` as Starlette signs one, with ``secret``."""
    data = base64.b64encode(json.dumps({"id": session}).encode())
    return TimestampSigner(secret).sign(data).decode()


def test_a_browsers_job_is_not_found_through_the_api_or_sse_for_anyone_else(new_context, e2e_app, r):
    alice = new_context().new_page()
    alice.goto("/")
    send(alice, "alice's private question")
    expect(last_message(alice).get_by_test_id("message-status")).to_have_text("Completed")
    job_id = last_message(alice).get_attribute("data-job-id")
    conversation = alice.url.rsplit("/c/", 1)[1]
    assert r.hget(f"qc:job:{job_id}", "user").startswith("b:")
    bob = new_context().new_page()
    bob.goto("/")
    key, _ = identities.create_key("carol")
    with httpx.Client(base_url=e2e_app.url, timeout=10) as anonymous, \
            httpx.Client(base_url=e2e_app.url, timeout=10, headers=bearer(key)) as carol:
        for caller in (anonymous, carol):
            assert caller.get(f"/api/jobs/{job_id}").status_code == 404
            assert caller.get(f"/stream/status/{job_id}").status_code == 404
            assert caller.delete(f"/api/jobs/{job_id}").status_code == 404
            assert caller.post("/api/chat", json={"message": "and?", "conversation_id": conversation}) \
                .status_code == 404
        assert bob.request.get(f"/api/jobs/{job_id}").status == 404  # bob's browser, with its cookie
        assert bob.request.get(f"/stream/status/{job_id}").status == 404
        assert bob.request.delete(f"/api/jobs/{job_id}").status == 404
    assert r.hget(f"qc:job:{job_id}", "status") == "completed"


def test_a_session_cookie_signed_with_another_secret_is_a_strangers(new_context, e2e_app):
    alice_context = new_context()
    alice = alice_context.new_page()
    alice.goto("/")
    send(alice, "alice's diary")
    expect(last_message(alice).get_by_test_id("message-status")).to_have_text("Completed")
    victim = session_id(next(c["value"] for c in alice_context.cookies() if c["name"] == "session"))
    secret = (Path(e2e_app.env["DATA_DIR"]) / "secret").read_text().strip()

    def visit_as(cookie: str):
        context = new_context()
        context.add_cookies([{"name": "session", "value": cookie, "url": e2e_app.url}])
        page = context.new_page()
        page.goto(alice.url)
        return page

    for wrong in ("queuechat-dev-secret", "another install's secret, 32+ characters long"):
        intruder = visit_as(forged(victim, wrong))
        expect(intruder.get_by_test_id("chat-not-found")).to_be_visible()
        intruder.get_by_test_id("tab-history").click()
        expect(intruder.get_by_test_id("history-list")).to_be_visible()
        expect(intruder.get_by_text("alice's diary")).to_have_count(0)
        assert session_id(next(c["value"] for c in intruder.context.cookies() if c["name"] == "session")) != victim
    # The same forgery with the install's own secret does reach her: the signature is all that stands between.
    insider = visit_as(forged(victim, secret))
    expect(last_message(insider).get_by_test_id("answer")).to_have_text("You said: alice's diary")


def test_sessions_are_written_to_redis_only_when_something_changes(new_context, r):
    context = new_context()
    page = context.new_page()
    page.goto("/")
    expect(page.get_by_test_id("message-input")).to_be_visible()
    page.reload()
    expect(page.get_by_test_id("message-input")).to_be_visible()
    assert not r.keys("qc-session:*"), "two visits that changed nothing wrote nothing"
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("new-chat")).to_contain_text("新对话")
    session = session_id(next(c["value"] for c in context.cookies() if c["name"] == "session"))
    stored = r.get(f"qc-session:user-{session}")
    assert stored and json.loads(stored)["lang"] == "zh"
    assert r.keys("qc-session:*") == [f"qc-session:user-{session}"]


def test_the_page_runs_under_its_content_security_policy_without_violations(new_context, fake_llm):
    context = new_context()
    context.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                            "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = page.goto("/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    fake_llm.script(Reply(thinking=["Thinking ", "first."],
                          tokens=["**Bold**, `code`, a [link](https://example.com) and\n\n", "```python\n",
                                  "print('hi')\n", "```\n\n", "| a | b |\n|---|---|\n| 1 | 2 |\n"], token_delay=0.02))
    send(page, "show me some *markdown*")
    message = last_message(page)
    expect(message.get_by_test_id("message-status")).to_have_text("Completed")
    expect(message.get_by_test_id("answer").locator("pre")).to_contain_text("print('hi')")
    page.get_by_test_id("tab-history").click()
    expect(page.get_by_test_id("history-item").first).to_contain_text("show me some")
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("new-chat")).to_contain_text("新对话")
    assert page.evaluate("window.__csp") == []
    assert not [e for e in errors if "Content Security Policy" in e or "Refused to" in e], errors
    assert not errors, errors
