"""The queue with real `dramatiq` worker processes, a real Redis and the fake Ollama over HTTP.

Each test starts its own worker pool(s) with the settings it needs; the fake LLM records every request,
how many were in flight at once and how many clients left mid-answer, which is what these tests observe.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest
import redis

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tasks import keys, metrics, queue
from tasks.broker import NAMESPACE, QUEUE_NAME
from tasks.connection import get_redis
from tasks.settings import settings
from tasks.store import sync_store


# --- helpers --------------------------------------------------------------------------------------------

def submit(prompt: str, priority: str = "normal", **kwargs) -> str:
    return sync_store().submit(prompt, user="u1", priority=priority, **kwargs).job_id


def raw(job_id: str) -> dict:
    return get_redis().hgetall(keys.job(job_id))


def is_over(job_id: str) -> bool:
    return raw(job_id)["status"] in queue.TERMINAL


def poll(predicate, timeout: float) -> bool:
    """Like wait_for, but returns False on timeout (the assertion that follows says what was wrong)."""
    try:
        wait_for(predicate, timeout=timeout, interval=0.1)
    except AssertionError:
        return False
    return True


def wait_over(ids: list[str], timeout: float = 40) -> list[dict]:
    """The public jobs, once every one of them has ended."""
    if not poll(lambda: all(is_over(job_id) for job_id in ids), timeout):
        states = [(raw(job_id)["prompt"][:20], raw(job_id)["status"], raw(job_id)["phase"]) for job_id in ids]
        raise AssertionError(f"jobs still not ended after {timeout} s: {states}")
    return [public(job_id) for job_id in ids]


def public(job_id: str) -> dict:
    return sync_store().job(job_id).public()


def position(job_id: str) -> int | None:
    return sync_store().positions([job_id])[job_id]


def prompts(fake_llm) -> list[str]:
    """The last user message of every /api/chat request, in arrival order."""
    return [[m for m in body["messages"] if m["role"] == "user"][-1]["content"] for body in fake_llm.requests]


def entries(job_id: str) -> list[tuple[int, dict]]:
    """The job's stream as (milliseconds, entry)."""
    return [(int(entry_id.split("-")[0]), entry) for entry_id, entry in sync_store().stream(job_id)]


def started_at(job_id: str) -> int:
    return int(raw(job_id)["started_at"])


def token_count(job_id: str) -> int:
    return sum(1 for _, e in entries(job_id) if e["k"] == "token")


def phases_by_attempt(job_id: str) -> dict[int, list[tuple[str, int]]]:
    """(phase, progress) of every status/done snapshot, grouped by the attempt (epoch) that wrote it."""
    attempts: dict[int, list[tuple[str, int]]] = {}
    for _, entry in entries(job_id):
        if entry["k"] in ("status", "done"):
            snapshot = json.loads(entry["d"])
            attempts.setdefault(int(entry["a"]), []).append((snapshot["phase"], snapshot["progress"]))
    return attempts


def slow(label: str, tokens: int, delay: float) -> str:
    """A prompt the fake answers with ``tokens`` tokens, ``delay`` seconds apart."""
    return f"{label} [[tokens={tokens}]][[delay={delay}]]"


def echoed(tokens: int) -> str:
    return "".join(f"t{i}" if i == 0 else f" t{i}" for i in range(tokens))


# --- 1. strict priority, FIFO within a level ----------------------------------------------------------

@pytest.mark.parametrize("cap", [1, 3])
def test_a_high_job_starts_before_every_queued_low_job(workers, fake_llm, cap):
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY=str(cap))
    # Busy slots that free one at a time, 0.75 s apart, so every admission decision stands alone.
    busy = [submit(slow(f"busy {i}", 15, 0.1 + 0.05 * i)) for i in range(cap)]
    wait_for(lambda: fake_llm.active == cap, what="the busy jobs to occupy every slot")
    lows = [submit(f"low {i}", "low") for i in range(20)]
    high = submit("urgent", "high")
    assert [raw(job_id)["status"] for job_id in lows + [high]] == ["queued"] * 21
    assert position(high) == 0

    wait_over(busy + lows + [high], timeout=60)
    assert all(raw(job_id)["status"] == "completed" for job_id in busy + lows + [high])
    # Zero low jobs started between the high job's submission and its start...
    assert [i for i, low in enumerate(lows) if started_at(low) <= started_at(high)] == []
    order = prompts(fake_llm)
    assert all(order.index("urgent") < order.index(f"low {i}") for i in range(20))
    # ...and the low jobs started in the order they were submitted.
    starts = [started_at(low) for low in lows]
    assert starts == sorted(starts)
    if cap == 1:
        assert order[1:] == ["urgent"] + [f"low {i}" for i in range(20)]
    assert fake_llm.max_active == cap


