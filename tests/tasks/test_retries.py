"""Every attempt counts, whatever ends it, and a failed attempt keeps the job's place: real ``dramatiq`` workers,
a real Redis and the fake LLM over HTTP (issue 10, points 1, 5 and 6).

* An LLM failure of any kind — a host that never answers a connect, a line of the wrong shape, an exception of a
  class nobody expected — is counted, and the job fails after QUEUE_MAX_RETRIES + 1 attempts with a message a person
  can read; a worker killed mid-call again and again counts too (``worker_lost``). Nothing loops.
* A job backing off keeps its place in line: it is the next to start once its backoff ends, says ``retrying`` with
  the seconds left meanwhile, and the positions of the jobs behind it only ever count down.
"""

from __future__ import annotations

import os
import signal

import pytest

from devtools.fake_llm import Blackhole, Reply
from devtools.waiting import wait_for
from tasks.settings import settings
from tasks.store import sync_store
from tests.helpers import (asked, is_over, public, raw, resets, slow, snapshots, submit, wait_over,
                           wait_running)

RETRIES = {"QUEUE_MAX_RETRIES": "2"}  # three attempts


# --- 1. an LLM failure of any kind ends the job after its attempts ------------------------------------------

@pytest.mark.parametrize("fault, reason, code", [
    ("[[wrong_shape_after=1]]", "sent a malformed reply", "llm_malformed"),      # {"message": "text"}
    ("[[too_deep_after=1]]", "failed unexpectedly (RecursionError)", "llm_error"),  # a class nobody expected
], ids=["wrong_shape", "unexpected_exception"])
def test_an_llm_failure_of_any_kind_is_counted_and_the_job_fails_after_its_attempts(workers, fake_llm, fault, reason,
                                                                                    code):
    workers.start(QUEUE_CONCURRENCY="1", **RETRIES)
    poison = submit(f"poison [[tokens=4]] {fault}", "high")
    behind = submit("behind [[tokens=3]]", "low")
    failed, completed = wait_over(poison, behind)
    assert (failed["status"], failed["error_code"], failed["attempts"]) == ("failed", code, settings.max_attempts)
    assert reason in failed["error"] and f"gave up after {settings.max_attempts} attempts" in failed["error"]
    assert asked(fake_llm, "poison") == settings.max_attempts  # counted: no attempt more, none uncounted
    assert (completed["status"], completed["answer"]) == ("completed", "t0 t1 t2")
    assert fake_llm.max_active == 1


def test_a_final_line_that_cannot_be_recorded_is_a_malformed_reply_not_a_lost_worker(workers, fake_llm):
    # The whole answer streams, then a 'done' line whose reason is not text: the job can't be ended with it.
    fake_llm.set_default(Reply(text="a b c", done_reason={"why": "odd"}))
    workers.start(QUEUE_CONCURRENCY="1", **RETRIES)
    [failed] = wait_over(submit("odd end"))
    assert (failed["status"], failed["error_code"], failed["attempts"]) == ("failed", "llm_malformed", 3)
    assert "sent a malformed reply" in failed["error"] and "gave up after 3 attempts" in failed["error"]
    assert asked(fake_llm, "odd end") == 3


def test_an_llm_host_that_never_answers_a_connect_fails_the_job_after_its_attempts(pools, fake_llm):
    with Blackhole() as hole:
        pools(processes=1, OLLAMA_HOST=hole.url, LLM_CONNECT_TIMEOUT="0.3", **RETRIES)
        poison = submit("behind a firewall", "high")
        behind = submit("next", "low")
        failed, next_one = wait_over(poison, behind)
    assert (failed["status"], failed["error_code"], failed["attempts"]) == ("failed", "llm_unreachable", 3)
    assert failed["error"] == "The LLM server 'ollama' is not reachable. (gave up after 3 attempts)"
    assert hole.url.split("//")[1] not in failed["error"]
    # the job behind it was not held up for ever: it ran (at the same firewall) and ended the same way
    assert (next_one["status"], next_one["attempts"]) == ("failed", 3)


def test_a_worker_killed_mid_answer_again_and_again_counts_each_attempt_and_the_job_fails(pools, fake_llm):
    live = [pools(processes=1, **RETRIES), pools(processes=1, **RETRIES)]
    poison = submit(slow("poison", 400, 0.05), "high")
    behind = submit("behind [[tokens=3]]", "low")
    for attempt in range(1, settings.max_attempts + 1):
        record = wait_running(poison, attempts=attempt, timeout=settings.queue_recovery_seconds + 20)
        pid = int(record["worker"].rpartition(":")[2])
        [pool] = [pool for pool in live if pid in pool.children()]
        os.kill(pid, signal.SIGKILL)  # its master exits after it: start another pool to keep two
        live.remove(pool)
        live.append(pools(processes=1, **RETRIES))
    failed, completed = wait_over(poison, behind, timeout=settings.queue_recovery_seconds + 30)
    assert (failed["status"], failed["error_code"], failed["attempts"]) == ("failed", "worker_lost", 3)
    assert failed["error"] == "The worker answering this stopped responding (gave up after 3 attempts)."
    assert asked(fake_llm, "poison") == 3
    assert (completed["status"], completed["attempts"], completed["answer"]) == ("completed", 1, "t0 t1 t2")
    assert raw(poison)["status"] == "failed"
    wait_for(lambda: fake_llm.active == 0, timeout=5, what="no call left open")



