"""A job goes through real `dramatiq` worker processes and the fake LLM, over the network."""

import httpx

from tasks import jobs
from tests.conftest import wait_for
from tests.fake_ollama import Reply


def finished(job_id):
    job = jobs.get_job(job_id)
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def test_answer_matches_the_llm_token_for_token(workers, fake_llm):
    tokens = ["Hello", ",", " **world**", "!\n\n", "```py\nprint(1)\n```"]
    fake_llm.script(Reply(tokens=tokens, token_delay=0.01))
    workers.start()
    submitted = jobs.submit("hi", user="u1")
    job = wait_for(lambda: finished(submitted.job_id), what="the job to finish")
    assert job["status"] == "completed", job
    assert job["answer"] == "".join(tokens)
    entries = jobs.read_stream(submitted.job_id)
    assert [e["d"] for _, e in entries if e["k"] == "token"] == tokens
    assert job["attempts"] == 1 and job["progress"] == 100


def test_unreachable_llm_fails_with_a_clear_message(app_factory, workers, tmp_path):
    workers.start(OLLAMA_HOST="http://127.0.0.1:9", QUEUE_MAX_RETRIES="1")
    app = app_factory("--no-workers", OLLAMA_HOST="http://127.0.0.1:9")
    with httpx.Client(base_url=app.url, timeout=10) as api:
        job_id = api.post("/api/chat", json={"message": "hello?"}).json()["job_id"]
        job = wait_for(lambda: finished(job_id), what="the job to fail")
        assert job["status"] == "failed" and job["attempts"] == 2
        assert "Ollama is not reachable at http://127.0.0.1:9" in job["error"] and "ollama serve" in job["error"]
        health = api.get("/health").json()
        assert health["ollama"] is False and health["status"] == "degraded"