# --- 3. one concurrency cap across processes -------------------------------------------------------------

def test_the_cap_holds_across_worker_processes_and_is_reached(workers, fake_llm):
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="3")
    ids = [submit(slow(f"job {i}", 6, 0.08)) for i in range(12)]
    running = []

    def sample() -> bool:
        running.append(get_redis().zcard(keys.LEASES))
        return all(is_over(job_id) for job_id in ids)

    wait_for(sample, timeout=60, interval=0.05, what="all jobs to end")
    assert all(raw(job_id)["status"] == "completed" for job_id in ids)
    assert fake_llm.max_active == 3
    assert max(running) <= 3
    # Both processes ran LLM calls, so the cap above was shared between them, not per process.
    assert len({raw(job_id)["worker"] for job_id in ids}) == 2


# --- 3 + 7. kill -9 of a worker mid-answer ------------------------------------------------------------------

def test_a_killed_worker_frees_its_slot_in_time_and_the_job_reruns_cleanly(pools, fake_llm):
    fake_llm.script(Reply(tokens=[f"partial{i} " for i in range(300)], token_delay=0.05),
                    Reply(tokens=["Clean", " second", " attempt."], token_delay=0.01))
    doomed_pool = pools(processes=1, QUEUE_CONCURRENCY="1")
    victim = submit("crash me")
    behind = submit("next in line")
    wait_for(lambda: token_count(victim) >= 3, what="the first tokens")
    survivor = pools(processes=1, QUEUE_CONCURRENCY="1")
    survivor.wait_online(2)
    [child] = doomed_pool.children()
    assert token_count(victim) < 300

    seconds, micros = get_redis().time()
    os.kill(child, signal.SIGKILL)
    killed_ms = seconds * 1000 + micros // 1000
    wait_for(lambda: len(fake_llm.requests) >= 2, timeout=settings.queue_recovery_seconds + 15,
             interval=0.02, what="the job to run again")
    assert prompts(fake_llm)[1] == "crash me"  # it went back to the front, ahead of the job behind it
    stream = entries(victim)
    freed_ms = next(ms for ms, e in stream if e["k"] == "status" and json.loads(e["d"])["phase"] == "recovering")
    rerun_ms = [ms for ms, e in stream if e["k"] == "reset"][-1]
    # The slot (the lease) is free again, and in use again, within the recovery window.
    assert freed_ms - killed_ms <= settings.queue_recovery_seconds * 1000, freed_ms - killed_ms
    assert rerun_ms - killed_ms <= settings.queue_recovery_seconds * 1000, rerun_ms - killed_ms

    first, second = wait_over([victim, behind])
    assert (first["status"], first["attempts"], first["answer"]) == ("completed", 2, "Clean second attempt.")
    assert (second["status"], second["attempts"]) == ("completed", 1)
    stream = [e for _, e in entries(victim)]
    resets = [i for i, e in enumerate(stream) if e["k"] == "reset"]
    second_tokens = [i for i, e in enumerate(stream) if e["k"] == "token" and e["a"] == stream[resets[-1]]["a"]]
    assert len(resets) == 2 and resets[-1] < second_tokens[0]
    assert "".join(stream[i]["d"] for i in second_tokens) == "Clean second attempt."
    assert fake_llm.max_active == 1
    assert get_redis().zcard(keys.LEASES) == 0


# --- 7. Redis restarts (AOF) ------------------------------------------------------------------------------

def test_queued_jobs_survive_a_redis_restart_and_complete(workers, fake_llm, redis_server, r):
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="1")
    running = submit(slow("running", 60, 0.1))  # 6 s: still running when Redis is back (~3 s from here)
    wait_for(lambda: token_count(running) >= 2, what="the first job to stream")
    queued = [submit(f"queued {i}") for i in range(3)]
    # Their tickets are with the workers (waiting for the slot), not in Redis' queue list any more.
    wait_for(lambda: r.llen(f"{NAMESPACE}:{QUEUE_NAME}") == 0, what="the workers to take the tickets")
    time.sleep(0.5)
    try:
        restart_redis(redis_server, down_for=2.0)
    finally:
        if redis_server.process.poll() is not None:
            redis_server.start()
    assert [raw(job_id)["status"] for job_id in queued] == ["queued"] * 3
    ranks = [position(job_id) for job_id in queued]
    assert None not in ranks and ranks == sorted(ranks)

    results = wait_over([running, *queued], timeout=60)
    assert [job["status"] for job in results] == ["completed"] * 4
    assert results[0]["answer"] == echoed(60)  # whether it survived or ran again, one clean answer
    assert [job["answer"] for job in results[1:]] == [f"You said: queued {i}" for i in range(3)]
    assert [started_at(job_id) for job_id in queued] == sorted(started_at(job_id) for job_id in queued)


