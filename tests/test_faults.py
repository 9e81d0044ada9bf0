"""Faults with real processes: workers killed again and again, Redis restarted, the LLM misbehaving, the app
restarted. Each ends the documented way, and nothing is lost."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time

import httpx
import pytest

from tasks import jobs
from tests.conftest import wait_for
from tests.fake_ollama import Reply


def pids_below(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def worker_processes(app) -> list[int]:
    """The dramatiq worker processes under main.py's supervisor (children of the CLI master)."""
    return [child for master in pids_below(app.process.pid) for child in pids_below(master)]


def terminal(api: httpx.Client, job_id: str) -> dict | None:
    job = api.get(f"/api/jobs/{job_id}").json()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def one_clean_attempt(job_id: str) -> tuple[str, int]:
    """(the answer a user sees, number of 'done' entries): tokens after the last reset, no mixing."""
    entries = jobs.read_stream(job_id)
    answer, _ = jobs.fold_entries(entries)
    return answer, sum(1 for _, e in entries if e["k"] == "done")


def test_ten_worker_kills_under_load_lose_nothing_and_leak_no_slot(app_factory, fake_llm):
    fake_llm.set_default(None)
    app = app_factory(WORKER_PROCESSES="2", WORKER_THREADS="4", QUEUE_CONCURRENCY="3")
    api = httpx.Client(base_url=app.url, timeout=10)
    ids = [api.post("/api/chat", json={"message": f"job {i} [[tokens=25]] [[delay=0.04]]",
                                       "priority": random.choice(["high", "normal", "low"])}).json()["job_id"]
           for i in range(30)]
    for _ in range(10):
        victims = wait_for(lambda: worker_processes(app), timeout=30, what="worker processes")
        time.sleep(0.8)
        with contextlib.suppress(ProcessLookupError):  # the master may have stopped its siblings already
            os.kill(random.choice(victims), signal.SIGKILL)
    for job_id in ids:
        job = wait_for(lambda: terminal(api, job_id), timeout=120, interval=0.2, what=f"job {job_id}")
        assert job["status"] == "completed", job
        answer, done_entries = one_clean_attempt(job_id)
        expected = "".join(f"{' ' if i else ''}t{i}" for i in range(25))
        assert job["answer"] == answer == expected and done_entries == 1
    stats = api.get("/api/queue/stats").json()
    assert stats["completed"] == 30 and stats["running"] == 0
    # No leaked slot: three slow jobs run at the same time again.
    fake_llm.reset()
    slow = [api.post("/api/chat", json={"message": "slow [[tokens=40]] [[delay=0.05]]"}).json()["job_id"]
            for _ in range(3)]
    wait_for(lambda: fake_llm.max_active == 3, timeout=30, what="all three slots in use")
    for job_id in slow:
        wait_for(lambda: terminal(api, job_id), timeout=60)


def test_redis_restart_while_jobs_wait_and_run(app_factory, redis_server, fake_llm):
    app = app_factory(QUEUE_CONCURRENCY="1", WORKER_PROCESSES="2")
    api = httpx.Client(base_url=app.url, timeout=10)
    ids = [api.post("/api/chat", json={"message": f"m{i} [[tokens=20]] [[delay=0.05]]"}).json()["job_id"]
           for i in range(4)]
    wait_for(lambda: api.get(f"/api/jobs/{ids[0]}").json()["status"] == "running", what="the first job to run")
    redis_server.stop()
    try:
        wait_for(lambda: api.get("/health").status_code == 503, timeout=10, what="/health to say 503")
        body = api.get("/health").json()
        assert body["redis"] is False and body["status"] == "degraded"
        assert api.post("/api/chat", json={"message": "while down"}).status_code == 503
    finally:
        redis_server.start()
    wait_for(lambda: api.get("/health").status_code == 200, timeout=20, what="/health to recover")
    for job_id in ids:
        job = wait_for(lambda: terminal(api, job_id), timeout=90, interval=0.2, what=f"job {job_id}")
        assert job["status"] == "completed", job
        assert one_clean_attempt(job_id)[1] == 1


@pytest.mark.parametrize("reply, reason", [
    (Reply(text="late", first_token_delay=4), "sent nothing for 2 s"),
    (Reply(text="a b c d", hang_after=2), "sent nothing for 1 s"),
    (Reply(status=500, error="boom"), "HTTP 500: boom"),
    (Reply(status=503, error="server busy"), "busy (HTTP 503)"),
    (Reply(text="a b c", malformed_after=1), "malformed line"),
])
def test_llm_faults_retry_then_fail_with_the_reason(workers, fake_llm, reply, reason):
    fake_llm.set_default(reply)
    workers.start(QUEUE_MAX_RETRIES="1", LLM_FIRST_TOKEN_TIMEOUT="2", LLM_IDLE_TIMEOUT="1")
    job_id = jobs.submit("hello", user="u").job_id
    job = wait_for(lambda: jobs.get_job(job_id)["status"] == "failed" and jobs.get_job(job_id), timeout=40,
                   what="the job to fail")
    assert job["attempts"] == 2 and reason in job["error"] and "gave up after 2 attempts" in job["error"]
    # No worker thread stayed stuck: the LLM healthy again, the next job completes at once.
    fake_llm.set_default(None)
    wait_for(lambda: fake_llm.active == 0, timeout=10, what="the fake LLM to be idle")
    fine = jobs.submit("again", user="u").job_id
    assert wait_for(lambda: jobs.get_job(fine)["status"] == "completed", timeout=15)


def test_app_restart_while_jobs_run_loses_nothing(app_factory, workers, fake_llm):
    workers.start()
    app = app_factory("--no-workers")
    api = httpx.Client(base_url=app.url, timeout=10)
    ids = [api.post("/api/chat", json={"message": f"m{i} [[tokens=30]] [[delay=0.05]]"}).json()["job_id"]
           for i in range(3)]
    wait_for(lambda: api.get(f"/api/jobs/{ids[0]}").json()["status"] == "running")
    app.stop()
    time.sleep(1)
    app.start("--no-workers")
    for job_id in ids:
        job = wait_for(lambda: terminal(api, job_id), timeout=60, interval=0.2)
        assert job["status"] == "completed" and one_clean_attempt(job_id)[1] == 1
    done = [json.loads(e["d"]) for _, e in jobs.read_stream(ids[0]) if e["k"] == "done"]
    assert done[0]["status"] == "completed"
