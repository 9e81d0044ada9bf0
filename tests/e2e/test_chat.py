"""The chat in a real Chromium: send, stream, reload mid-stream, stop, retry, limits, thinking."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tests.e2e.conftest import last_message, send


def test_send_streams_the_answer_and_a_reload_mid_stream_continues(page, fake_llm):
    tokens = [f"word{i} " for i in range(60)] + ["**THE-END**"]
    fake_llm.script(Reply(tokens=tokens, token_delay=0.06))
    send(page, "Tell me a long story")
    message = last_message(page)
    expect(message.get_by_test_id("answer")).to_contain_text("word3", timeout=20_000)
    expect(message.get_by_test_id("answer")).not_to_contain_text("THE-END")
    expect(page.get_by_test_id("message-input")).to_have_value("")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f]{32}"))
    page.reload()
    message = last_message(page)
    expect(message.get_by_test_id("bubble-user-" + message.get_attribute("data-job-id"))).to_have_text(
        "Tell me a long story")
    expect(message.get_by_test_id("answer")).to_contain_text("word1 word2")
    expect(message.get_by_test_id("answer").locator("strong")).to_have_text("THE-END", timeout=30_000)
    answer = message.get_by_test_id("answer").inner_text()
    assert answer.count("word10 ") == 1, "no token is shown twice after the reload"
    expect(message.get_by_test_id("message-status")).to_have_text("Completed")


def test_markdown_code_blocks_and_thinking_apart(page, fake_llm):
    fake_llm.script(Reply(thinking=["Let me ", "think."], tokens=["Here:\n\n", "```python\n", "print('hi')\n", "```"]))
    send(page, "code please")
    message = last_message(page)
    expect(message.get_by_test_id("answer").locator("pre")).to_contain_text("print('hi')")
    thinking = message.get_by_test_id("thinking")
    expect(thinking).to_be_visible()
    expect(thinking.get_by_text("Let me think.")).to_be_hidden()  # collapsed
    thinking.get_by_role("button").first.click()
    expect(thinking.get_by_text("Let me think.")).to_be_visible()
    expect(message.get_by_test_id("answer")).not_to_contain_text("Let me think")


def test_stop_cancels_a_running_answer_and_keeps_the_partial_text(page, fake_llm):
    fake_llm.script(Reply(tokens=[f"t{i} " for i in range(200)], token_delay=0.1))
    send(page, "go on forever")
    message = last_message(page)
    expect(message.get_by_test_id("answer")).to_contain_text("t2 ")
    message.get_by_test_id("stop-button").click()
    expect(message.get_by_test_id("message-status")).to_have_text("Cancelled", timeout=10_000)
    wait_for(lambda: fake_llm.cancelled >= 1, timeout=5, what="the LLM stream to be closed")
    assert "t1 " in message.get_by_test_id("answer").inner_text()


def test_a_failing_llm_shows_the_reason_and_the_attempts(page, fake_llm):
    fake_llm.set_default(Reply(status=404, error='model "qwen3:latest" not found, try pulling it first'))
    try:
        send(page, "hello")
        message = last_message(page)
        expect(message.get_by_test_id("message-status")).to_have_text("Failed")
        expect(message.get_by_test_id("message-error")).to_contain_text("ollama pull")
    finally:
        fake_llm.set_default(None)


def test_a_retry_after_partial_output_starts_afresh_with_the_attempt_shown(page, fake_llm):
    fake_llm.script(Reply(tokens=["broken ", "half "], token_delay=0.2, disconnect_after=2),
                    Reply(tokens=["clean ", "answer"], first_token_delay=1.5, token_delay=0.3))
    send(page, "retry me")
    message = last_message(page)
    expect(message.get_by_test_id("attempt")).to_contain_text("2", timeout=20_000)
    expect(message.get_by_test_id("answer")).to_have_text("clean answer")
    expect(message.get_by_test_id("message-status")).to_have_text("Completed")


def test_empty_input_cannot_be_sent_and_overlong_input_is_refused_with_the_limit(page, r):
    send(page, "   ")
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    assert r.zcard("qc:waiting") == 0 and not r.keys("qc:job:*")
    send(page, "x" * 8001)
    expect(page.get_by_test_id("send-button")).to_be_disabled()
    expect(page.get_by_test_id("char-counter")).to_contain_text("8000")
    expect(page.get_by_test_id("composer-error")).to_contain_text("8000")
    assert not r.keys("qc:job:*")
    expect(page.get_by_test_id("message-input")).to_have_value("x" * 8001)  # nothing lost


def test_shift_enter_is_a_new_line(page, r):
    box = page.get_by_test_id("message-input")
    box.fill("line one")
    box.press("Shift+Enter")
    box.type("line two")
    expect(box).to_have_value("line one\nline two")
    assert not r.keys("qc:job:*")


def test_a_streamed_answer_is_rendered_in_blocks_and_looks_like_the_whole_answer(page, fake_llm):
    paragraphs = [f"Paragraph {i} has a few words of its own.\n\n" for i in range(8)]
    code = "```python\ndef f(x):\n    return x < 3  # a <b>comparison</b>\n```\n\n"
    tokens = [*paragraphs[:4], "- one\n", "- two\n\n", code, *paragraphs[4:], "The end."]
    fake_llm.script(Reply(tokens=tokens, token_delay=0.15))
    send(page, "blocks please")
    answer = last_message(page).get_by_test_id("answer")
    expect(answer).to_contain_text("The end.", timeout=30_000)
    expect(last_message(page).get_by_test_id("message-status")).to_have_text("Completed")
    assert answer.locator(".qc-md").count() > 5, "finished blocks are elements of their own"
    expect(answer.locator("pre")).to_contain_text("return x < 3  # a <b>comparison</b>")
    streamed = answer.evaluate("e => [e.innerText, e.getBoundingClientRect().height]")
    page.reload()
    answer = last_message(page).get_by_test_id("answer")
    expect(answer).to_contain_text("The end.")
    assert answer.locator(".qc-md").count() == 1  # loaded finished: rendered whole
    assert answer.evaluate("e => [e.innerText, e.getBoundingClientRect().height]") == streamed


def test_an_answer_cut_at_its_length_limit_says_so(page, fake_llm):
    fake_llm.script(Reply(text="An answer that runs out of", done_reason="length"))
    send(page, "a long one")
    message = last_message(page)
    expect(message.get_by_test_id("message-status")).to_have_text("Completed")
    expect(message.get_by_test_id("message-note")).to_have_text("The answer was cut at its length limit.")


def test_answer_settings_go_with_the_conversation_to_the_llm(page, fake_llm):
    page.get_by_test_id("options-button").click()
    page.get_by_test_id("option-temperature").fill("0.2")
    page.get_by_test_id("option-max_tokens").fill("3")
    page.keyboard.press("Escape")
    fake_llm.script(Reply(tokens=["one ", "two ", "three ", "four ", "five"]))
    send(page, "count for me")
    message = last_message(page)
    expect(message.get_by_test_id("message-status")).to_have_text("Completed")
    expect(message.get_by_test_id("answer")).to_have_text("one two three")  # cut at three tokens
    expect(message.get_by_test_id("message-note")).to_contain_text("length limit")
    options = fake_llm.requests[-1]["options"]
    assert options["temperature"] == 0.2 and options["num_predict"] == 3
    send(page, "and again")  # the same conversation keeps its settings
    expect(last_message(page).get_by_test_id("message-status")).to_have_text("Completed")
    assert fake_llm.requests[-1]["options"]["num_predict"] == 3
