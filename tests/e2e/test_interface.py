"""The rest of the interface in a real Chromium: priority, history, metrics, chart, language, suggestions,
models, health, per-user isolation, coming back after closing the browser."""

from __future__ import annotations

from playwright.sync_api import expect

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tests.e2e.conftest import last_message, send


def test_priority_applies_to_the_next_message_and_is_shown(page, r):
    page.get_by_test_id("priority-high").click()
    expect(page.get_by_test_id("priority-high")).to_have_attribute("aria-checked", "true")
    send(page, "urgent question")
    message = last_message(page)
    expect(message.get_by_test_id("message-priority")).to_have_attribute("data-priority", "high")
    expect(message.get_by_test_id("message-priority")).to_have_text("High")
    job_id = message.get_attribute("data-job-id")
    assert r.hget(f"qc:job:{job_id}", "priority") == "high"


def test_history_entry_appears_live_and_survives_a_reload(page):
    send(page, "remember me")
    page.get_by_test_id("tab-history").click()
    item = page.get_by_test_id("history-item").first
    expect(item).to_contain_text("remember me")
    expect(item).to_contain_text("Completed")
    page.reload()
    page.get_by_test_id("tab-history").click()
    expect(page.get_by_test_id("history-item").first).to_contain_text("remember me")


def test_a_tasks_clock_in_the_history_runs_while_it_runs_and_stops_at_its_end(page, fake_llm):
    fake_llm.script(Reply(tokens=[f" w{i}" for i in range(80)], token_delay=0.05))  # 4 s of answer
    send(page, "count my seconds")
    page.get_by_test_id("tab-history").click()
    item = page.get_by_test_id("history-item").first
    clock = item.get_by_test_id("history-elapsed")
    expect(item).to_contain_text("Running")
    running = clock.inner_text()
    expect(clock).not_to_have_text(running)  # it counts up
    expect(item).to_contain_text("Completed")
    ended = clock.inner_text()
    page.wait_for_timeout(2500)  # more than one tick of the clock
    expect(clock).to_have_text(ended)


def test_history_click_opens_the_conversation_at_that_message(page):
    send(page, "first conversation")
    expect(last_message(page).get_by_test_id("message-status")).to_have_text("Completed")
    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("chat-empty")).to_be_visible()
    page.get_by_test_id("tab-history").click()
    page.get_by_test_id("history-item").filter(has_text="first conversation").click()
    expect(last_message(page).get_by_test_id("answer")).to_have_text("You said: first conversation")


def test_metrics_cards_change_after_a_job_and_the_chart_is_there(page):
    panel = page.get_by_test_id("metrics-panel")
    if not panel.is_visible():
        page.get_by_test_id("metrics-toggle").click()
    total = page.get_by_test_id("metric-total-requests").get_by_test_id("metric-value")
    expect(total).to_have_text("0")
    send(page, "count me")
    expect(total).to_have_text("1", timeout=10_000)
    expect(page.get_by_test_id("metric-success-rate").get_by_test_id("metric-value")).to_have_text("100%")
    expect(page.get_by_test_id("metrics-chart").locator("canvas")).to_be_visible()


def test_language_toggle_switches_labels_and_keeps_the_page_state(page, fake_llm):
    fake_llm.script(Reply(tokens=[f"w{i} " for i in range(40)], token_delay=0.08))
    send(page, "stream while I switch")
    message = last_message(page)
    expect(message.get_by_test_id("answer")).to_contain_text("w2 ")
    page.get_by_test_id("message-input").fill("draft I am still writing")
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("new-chat")).to_contain_text("新对话")
    expect(page.get_by_test_id("suggest-button")).to_contain_text("AI 生成问题")
    expect(page.get_by_test_id("message-input")).to_have_value("draft I am still writing")
    expect(message.get_by_test_id("answer")).to_contain_text("w39", timeout=20_000)
    expect(message.get_by_test_id("message-status")).to_have_text("已完成")
    page.reload()
    expect(page.get_by_test_id("new-chat")).to_contain_text("新对话")  # the choice persists
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("new-chat")).to_contain_text("New chat")