def restart_redis(server, down_for: float) -> None:
    """A clean restart (SHUTDOWN flushes the AOF), with Redis gone for ``down_for`` seconds: longer than
    the clients' own reconnect retries. (The SHUTDOWN is sent here with a client that does not retry:
    RedisServer.stop()'s client retries the dropped connection with redis-py's default backoff, ~9 s.)"""
    started = time.monotonic()
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis(port=server.port, retry=None, socket_connect_timeout=1).shutdown(nosave=True)
    server.process.wait(10)
    time.sleep(max(0.0, down_for - (time.monotonic() - started)))
    server.start()


# --- 4. the rate limit ------------------------------------------------------------------------------------

def test_the_rate_limit_holds_jobs_back_without_retrying_or_failing_them(workers, fake_llm):
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="3", QUEUE_RATE_PER_MIN="3")
    ids = [submit(f"job {i}") for i in range(5)]
    wait_for(lambda: sum(raw(job_id)["status"] == "completed" for job_id in ids) == 3, what="three jobs")
    time.sleep(1.5)  # an interval in which a broken limit would start more jobs: the tickets poll each second
    assert len(fake_llm.requests) == 3
    held = [job_id for job_id in ids if raw(job_id)["status"] != "completed"]
    assert held == ids[3:]
    for job_id in held:
        job = public(job_id)
        assert (job["status"], job["phase"], job["attempts"], job["error"]) == ("queued", "queued", 0, None)
    assert [public(job_id)["position"] for job_id in held] == [0, 1]
    figures = metrics.stats()
    assert (figures["failed"], figures["retrying"], figures["completed"]) == (0, 0, 3)

    # A minute later (simulated: the recorded starts age out of the window) the held jobs start.
    client = get_redis()
    client.zadd(keys.STARTS, {member: score - 61_000
                               for member, score in client.zrange(keys.STARTS, 0, -1, withscores=True)})
    results = wait_over(held, timeout=20)
    assert [(job["status"], job["attempts"]) for job in results] == [("completed", 1)] * 2


# --- 5. retries -------------------------------------------------------------------------------------------

def test_transient_errors_are_retried_with_backoff_and_each_attempt_starts_afresh(workers, fake_llm):
    fake_llm.script(Reply(status=503, error="busy"),
                    Reply(status=500, error="internal hiccup"),
                    Reply(tokens=["Wrong", " half", " of", " an", " answer"], disconnect_after=3, token_delay=0.05),
                    Reply(tokens=["Right", " answer", "."], token_delay=0.02))
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="1")
    job_id = submit("flaky")
    [job] = wait_over([job_id])
    assert (job["status"], job["attempts"], job["error"]) == ("completed", 4, None)
    assert len(fake_llm.requests) == 4
    assert job["answer"] == "Right answer."
    assert sync_store().job(job_id).answer == "Right answer."

    stream = entries(job_id)
    kinds = [(e["k"], e["a"], e.get("d")) for _, e in stream]
    # The third attempt streamed "Wrong half of" before the cut; a reset precedes the fourth's tokens.
    tokens_3 = [i for i, (k, a, _) in enumerate(kinds) if k == "token" and a == "3"]
    tokens_4 = [i for i, (k, a, _) in enumerate(kinds) if k == "token" and a == "4"]
    reset_4 = kinds.index(("reset", "4", ""))
    assert [kinds[i][2] for i in tokens_3] == ["Wrong", " half", " of"]
    assert tokens_3[-1] < reset_4 < tokens_4[0]

    # Backoff: each retry starts at least the minimum backoff after the failure that parked the job.
    for attempt in (1, 2, 3):
        parked = next(ms for ms, e in stream if e["k"] == "status" and e["a"] == str(attempt)
                      and json.loads(e["d"])["phase"] == "retrying")
        again = next(ms for ms, e in stream if e["k"] == "reset" and e["a"] == str(attempt + 1))
        assert again - parked >= settings.retry_min_backoff_ms, (attempt, again - parked)
    for attempt, steps in phases_by_attempt(job_id).items():
        progress = [p for _, p in steps]
        assert progress == sorted(progress), (attempt, steps)


