"""The Ollama-compatible door (ui/doors/ollama.py) as the official ``ollama`` package sees it, pointed at
``http://host/ollama`` of a running main.py with real workers (cap 1) and the fake LLM: chat and generate, streamed
and whole, list, ps, version, the length cut, errors; and clients that leave, in raw HTTP."""

from __future__ import annotations

import httpx
import ollama
import pytest

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tasks.store import sync_store
from tests.ui.conftest import bearer, client, discovered, hold_the_slot, job, redis_ms

MODEL = "qwen3:latest"


def ollama_client(app, key: str, **headers: str) -> ollama.Client:
    return ollama.Client(host=app.url + "/ollama", headers={**bearer(key), **headers}, timeout=30)


def test_chat_whole_and_streamed_with_counts_and_thinking(app, keys, fake_llm, r):
    caller = ollama_client(app, keys("alice"))
    fake_llm.script(Reply(thinking=["Hmm, ", "easy."], text="Four."),
                    Reply(tokens=["A", " queue", " is", " fair."], token_delay=0.02))
    whole = caller.chat(model=MODEL, messages=[{"role": "user", "content": "2+2?"}])
    assert whole.message.content == "Four." and whole.message.thinking == "Hmm, easy."
    assert whole.done and whole.done_reason == "stop" and whole.eval_count == 3 and whole.prompt_eval_count == 1
    parts = list(caller.chat(model=MODEL, messages=[{"role": "system", "content": "Be short."},
                                                    {"role": "user", "content": "What is a queue?"}], stream=True))
    assert "".join(p.message.content for p in parts) == "A queue is fair."
    assert [p.done for p in parts] == [False] * 4 + [True] and parts[-1].eval_count == 4
    assert fake_llm.requests[-1]["messages"][0] == {"role": "system", "content": "Be short."}
    owners = {r.hget(name, "user") for name in r.keys("qc:job:*")}
    assert len(owners) == 1 and len(sync_store().history(owners.pop())) == 2


def test_generate_with_a_system_prompt_and_num_predict_cuts_with_done_reason_length(app, keys, fake_llm):
    caller = ollama_client(app, keys("alice"))
    fake_llm.set_default(Reply(tokens=[f"w{i} " for i in range(10)]))
    whole = caller.generate(model=MODEL, prompt="go on", system="You ramble.")
    assert whole.response == "".join(f"w{i} " for i in range(10)) and whole.done_reason == "stop"
    assert fake_llm.requests[-1]["messages"] == [{"role": "system", "content": "You ramble."},
                                                 {"role": "user", "content": "go on"}]
    cut = list(caller.generate(model=MODEL, prompt="go on", options={"num_predict": 3}, stream=True))
    assert "".join(p.response for p in cut) == "w0 w1 w2 " and cut[-1].done_reason == "length"
    assert cut[-1].eval_count == 3


def test_list_ps_and_version(app, keys, fake_llm, r):
    discovered(app, r, fake_llm)
    caller = ollama_client(app, keys("alice"))
    assert [m.model for m in caller.list().models] == ["llama3.2:latest", "qwen3:latest"]
    assert caller.ps().models is not None
    assert httpx.get(app.url + "/ollama/api/version").json()["version"]


def test_errors_reach_the_client_with_their_status_and_reason(app, keys, fake_llm, r):
    discovered(app, r, fake_llm)
    with pytest.raises(ollama.ResponseError) as bad:
        ollama_client(app, "qc_nope").chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert bad.value.status_code == 401 and "not valid" in bad.value.error
    key = keys("modest", max_priority="normal")
    with pytest.raises(ollama.ResponseError) as unknown:
        list(ollama_client(app, key).chat(model="gpt-17", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert unknown.value.status_code == 422 and "No LLM server offers this model" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as ceiling:
        ollama_client(app, key, **{"X-Queue-Priority": "high"}).generate(model=MODEL, prompt="me first")
    assert ceiling.value.status_code == 403 and "above what you may use" in ceiling.value.error
    with pytest.raises(ollama.ResponseError) as empty:
        ollama_client(app, key).chat(model=MODEL, messages=[{"role": "user", "content": "  "}])
    assert empty.value.status_code == 422 and "empty" in empty.value.error
    assert not r.keys("qc:job:*")


def test_too_many_waiting_is_429_with_retry_after(app, keys, fake_llm, r):
    hold_the_slot(app, r, fake_llm, keys("holder"))
    key = keys("patient", max_waiting=1)
    with client(app, key) as caller:
        assert caller.post("/api/chat", json={"message": "waiting"}).status_code == 202
        with pytest.raises(ollama.ResponseError) as refused:
            ollama_client(app, key).chat(model=MODEL, messages=[{"role": "user", "content": "one more"}])
        assert refused.value.status_code == 429 and "1 messages waiting" in refused.value.error
        raw = caller.post("/ollama/api/generate", json={"model": MODEL, "prompt": "again"})
    assert raw.status_code == 429 and int(raw.headers["retry-after"]) > 0
    assert raw.json() == {"error": refused.value.error, "code": "too_many_waiting"}


def test_a_streaming_client_that_leaves_while_waiting_cancels_its_job(app, keys, fake_llm, r):
    holder = hold_the_slot(app, r, fake_llm, keys("holder"))
    with client(app, keys("alice")) as raw:
        with raw.stream("POST", "/ollama/api/chat", json={"model": MODEL, "messages": [
                {"role": "user", "content": "me next"}]}) as response:
            assert response.status_code == 200 and response.headers["x-queue-position"] == "0"
            job_id = response.headers["x-queue-job"]
            assert job(r, job_id)["status"] == "queued"
        left_at = redis_ms(r)
    record = wait_for(lambda: (j := job(r, job_id))["status"] == "cancelled" and j, timeout=15,
                      what="the job of the client that left")
    assert int(record["finished_at"]) - left_at <= 1000
    assert job(r, holder)["status"] == "running"


def test_a_whole_answer_client_that_gives_up_cancels_its_running_job(app, keys, fake_llm, r):
    fake_llm.script(Reply(tokens=[f"t{i} " for i in range(300)], token_delay=0.05))
    key = keys("alice")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(app.url + "/ollama/api/generate", json={"model": MODEL, "prompt": "long", "stream": False},
                   headers=bearer(key), timeout=httpx.Timeout(10, read=1.5))
    left_at = redis_ms(r)
    job_id = r.keys("qc:job:*")[0].split(":")[-1]
    record = wait_for(lambda: (j := job(r, job_id))["status"] == "cancelled" and j, timeout=15,
                      what="the running job of the client that gave up")
    assert int(record["finished_at"]) - left_at <= 1000
    assert fake_llm.wait_until(lambda: fake_llm.cancelled == 1, timeout=5)
