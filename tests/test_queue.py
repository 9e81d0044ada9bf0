"""The admission layer on its own: the Lua steps of tasks/queue.py against a real Redis, no workers.

Workers only ever call these steps, so ordering, positions, the cap, the rate window, backpressure and
cancellation of waiting jobs can be checked here exactly, one admission at a time. The same behaviours
with real worker processes are in tests/test_queue_workers.py.
"""

from __future__ import annotations

import json

import pytest

from tasks import jobs, metrics, queue
from tasks.broker import NAMESPACE, QUEUE_NAME
from tasks.connection import get_redis
from tasks.settings import settings

LEASE_MS = 60_000


@pytest.fixture
def scripts(redis_server) -> queue.Scripts:
    return queue.Scripts(get_redis())


def admit(scripts: queue.Scripts, cap: int = 100, rate: int = 0) -> queue.Admission:
    """What a ticket does: one atomic admission step."""
    reply = scripts.admit(keys=[queue.WAITING, queue.LEASES, queue.STARTS], args=[cap, rate, LEASE_MS])
    return queue.parse_admission(reply)


def finish(scripts: queue.Scripts, admission: queue.Admission, status: str = "completed") -> int:
    return scripts.finish(keys=[queue.job_key(admission.job_id), queue.LEASES, queue.WAKE],
                          args=[admission.job_id, admission.epoch, status, "done", 60, "answer", "x"])


def submit(label: str, priority: str = "normal", user: str = "u1") -> str:
    return jobs.submit(label, user=user, priority=priority).job_id


def positions(ids: list[str]) -> list[int | None]:
    return [queue.position(get_redis(), job_id) for job_id in ids]


def drain(scripts: queue.Scripts) -> list[str]:
    """Admit until nothing waits; the ids in the order they would start."""
    order = []
    while (admission := admit(scripts)).outcome == "ok":
        order.append(admission.job_id)
    assert admission.outcome == "empty"
    return order


# --- 1. strict priority, FIFO within a level --------------------------------------------------------

def test_jobs_start_by_priority_then_in_submission_order(scripts):
    plan = ["low", "normal", "high", "low", "high", "normal", "low", "normal", "high", "low"]
    ids = [submit(f"job {i}", priority) for i, priority in enumerate(plan)]
    expected = sorted(range(len(plan)), key=lambda i: (queue.PRIORITY_LEVELS[plan[i]], i))
    assert drain(scripts) == [ids[i] for i in expected]


def test_a_high_job_submitted_behind_twenty_low_jobs_starts_first(scripts):
    lows = [submit(f"low {i}", "low") for i in range(20)]
    high = submit("urgent", "high")
    assert queue.position(get_redis(), high) == 0
    assert drain(scripts) == [high, *lows]


# --- 2. exact positions -------------------------------------------------------------------------------

def test_position_is_the_number_of_jobs_that_start_before_it(scripts):
    plan = ["normal", "low", "normal", "high", "low", "normal", "high"]
    submitted = [jobs.submit(f"job {i}", user="u1", priority=p) for i, p in enumerate(plan)]
    ids = [s.job_id for s in submitted]
    before = dict(zip(ids, positions(ids)))
    assert sorted(before.values()) == list(range(len(ids)))
    assert [jobs.get_job(job_id)["position"] for job_id in ids] == [before[job_id] for job_id in ids]
    order = drain(scripts)
    assert {job_id: order.index(job_id) for job_id in ids} == before


def test_positions_move_up_when_a_job_starts_or_is_cancelled_and_down_when_a_higher_one_cuts_in(scripts):
    submitted = [jobs.submit(f"job {i}", user="u1") for i in range(7)]
    ids = [s.job_id for s in submitted]
    assert [s.position for s in submitted] == list(range(7))  # what submit reports is the live ZRANK
    assert positions(ids) == [0, 1, 2, 3, 4, 5, 6]

    started = admit(scripts)  # the head starts
    assert started.job_id == ids[0]
    assert positions(ids) == [None, 0, 1, 2, 3, 4, 5]
    assert jobs.get_job(ids[0])["position"] is None and jobs.get_job(ids[0])["status"] == "running"

    assert jobs.cancel(ids[3]) == "cancelled"  # a job in the middle leaves: only those behind move up
    assert positions(ids) == [None, 0, 1, None, 2, 3, 4]

    high = submit("urgent", "high")  # a higher level cuts in: everyone waiting moves down one
    assert queue.position(get_redis(), high) == 0
    assert positions(ids) == [None, 1, 2, None, 3, 4, 5]
    assert [jobs.get_job(job_id)["position"] for job_id in ids[1:3]] == [1, 2]

    assert drain(scripts) == [high, ids[1], ids[2], ids[4], ids[5], ids[6]]


