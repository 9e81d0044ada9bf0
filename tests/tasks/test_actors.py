"""A job goes through real `dramatiq` worker processes and the fake LLM, over the network."""

import httpx

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tasks.store import sync_store


def finished(job_id):
    job = sync_store().job(job_id).public()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def test_answer_matches_the_llm_token_for_token(workers, fake_llm):
    tokens = ["Hello", ",", " **world**", "!\n\n", "```py\nprint(1)\n```"]
    fake_llm.script(Reply(tokens=tokens, token_delay=0.01))
    workers.start()
    submitted = sync_store().submit("hi", user="u1")
    job = wait_for(lambda: finished(submitted.job_id), what="the job to finish")
    assert job["status"] == "completed", job
    assert job["answer"] == "".join(tokens), (job["attempts"], fake_llm.requests)  # who took the script?
    entries = sync_store().stream(submitted.job_id)
    assert [e["d"] for _, e in entries if e["k"] == "token"] == tokens
    assert job["attempts"] == 1 and job["progress"] == 100


def test_unreachable_llm_fails_with_a_clear_message(app_factory, workers, tmp_path):
    workers.start(OLLAMA_HOST="http://127.0.0.1:9", QUEUE_MAX_RETRIES="1")
    app = app_factory("--no-workers", OLLAMA_HOST="http://127.0.0.1:9")
    with httpx.Client(base_url=app.url, timeout=10) as api:
        job_id = api.post("/api/chat", json={"message": "hello?"}).json()["job_id"]
        job = wait_for(lambda: finished(job_id), what="the job to fail")
        assert job["status"] == "failed" and job["attempts"] == 2
        assert "is not reachable" in job["error"] and job["error_code"] == "llm_unreachable"
        assert "127.0.0.1:9" not in job["error"]  # users see the server's name, the log its address
        health = wait_for(lambda: (h := api.get("/health").json())["ollama"] is False and h, what="health")
        assert health["status"] == "degraded" and health["backends"] == {"ollama": "down"}
    assert "on ollama (http://127.0.0.1:9) failed" in workers.output()  # each failed attempt, with the address