def test_transient_errors_give_up_after_max_retries_for_each_job(workers, fake_llm):
    fake_llm.set_default(Reply(tokens=["a", "b", "c"], malformed_after=1))
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="1")
    ids = [submit(f"doomed {i}") for i in range(3)]
    results = wait_over(ids, timeout=60)
    for job in results:
        assert (job["status"], job["attempts"]) == ("failed", settings.queue_max_retries + 1), job
        assert "malformed" in job["error"] and f"after {settings.queue_max_retries + 1} attempts" in job["error"]
    time.sleep(1)  # no straggling retry arrives after the jobs gave up
    assert len(fake_llm.requests) == 3 * (settings.queue_max_retries + 1)
    assert sorted(prompts(fake_llm)) == sorted([f"doomed {i}" for i in range(3)] * (settings.queue_max_retries + 1))
    assert get_redis().zcard(keys.BACKOFF) == 0
    assert metrics.stats()["failed"] == 3


def test_the_retry_budget_belongs_to_the_job_even_when_its_ticket_runs_another_job(workers, fake_llm):
    # A fails and backs off in its place; B takes the free slot meanwhile, A's retry ticket comes back and
    # waits, then H (high) arrives. Its ticket finds no free thread (two processes with one thread each: B's
    # ticket and A's), so when B ends, A's ticket admits H, not A, and H's ticket later runs A: tickets are
    # interchangeable, retry budgets are not. (One thread each on purpose: with spare threads, who admits
    # what is a coin toss.)
    fake_llm.script(Reply(status=503, error="busy"),                       # A, first attempt
                    Reply(tokens=["slow"] * 30, token_delay=0.1),          # B
                    Reply(text="H is fine"))                               # H
    fake_llm.set_default(Reply(status=503, error="still busy"))            # A, every later attempt
    workers.start(processes=2, threads=1, QUEUE_CONCURRENCY="1")
    a = submit("A")
    wait_for(lambda: raw(a)["status"] == "retrying", what="A to back off")
    b = submit("B")
    wait_for(lambda: raw(b)["status"] == "running", what="B in the free slot")
    h = submit("H", "high")
    results = wait_over([a, b, h], timeout=60)
    assert [(job["status"], job["attempts"]) for job in results] == [
        ("failed", settings.queue_max_retries + 1), ("completed", 1), ("completed", 1)]
    assert f"gave up after {settings.queue_max_retries + 1} attempts" in results[0]["error"]
    time.sleep(1)
    assert sorted(prompts(fake_llm)) == sorted(["A"] * (settings.queue_max_retries + 1) + ["B", "H"])


def test_permanent_errors_fail_at_once_with_a_clear_message(workers, fake_llm):
    # The model was listed when the server was last checked, and removed from it since.
    fake_llm.script(Reply(status=404, error='model "llama3.2:latest" not found, try pulling it first'),
                    Reply(status=400, error="invalid option: num_ctx"))
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="1")
    missing = submit("hello", model="llama3.2:latest")
    refused = submit("hello again")
    first, second = wait_over([missing, refused], timeout=20)
    assert (first["status"], first["attempts"], first["error_code"]) == ("failed", 1, "model_missing")
    assert "llama3.2:latest" in first["error"] and "pick another model" in first["error"]
    assert (second["status"], second["attempts"]) == ("failed", 1)
    assert "HTTP 400" in second["error"] and "invalid option: num_ctx" in second["error"]
    time.sleep(1)  # a wrongly scheduled retry would arrive within the backoff
    assert len(fake_llm.requests) == 2
    assert [e["k"] for _, e in entries(missing)].count("reset") == 1


# --- 6. cancelling a running job ------------------------------------------------------------------------