def test_eta_grows_with_position_and_uses_recent_service_times(scripts):
    settings.queue_concurrency = 2
    get_redis().lpush(metrics.SERVICE_TIMES, 4000, 4000, 4000)
    etas = [metrics.eta_seconds(p) for p in range(7)]
    assert etas == sorted(etas) and etas[0] > 0
    # two slots, 4 s a job: the head starts within one service time, position 6 only in the fourth round
    assert etas[0] <= 4 and etas[6] >= 3 * 4
    assert metrics.eta_seconds(None) is None


# --- 3. the concurrency cap ------------------------------------------------------------------------------

def test_admission_never_exceeds_the_cap_and_a_finished_job_frees_its_slot(scripts):
    ids = [submit(f"job {i}") for i in range(5)]
    first = [admit(scripts, cap=3) for _ in range(3)]
    assert [a.outcome for a in first] == ["ok"] * 3
    assert admit(scripts, cap=3).outcome == "busy"
    assert get_redis().zcard(queue.LEASES) == 3
    waiting = jobs.get_raw(ids[3])
    assert (waiting["status"], waiting["attempts"]) == ("queued", "0")

    assert finish(scripts, first[1]) == 1
    assert get_redis().zcard(queue.LEASES) == 2
    assert admit(scripts, cap=3).job_id == ids[3]
    assert admit(scripts, cap=3).outcome == "busy"


# --- 4. the rate window ----------------------------------------------------------------------------------

def test_rate_window_holds_jobs_back_without_counting_an_attempt(scripts):
    ids = [submit(f"job {i}") for i in range(5)]
    assert [admit(scripts, rate=3).job_id for _ in range(3)] == ids[:3]
    held = admit(scripts, rate=3)
    assert held.outcome == "rate" and 0 < held.retry_in_ms <= 60_000
    assert admit(scripts, rate=3).outcome == "rate"  # asking again changes nothing
    for job_id in ids[3:]:
        raw = jobs.get_raw(job_id)
        assert (raw["status"], raw["phase"], raw["attempts"], raw["epoch"]) == ("queued", "queued", "0", "0")
    assert positions(ids[3:]) == [0, 1]

    # The window slides: once the oldest start is over a minute old, exactly one more job may start.
    client = get_redis()
    oldest = client.zrange(queue.STARTS, 0, 0)[0]
    client.zadd(queue.STARTS, {oldest: client.zscore(queue.STARTS, oldest) - 60_001})
    assert admit(scripts, rate=3).job_id == ids[3]
    assert admit(scripts, rate=3).outcome == "rate"
    assert jobs.get_raw(ids[3])["attempts"] == "1"


# --- 8. backpressure -------------------------------------------------------------------------------------

def test_a_full_queue_refuses_with_429_and_leaves_nothing_behind(scripts, r):
    settings.queue_max_waiting = 5
    accepted = [jobs.submit(f"job {i}", user="u1") for i in range(5)]

    def footprint() -> dict:
        return {
            "jobs": len(list(r.scan_iter(queue.job_key("*")))),
            "streams": len(list(r.scan_iter(queue.stream_key("*")))),
            "waiting": r.zcard(queue.WAITING),
            "history": r.llen(jobs.history_key("u1")),
            "conversations": r.zcard(jobs.conversations_key("u1")),
            "owners": r.hlen(jobs.CONVERSATION_OWNERS),
            "turns": r.llen(jobs.conversation_key(accepted[0].conversation_id)),
            "submitted": int(r.hget(queue.TOTALS, "submitted")),
            "seq": int(r.get(queue.SEQ)),
            "tickets": r.hlen(f"{NAMESPACE}:{QUEUE_NAME}.msgs"),
        }

    before = footprint()
    assert before["jobs"] == before["tickets"] == before["submitted"] == 5
    with pytest.raises(jobs.JobError) as refused:
        jobs.submit("one too many", user="u1")
    assert (refused.value.status, refused.value.code) == (429, "queue_full")
    with pytest.raises(jobs.JobError) as refused_turn:  # a follow-up in an existing conversation too
        jobs.submit("and another", user="u1", conversation_id=accepted[0].conversation_id)
    assert refused_turn.value.status == 429
    assert footprint() == before
    assert [h["prompt"] for h in jobs.history("u1")] == [f"job {i}" for i in reversed(range(5))]

    # The limit counts waiting jobs only: once one starts, there is room again.
    admit(scripts)
    jobs.submit("fits now", user="u1")


# --- 6. cancelling a waiting job -----------------------------------------------------------------------

def test_cancelling_a_waiting_job_removes_it_at_once(scripts):
    ids = [submit(f"job {i}") for i in range(4)]
    assert jobs.cancel(ids[1]) == "cancelled"
    raw = jobs.get_raw(ids[1])
    assert (raw["status"], raw["phase"], raw["attempts"]) == ("cancelled", "cancelled", "0")
    assert jobs.get_job(ids[1])["position"] is None
    assert positions(ids) == [0, None, 1, 2]
    kinds = [entry["k"] for _, entry in jobs.read_stream(ids[1])]
    assert kinds == ["status", "done"]
    assert jobs.snapshot_of(jobs.read_stream(ids[1])[-1][1])["status"] == "cancelled"

    assert metrics.stats()["cancelled"] == 1  # counted once, like every end

    assert jobs.cancel(ids[1]) == "final"
    assert jobs.cancel("0" * 32) == "missing"
    assert metrics.stats()["cancelled"] == 1
    assert drain(scripts) == [ids[0], ids[2], ids[3]]


