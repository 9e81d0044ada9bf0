"""The OpenAI-compatible door (ui/doors/openai.py) as the official ``openai`` package sees it, on a running main.py
with real workers (cap 1) and the fake LLM: answers streamed and whole, models, usage, errors; and, in raw HTTP,
what a waiting stream shows and what a client that leaves does to its job."""

from __future__ import annotations

import json

import openai
import pytest

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tasks import identities
from tasks.store import sync_store
from tests.ui.conftest import client, discovered, hold_the_slot, job, redis_ms, settle

MODEL = "qwen3:latest"


def openai_client(app, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=app.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_a_whole_answer_with_usage_and_it_is_the_callers_job(app, keys, fake_llm, r):
    key = keys("alice")
    fake_llm.script(Reply(text="Queues keep order."))
    raw = openai_client(app, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Queues keep order."
    assert completion.choices[0].finish_reason == "stop" and completion.model == MODEL
    assert completion.usage.completion_tokens == 3 and completion.usage.prompt_tokens == 3
    assert completion.usage.total_tokens == 6
    job_id = raw.headers["x-queue-job"]
    assert raw.headers["x-queue-position"] == "0"
    assert fake_llm.requests[-1]["messages"] == [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Why?"}]
    owner = job(r, job_id)["user"]
    assert owner.startswith("k:") and [j.job_id for j in sync_store().history(owner)] == [job_id]


def test_a_streamed_answer_in_chunks_with_usage(app, keys, fake_llm):
    fake_llm.script(Reply(tokens=["One", " two", " three."], token_delay=0.02))
    stream = openai_client(app, keys("alice")).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One two three."
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == ["stop"]
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == 1


def test_max_tokens_cuts_the_answer_with_finish_reason_length(app, keys, fake_llm):
    fake_llm.set_default(Reply(tokens=[f"w{i} " for i in range(20)]))
    caller = openai_client(app, keys("alice"))
    whole = caller.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "long"}],
                                           max_tokens=4)
    assert whole.choices[0].finish_reason == "length" and whole.choices[0].message.content == "w0 w1 w2 w3 "
    assert whole.usage.completion_tokens == 4
    streamed = list(caller.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "long"}],
                                                   max_completion_tokens=2, stream=True))
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == ["length"]
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == "w0 w1 "
    assert fake_llm.requests[-1]["options"]["num_predict"] == 2


def test_models_list_is_what_the_llm_server_offers(app, keys, fake_llm, r):
    discovered(app, r, fake_llm)
    models = openai_client(app, keys("alice")).models.list()
    assert [m.id for m in models.data] == ["llama3.2:latest", "qwen3:latest"]


def test_a_bad_or_revoked_key_is_an_authentication_error(app, keys, fake_llm, r):
    discovered(app, r, fake_llm)
    with pytest.raises(openai.AuthenticationError) as bad:
        openai_client(app, "qc_" + "x" * 43).models.list()
    assert bad.value.status_code == 401 and "not valid" in bad.value.message
    key = keys("leaver")
    assert openai_client(app, key).models.list().data
    assert identities.revoke_key("leaver")
    with pytest.raises(openai.AuthenticationError):
        openai_client(app, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_an_unknown_model_is_refused_clearly_and_nothing_waits(app, keys, fake_llm, r):
    discovered(app, r, fake_llm)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        openai_client(app, keys("alice")).chat.completions.create(
            model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 422
    assert refused.value.code == "unknown_model" and "No LLM server offers this model" in refused.value.message
    assert not r.keys("qc:job:*")


def test_a_priority_above_the_keys_ceiling_is_permission_denied(app, keys, r):
    caller = openai_client(app, keys("modest", max_priority="normal"))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        caller.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "me first"}],
                                       extra_headers={"X-Queue-Priority": "high"})
    assert refused.value.status_code == 403 and refused.value.code == "priority_not_allowed"
    assert "'high' is above what you may use (normal)" in refused.value.message
    assert not r.keys("qc:job:*")
    with pytest.raises(openai.UnprocessableEntityError) as unknown:
        caller.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "now!"}],
                                       extra_headers={"X-Queue-Priority": "urgent"})
    assert "Unknown priority 'urgent': use high, normal or low" in unknown.value.message
    low = caller.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "later is fine"}], extra_headers={"X-Queue-Priority": "low"})
    assert job(r, low.headers["x-queue-job"])["priority"] == "low"