def test_default_language_follows_the_browser(new_context):
    page = new_context(locale="zh-CN").new_page()
    page.goto("/")
    expect(page.get_by_test_id("suggest-button")).to_contain_text("AI 生成问题")


def test_suggested_question_lands_in_the_input(page, fake_llm):
    fake_llm.script(Reply(text='Sure! Here is one:\n\n1. "What makes a queue fair?"\n2. Why do we wait in line?'))
    page.get_by_test_id("suggest-button").click()
    expect(page.get_by_test_id("message-input")).to_have_value("What makes a queue fair?")
    request = wait_for(lambda: fake_llm.requests, what="the suggestion request")[-1]
    assert "question" in request["messages"][-1]["content"]


def test_a_suggestion_with_no_usable_question_says_so(page, fake_llm):
    fake_llm.script(Reply(text="Suggest one interesting, specific question someone might ask an AI assist"))
    page.get_by_test_id("suggest-button").click()
    expect(page.get_by_test_id("composer-error")).to_contain_text("no usable question")
    expect(page.get_by_test_id("message-input")).to_have_value("")


def test_model_picker_lists_the_llm_servers_models(page, fake_llm):
    picker = page.get_by_test_id("model-picker")
    expect(picker).to_contain_text("qwen3:latest")
    picker.click()
    expect(page.get_by_role("option", name="llama3.2:latest")).to_be_visible()
    page.get_by_role("option", name="llama3.2:latest").click()
    send(page, "which model?")
    expect(last_message(page).get_by_test_id("message-status")).to_have_text("Completed")
    assert fake_llm.requests[-1]["model"] == "llama3.2:latest"


def test_health_chips_are_green(page):
    for name in ("redis", "llm", "workers"):
        expect(page.get_by_test_id(f"health-{name}")).to_have_attribute("data-state", "ok")


def test_two_browsers_do_not_see_each_others_conversations_or_history(new_context):
    alice = new_context().new_page()
    alice.goto("/")
    send(alice, "alice's secret")
    expect(last_message(alice).get_by_test_id("message-status")).to_have_text("Completed")
    alice_url = alice.url
    bob = new_context().new_page()
    bob.goto("/")
    bob.get_by_test_id("tab-history").click()
    expect(bob.get_by_test_id("history-list")).to_be_visible()
    expect(bob.get_by_text("alice's secret")).to_have_count(0)
    bob.goto(alice_url)  # even with the link, another user's conversation is not shown
    expect(bob.get_by_text("alice's secret")).to_have_count(0)
    expect(bob.get_by_test_id("chat-not-found")).to_be_visible()


def test_two_tabs_of_one_user_stay_in_sync(new_context, fake_llm):
    context = new_context()
    first, second = context.new_page(), context.new_page()
    first.goto("/")
    send(first, "seen in both tabs")
    expect(last_message(first).get_by_test_id("message-status")).to_have_text("Completed")
    second.goto(first.url)
    expect(last_message(second).get_by_test_id("answer")).to_have_text("You said: seen in both tabs")
    second.get_by_test_id("tab-history").click()
    send(first, "second message")
    expect(second.get_by_test_id("history-item").first).to_contain_text("second message")


def test_closing_the_browser_mid_stream_still_completes_the_job(new_context, fake_llm, r):
    context = new_context()
    page = context.new_page()
    page.goto("/")
    send(page, "finish without me [[tokens=30]] [[delay=0.1]]")
    expect(last_message(page).get_by_test_id("answer")).to_contain_text("t1 ")
    storage = context.storage_state()
    context.close()
    job_id = r.lrange(r.keys("qc:history:*")[0], 0, 0)[0]
    wait_for(lambda: r.hget(f"qc:job:{job_id}", "status") == "completed", timeout=30)
    back = new_context().browser.new_context(base_url=page.url.split("/c/")[0], storage_state=storage)
    again = back.new_page()
    again.goto("/")
    again.get_by_test_id("tab-history").click()
    expect(again.get_by_test_id("history-item").first).to_contain_text("finish without me")
    expect(again.get_by_test_id("history-item").first).to_contain_text("Completed")
    back.close()