def test_cancelling_a_job_parked_for_a_retry_ends_it(scripts):
    job_id = submit("flaky")
    running = admit(scripts)
    assert scripts.back_off(keys=[queue.job_key(job_id), queue.LEASES, queue.DELAYED, queue.WAKE],
                            args=[job_id, running.epoch, 5000, "busy"]) == 1
    assert jobs.cancel(job_id) == "cancelled"
    assert get_redis().zcard(queue.DELAYED) == 0
    # The retry ticket that comes back later finds nothing to return.
    assert scripts.return_(keys=[queue.job_key(job_id), queue.DELAYED, queue.WAITING], args=[job_id]) == 0
    assert admit(scripts).outcome == "empty"
    assert jobs.get_raw(job_id)["status"] == "cancelled"


def test_a_cancel_that_races_a_transient_error_is_not_lost_to_the_retry(scripts):
    job_id = submit("cancel me")
    running = admit(scripts)
    assert jobs.cancel(job_id) == "cancelling"
    # The LLM call fails before the worker's next poll sees the cancel: the job must not be parked for a
    # retry (ADMIT would clear the flag and run it again); the worker is told to end it as cancelled.
    assert scripts.back_off(keys=[queue.job_key(job_id), queue.LEASES, queue.DELAYED, queue.WAKE],
                            args=[job_id, running.epoch, 5000, "busy"]) == -1
    assert get_redis().zcard(queue.DELAYED) == 0
    assert finish(scripts, running, "cancelled") == 1
    assert scripts.return_(keys=[queue.job_key(job_id), queue.DELAYED, queue.WAITING], args=[job_id]) == 0
    assert admit(scripts).outcome == "empty"
    raw = jobs.get_raw(job_id)
    assert (raw["status"], raw["attempts"]) == ("cancelled", "1")


# --- 10 (and invariants 4-5). one terminal state, stale workers fenced off ---------------------------

def test_a_job_ends_once_and_a_stale_worker_cannot_write_to_it(scripts):
    client = get_redis()
    job_id = submit("contested")
    first = admit(scripts)
    assert scripts.append(keys=[queue.job_key(job_id)], args=[job_id, first.epoch, "token", "old ", 11]) == 1

    # The first worker stops renewing its lease: the reaper puts the job back with a new epoch.
    client.zadd(queue.LEASES, {job_id: 0})
    back, ended = scripts.reap(keys=[queue.LEASES, queue.WAITING, queue.DELAYED, queue.WAKE], args=[60])
    assert (back, ended) == ([job_id], [])
    assert (jobs.get_raw(job_id)["status"], queue.position(client, job_id)) == ("queued", 0)
    second = admit(scripts)
    assert second.job_id == job_id and second.epoch > first.epoch
    assert jobs.get_raw(job_id)["attempts"] == "2"

    # The stale worker wakes up: none of its writes land.
    job = queue.job_key(job_id)
    assert scripts.append(keys=[job], args=[job_id, first.epoch, "token", "stale ", 12]) == 0
    assert scripts.progress(keys=[job], args=[job_id, first.epoch, "generating", 50]) == 0
    assert scripts.heartbeat(keys=[job, queue.LEASES], args=[job_id, first.epoch, LEASE_MS]) == [0, 0]
    assert finish(scripts, first, "failed") == 0
    assert scripts.append(keys=[job], args=[job_id, second.epoch, "token", "new", 12]) == 1
    assert finish(scripts, second) == 1
    assert finish(scripts, second, "failed") == 0  # a second end is refused
    assert jobs.cancel(job_id) == "final"

    raw = jobs.get_raw(job_id)
    assert (raw["status"], raw["progress"]) == ("completed", "100")
    entries = jobs.read_stream(job_id)
    assert [e["k"] for _, e in entries].count("done") == 1
    assert jobs.answer_so_far(job_id) == ("new", "")
    assert client.zcard(queue.LEASES) == 0


def test_stream_status_entries_carry_json_snapshots(scripts):
    job_id = submit("hello")
    running = admit(scripts)
    assert scripts.progress(keys=[queue.job_key(job_id)], args=[job_id, running.epoch, "prompt", 8]) == 1
    snapshots = [(e["a"], json.loads(e["d"])) for _, e in jobs.read_stream(job_id) if e["k"] == "status"]
    assert [(a, s["phase"], s["progress"]) for a, s in snapshots] == [
        ("0", "queued", 0), ("1", "starting", 5), ("1", "prompt", 8)]