def test_too_many_waiting_is_a_rate_limit_error_with_retry_after(app, keys, fake_llm, r):
    hold_the_slot(app, r, fake_llm, keys("holder"))
    key = keys("patient", max_waiting=2)
    with client(app, key) as caller:
        for i in range(2):
            assert caller.post("/api/chat", json={"message": f"wait {i}"}).status_code == 202
    with pytest.raises(openai.RateLimitError) as refused:
        openai_client(app, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3rd"}])
    assert refused.value.status_code == 429 and refused.value.code == "too_many_waiting"
    assert int(refused.value.response.headers["retry-after"]) > 0
    assert "2 messages waiting" in refused.value.message


def test_a_full_queue_is_a_rate_limit_error_with_retry_after(app_factory, keys, fake_llm, r, module_app):
    small = app_factory("--no-workers", QUEUE_MAX_WAITING="2")
    hold_the_slot(module_app, r, fake_llm, keys("holder"))
    key = keys("alice")
    with client(small, key) as caller:
        for i in range(2):
            assert caller.post("/api/chat", json={"message": f"wait {i}"}).status_code == 202
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            openai_client(small, key).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                              stream=True)
        assert refused.value.code == "queue_full" and "The queue is full (2 jobs waiting)" in refused.value.message
        assert int(refused.value.response.headers["retry-after"]) > 0
    finally:
        settle(r, fake_llm)


def test_a_waiting_stream_says_its_position_and_a_client_that_leaves_cancels_its_job(app, keys, fake_llm, r):
    holder = hold_the_slot(app, r, fake_llm, keys("holder"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "me next"}], "stream": True}
    with client(app, keys("early")) as early, client(app, keys("alice")) as raw:
        ahead = early.post("/api/chat", json={"message": "first in line"}).json()["job_id"]
        with raw.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-queue-position"] == "1"
            job_id = response.headers["x-queue-job"]
            lines = (line for line in response.iter_lines() if line)
            first = next(lines)
            assert first.startswith("data: ") and '"role": "assistant"' in first
            assert next(lines) == ": queued, position 1"
            assert early.delete(f"/api/jobs/{ahead}").json()["cancel"] == "cancelled"
            assert next(lines) == ": queued, position 0", "the comment follows the line as it moves"
            assert next(lines) == ": queued, position 0", "and is repeated as a keep-alive while nothing moves"
            assert job(r, job_id)["status"] == "queued"
            board = sync_store().board()  # what /admin shows: the door job, whose it is, never its text
            row = next(row for row in board["waiting"] if row["job_id"] == job_id)
            assert row["user"] == job(r, job_id)["user"] and row["user"].startswith("k:") and row["position"] == 0
            assert "me next" not in json.dumps(board)
        left_at = redis_ms(r)
    record = wait_for(lambda: (j := job(r, job_id))["status"] == "cancelled" and j, timeout=5,
                      what="the job of the client that left to be cancelled")
    assert int(record["finished_at"]) - left_at <= 1000
    assert job(r, holder)["status"] == "running", "only the leaver's job ended"
    assert r.zscore("qc:waiting", job_id) is None


def test_a_client_that_leaves_mid_answer_frees_the_slot_within_a_second(app, keys, fake_llm, r):
    fake_llm.script(Reply(tokens=[f"t{i} " for i in range(300)], token_delay=0.05))
    with client(app, keys("bob")) as bob:
        with bob.stream("POST", "/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "long"}], "stream": True}) \
                as response:
            job_id = response.headers["x-queue-job"]
            contents = (line for line in response.iter_lines() if '"content": "t' in line)
            next(contents), next(contents)  # the answer is streaming
            nxt = bob.post("/api/chat", json={"message": "after the leaver"}).json()["job_id"]
        left_at = redis_ms(r)
    record = wait_for(lambda: (j := job(r, job_id))["status"] == "cancelled" and j, timeout=5,
                      what="the running job of the client that left to end")
    assert int(record["finished_at"]) - left_at <= 1000
    assert fake_llm.wait_until(lambda: fake_llm.cancelled == 1, timeout=5), "the LLM call was closed"
    started = wait_for(lambda: job(r, nxt).get("started_at"), timeout=5, what="the next job to start")
    assert int(started) - left_at <= 1000, "the freed slot went to the next job within a second"
    assert 0 < len(record.get("answer", "")) < len("t0 " * 300)


def test_a_whole_answer_client_that_gives_up_frees_the_slot(app, keys, fake_llm, r):
    fake_llm.script(Reply(tokens=[f"t{i} " for i in range(300)], token_delay=0.05))
    with pytest.raises(openai.APITimeoutError):
        openai.OpenAI(base_url=app.url + "/v1", api_key=keys("alice"), max_retries=0, timeout=1.5) \
            .chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "long"}])
    left_at = redis_ms(r)
    job_id = r.keys("qc:job:*")[0].split(":")[-1]
    record = wait_for(lambda: (j := job(r, job_id))["status"] == "cancelled" and j, timeout=5,
                      what="the running job of the client that gave up")
    assert int(record["finished_at"]) - left_at <= 1000
    assert fake_llm.wait_until(lambda: fake_llm.cancelled == 1, timeout=5)
