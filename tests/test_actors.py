"""A job goes through real `dramatiq` worker processes and the fake LLM, over the network."""

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