def test_cancelling_a_running_job_stops_the_llm_call_and_keeps_the_partial_answer(workers, fake_llm):
    tokens = [f"w{i} " for i in range(200)]
    fake_llm.script(Reply(tokens=tokens, token_delay=0.05))
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="1")
    job_id = submit("long answer")
    behind = submit("next")
    wait_for(lambda: token_count(job_id) >= 3, what="some tokens")
    seconds, micros = get_redis().time()
    asked_ms = seconds * 1000 + micros // 1000
    assert sync_store().cancel(job_id) == "cancelling"
    wait_for(lambda: fake_llm.cancelled == 1, timeout=10, interval=0.01, what="the LLM to see the disconnect")
    job, after = wait_over([job_id, behind])
    # The LLM stream is closed before the job's end is written: that end, on Redis' clock, bounds the close.
    ended_ms = next(ms for ms, e in entries(job_id) if e["k"] == "done")
    assert ended_ms - asked_ms < 1500, ended_ms - asked_ms
    assert (job["status"], job["phase"], job["error"], job["attempts"]) == ("cancelled", "cancelled", None, 1)
    assert 3 <= len(job["answer"].split()) < len(tokens) and "".join(tokens).startswith(job["answer"])
    assert after["status"] == "completed"
    time.sleep(1)  # a cancelled job is never retried
    assert prompts(fake_llm) == ["long answer", "next"]
    figures = metrics.stats()
    assert (figures["cancelled"], figures["failed"], figures["completed"]) == (1, 0, 1)


# --- 9. progress phases -------------------------------------------------------------------------------------

def test_progress_goes_through_the_phases_and_never_backwards(workers, fake_llm):
    fake_llm.set_loaded(["qwen3:latest"])  # in memory: straight to the prompt; the other model must load first
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="1", EXPECTED_TOKENS="20")
    warm = submit(slow("warm", 30, 0.01), model="qwen3:latest")
    cold = submit(slow("cold", 30, 0.01), model="llama3.2:latest")
    wait_over([warm, cold])
    for job_id, load_phase in ((warm, "prompt"), (cold, "loading")):
        attempts = phases_by_attempt(job_id)
        assert sorted(attempts) == [0, 1]
        steps = attempts[0] + attempts[1]
        phases = [phase for i, (phase, _) in enumerate(steps) if i == 0 or steps[i - 1][0] != phase]
        assert phases == ["queued", load_phase, "generating", "done"], steps
        progress = [p for _, p in steps]
        assert progress == sorted(progress) and progress[0] == 0 and progress[-1] == 100, steps
        assert len({p for phase, p in steps if phase == "generating"}) >= 3, steps  # it moves while streaming
        assert public(job_id)["progress"] == 100


# --- 10. every job ends exactly once; the totals add up ---------------------------------------------------

def test_every_job_ends_once_and_the_totals_add_up(workers, fake_llm):
    fake_llm.script(Reply(status=503, error="busy"))  # whichever job asks first is retried once
    workers.start(processes=2, threads=4, QUEUE_CONCURRENCY="2")
    long_running = submit(slow("to be cancelled while running", 100, 0.05))
    ok = [submit(slow(f"ok {i}", 5, 0.05)) for i in range(5)]
    broken = [submit(f"bad model {i}", model="llama3.2:latest") for i in range(3)]
    fake_llm.set_models(["qwen3:latest"])  # removed from the server after it was last checked
    dropped = [submit(f"never mind {i}", "low") for i in range(3)]
    for job_id in dropped:
        assert sync_store().cancel(job_id) == "cancelled"
    wait_for(lambda: token_count(long_running) >= 2, what="the long job to stream")
    assert sync_store().cancel(long_running) == "cancelling"
    ids = [long_running, *ok, *broken, *dropped]

    wait_over(ids, timeout=60)
    expected = {long_running: "cancelled", **{i: "completed" for i in ok}, **{i: "failed" for i in broken},
                **{i: "cancelled" for i in dropped}}
    assert {job_id: raw(job_id)["status"] for job_id in ids} == expected
    for job_id in ids:
        done = [e for _, e in entries(job_id) if e["k"] == "done"]
        assert len(done) == 1, job_id
        assert json.loads(done[0]["d"])["status"] == expected[job_id] and raw(job_id)["finished_at"]
    # A job's end is counted by whoever ended it, just after the end: give the last one a moment.
    poll(lambda: sum(metrics.stats()[s] for s in queue.TERMINAL) >= len(ids), timeout=5)
    figures = metrics.stats()
    assert figures["submitted"] == len(ids)
    assert (figures["completed"], figures["failed"], figures["cancelled"]) == (5, 3, 4), figures
    assert figures["completed"] + figures["failed"] + figures["cancelled"] == figures["submitted"]
    assert (figures["running"], figures["retrying"], sum(figures["queued"].values())) == (0, 0, 0)