# --- 5 + 6. a job that backs off keeps its place, and says so; the positions behind it only count down -------

def started_at(job_id: str) -> int | None:
    value = raw(job_id).get("started_at")
    return int(value) if value else None


# A backoff of one second; an answer held silent (hang_after) while a test sets the scene is not timed out meanwhile.
SECOND_BACKOFF = {"QUEUE_CONCURRENCY": "1", "RETRY_MIN_BACKOFF_MS": "1000", "RETRY_MAX_BACKOFF_MS": "1000",
                  "LLM_IDLE_TIMEOUT": "60"}


def test_a_job_that_backs_off_is_the_next_to_start_when_its_backoff_ends_and_says_it_is_retrying(workers, fake_llm):
    workers.start(**SECOND_BACKOFF)
    fake_llm.script(Reply(tokens=["r0", " r1"], hang_after=1))  # holds the slot until the high job waits too
    running = submit("running")
    wait_for(lambda: asked(fake_llm, "running") == 1, what="the running job's call")
    lows = [submit(f"low {i} [[tokens=2]][[delay=0.1]]", "low") for i in range(200)]  # each holds the slot 0.2 s+
    fake_llm.script(Reply(status=503, error="busy"))  # the next call: the high job's, once the running one ends
    high = submit("high [[tokens=3]]", "high")
    wait_for(lambda: fake_llm.held == 1, what="the running answer to hang")  # else the release frees nothing
    fake_llm.release()
    # (between its failed call and the admission that gives its slot to the next job it has no position)
    backing_off = wait_for(lambda: (job := public(high))["status"] == "retrying" and job["position"] is not None
                           and job, interval=0.01, what="the high job to back off, in line")
    assert (backing_off["position"], backing_off["attempts"], backing_off["error_code"]) == (0, 1, "llm_busy")
    assert backing_off["retry_in_seconds"] in (0, 1)
    [done] = wait_over(high)
    assert (done["status"], done["attempts"], done["answer"]) == ("completed", 2, "t0 t1 t2")
    [(failed_ms, retrying)] = [(ms, s) for ms, s in snapshots(high) if s["status"] == "retrying"]
    ready_ms, second_start = retrying["retry_at"], resets(high)[-1][0]
    assert ready_ms - failed_ms <= 1000
    came_before = [started_at(low) for low in lows if started_at(low) and started_at(low) <= second_start]
    # the slot was free to others while it backed off, and none of them started once its backoff was over
    assert came_before and all(failed_ms <= ms < ready_ms for ms in came_before), (failed_ms, ready_ms, came_before)
    assert len(came_before) <= 6  # a backoff of at most 1 s holds at most 5 low jobs of 0.2 s (and one it began in)
    for low in lows:
        sync_store().cancel(low)
    wait_over(running, *lows)


def sample_positions(job_ids: list[str], until) -> dict[str, list[int]]:
    """Every position each job had while it waited, sampled as fast as Redis answers until ``until()``."""
    seen: dict[str, list[int]] = {job_id: [] for job_id in job_ids}
    while not until():
        for job_id, position in sync_store().positions(job_ids).items():
            if position is not None and (not seen[job_id] or seen[job_id][-1] != position):
                seen[job_id].append(position)
    return seen


def test_the_positions_behind_jobs_that_back_off_only_count_down(workers, fake_llm):
    workers.start(**SECOND_BACKOFF)
    running = submit(slow("running", 10, 0.05))
    wait_for(lambda: asked(fake_llm, "running") == 1, what="the running job's call")
    # The next five calls fail (the first high jobs', or a retry's) with a bad line, which says nothing about
    # the server: its breaker stays closed and another job may start at once. (When nothing may start — two refusals
    # in a row open the breaker — a job that fails rejoins its line at once: it will start before the jobs behind
    # it, and their positions say so.)
    fake_llm.script(*[Reply(text="a b", wrong_shape_after=1, first_token_delay=0.2)] * 5)
    highs = [submit(f"high {i} [[tokens=3]][[delay=0.05]]", "high") for i in range(8)]
    lows = [submit(f"low {i} [[tokens=3]][[delay=0.05]]", "low") for i in range(20)]
    # a few jobs, sampled as often as Redis answers: a position that goes up for a moment is seen
    seen = sample_positions([*highs, *lows[:4]], until=lambda: all(is_over(job_id) for job_id in highs))
    jobs = dict(zip(highs + lows, wait_over(*highs, *lows)))
    assert sum(job["attempts"] - 1 for job in jobs.values()) == 5 and all(
        job["status"] == "completed" for job in jobs.values())
    # every job that never backed off itself saw its position only count down
    others = {job_id: seen[job_id] for job_id, job in jobs.items() if job["attempts"] == 1 and job_id in seen}
    went_up = [positions for positions in others.values() if positions != sorted(positions, reverse=True)]
    assert len(others) >= 7 and not went_up, went_up
    wait_over(running)
