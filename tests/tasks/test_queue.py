"""The admission layer on its own: the Lua steps of tasks/queue.py against a real Redis, no workers.

Workers only ever call these steps, so ordering, positions, the cap, the rate window, backpressure and
cancellation of waiting jobs can be checked here exactly, one admission at a time. The same behaviours
with real worker processes are in tests/tasks/test_queue_workers.py.
"""

from __future__ import annotations

import json

import pytest

from tasks import keys, metrics, queue
from tasks.broker import NAMESPACE, QUEUE_NAME
from tasks.connection import get_redis
from tasks.settings import settings
from tasks.store import JobError, sync_store


@pytest.fixture
def store(redis_server):
    settings.queue_recovery_seconds = 120  # leases of a minute: nothing expires while a test looks
    return sync_store()


@pytest.fixture
def scripts(store) -> queue.Scripts:
    return store.scripts


def admit(scripts: queue.Scripts, cap: int = 100, rate: int = 0) -> queue.Admission:
    """What a ticket does: one atomic admission step."""
    settings.queue_concurrency, settings.queue_rate_per_min = cap, rate
    return queue.Admission.parse(scripts.admit("test-worker"))


def finish(scripts: queue.Scripts, admission: queue.Admission, status: str = "completed") -> int:
    return scripts.finish(admission.job_id, admission.epoch, status, "done", 0, 0, "answer", "x")


def submit(label: str, priority: str = "normal", user: str = "u1") -> str:
    return sync_store().submit(label, user=user, priority=priority).job_id


def positions(ids: list[str]) -> list[int | None]:
    return list(sync_store().positions(ids).values())


def record(job_id: str) -> dict:
    return get_redis().hgetall(keys.job(job_id))


def public(job_id: str) -> dict:
    return sync_store().job(job_id).public()


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
    assert positions([high]) == [0]
    assert drain(scripts) == [high, *lows]


# --- 2. exact positions -------------------------------------------------------------------------------

def test_position_is_the_number_of_jobs_that_start_before_it(scripts):
    plan = ["normal", "low", "normal", "high", "low", "normal", "high"]
    submitted = [sync_store().submit(f"job {i}", user="u1", priority=p) for i, p in enumerate(plan)]
    ids = [s.job_id for s in submitted]
    before = dict(zip(ids, positions(ids)))
    assert sorted(before.values()) == list(range(len(ids)))
    assert [public(job_id)["position"] for job_id in ids] == [before[job_id] for job_id in ids]
    order = drain(scripts)
    assert {job_id: order.index(job_id) for job_id in ids} == before


def test_positions_move_up_when_a_job_starts_or_is_cancelled_and_down_when_a_higher_one_cuts_in(scripts):
    submitted = [sync_store().submit(f"job {i}", user="u1") for i in range(7)]
    ids = [s.job_id for s in submitted]
    assert [s.position for s in submitted] == list(range(7))  # what submit reports is the live ZRANK
    assert positions(ids) == [0, 1, 2, 3, 4, 5, 6]

    started = admit(scripts)  # the head starts
    assert started.job_id == ids[0]
    assert positions(ids) == [None, 0, 1, 2, 3, 4, 5]
    assert public(ids[0])["position"] is None and public(ids[0])["status"] == "running"

    assert sync_store().cancel(ids[3]) == "cancelled"  # a job in the middle leaves: only those behind move up
    assert positions(ids) == [None, 0, 1, None, 2, 3, 4]

    high = submit("urgent", "high")  # a higher level cuts in: everyone waiting moves down one
    assert positions([high]) == [0]
    assert positions(ids) == [None, 1, 2, None, 3, 4, 5]
    assert [public(job_id)["position"] for job_id in ids[1:3]] == [1, 2]

    assert drain(scripts) == [high, ids[1], ids[2], ids[4], ids[5], ids[6]]


def test_eta_grows_with_position_and_uses_recent_service_times(store):
    settings.queue_concurrency = 2
    get_redis().lpush(keys.SERVICE_TIMES, 4000, 4000, 4000)
    etas = [store.eta(p) for p in range(7)]
    assert etas == sorted(etas) and etas[0] == 0  # two free slots
    # two slots, 4 s a job: position 6 starts in the fourth round
    assert etas[6] >= 3 * 4
    assert store.eta(None) is None


# --- 3. the concurrency cap ------------------------------------------------------------------------------

def test_admission_never_exceeds_the_cap_and_a_finished_job_frees_its_slot(scripts):
    ids = [submit(f"job {i}") for i in range(5)]
    first = [admit(scripts, cap=3) for _ in range(3)]
    assert [a.outcome for a in first] == ["ok"] * 3
    assert admit(scripts, cap=3).outcome == "busy"
    assert get_redis().zcard(keys.LEASES) == 3
    waiting = record(ids[3])
    assert (waiting["status"], waiting["attempts"]) == ("queued", "0")

    assert finish(scripts, first[1]) == 1
    assert get_redis().zcard(keys.LEASES) == 2
    assert admit(scripts, cap=3).job_id == ids[3]
    assert admit(scripts, cap=3).outcome == "busy"


# --- 4. the rate window ----------------------------------------------------------------------------------

def test_rate_window_holds_jobs_back_without_counting_an_attempt(scripts):
    ids = [submit(f"job {i}") for i in range(5)]
    assert [admit(scripts, rate=3).job_id for _ in range(3)] == ids[:3]
    held = admit(scripts, rate=3)
    assert held.outcome == "wait" and 0 < held.wait_ms <= 60_000
    assert admit(scripts, rate=3).outcome == "wait"  # asking again changes nothing
    for job_id in ids[3:]:
        raw = record(job_id)
        assert (raw["status"], raw["phase"], raw["attempts"], raw["epoch"]) == ("queued", "queued", "0", "0")
    assert positions(ids[3:]) == [0, 1]

    # The window slides: once the oldest start is over a minute old, exactly one more job may start.
    client = get_redis()
    oldest = client.zrange(keys.STARTS, 0, 0)[0]
    client.zadd(keys.STARTS, {oldest: client.zscore(keys.STARTS, oldest) - 60_001})
    assert admit(scripts, rate=3).job_id == ids[3]
    assert admit(scripts, rate=3).outcome == "wait"
    assert record(ids[3])["attempts"] == "1"


# --- 8. backpressure -------------------------------------------------------------------------------------

def test_a_full_queue_refuses_with_429_and_leaves_nothing_behind(scripts, r):
    settings.queue_max_waiting = 5
    store = sync_store()
    accepted = [store.submit(f"job {i}", user="u1") for i in range(5)]

    def footprint() -> dict:
        return {
            "jobs": len(list(r.scan_iter(keys.job("*")))),
            "streams": len(list(r.scan_iter(keys.stream("*")))),
            "waiting": r.zcard(keys.WAITING),
            "history": r.llen(keys.history("u1")),
            "conversations": r.zcard(keys.conversations("u1")),
            "turns": r.llen(keys.conversation(accepted[0].conversation_id)),
            "submitted": int(r.hget(keys.TOTALS, "submitted")),
            "seq": int(r.get(keys.SEQ)),
            "tickets": r.hlen(f"{NAMESPACE}:{QUEUE_NAME}.msgs"),
        }

    before = footprint()
    assert before["jobs"] == before["tickets"] == before["submitted"] == 5
    with pytest.raises(JobError) as refused:
        store.submit("one too many", user="u1")
    assert (refused.value.status, refused.value.code) == (429, "queue_full")
    with pytest.raises(JobError) as refused_turn:  # a follow-up in an existing conversation too
        store.submit("and another", user="u1", conversation_id=accepted[0].conversation_id)
    assert refused_turn.value.status == 429
    assert footprint() == before
    assert [h.prompt for h in store.history("u1")] == [f"job {i}" for i in reversed(range(5))]

    # The limit counts waiting jobs only: once one starts, there is room again.
    admit(scripts)
    store.submit("fits now", user="u1")


# --- 6. cancelling a waiting job -----------------------------------------------------------------------

def test_cancelling_a_waiting_job_removes_it_at_once(store, scripts):
    ids = [submit(f"job {i}") for i in range(4)]
    assert store.cancel(ids[1]) == "cancelled"
    raw = record(ids[1])
    assert (raw["status"], raw["phase"], raw["attempts"]) == ("cancelled", "cancelled", "0")
    assert public(ids[1])["position"] is None
    assert positions(ids) == [0, None, 1, 2]
    kinds = [entry["k"] for _, entry in store.stream(ids[1])]
    assert kinds == ["status", "done"]
    assert json.loads(store.stream(ids[1])[-1][1]["d"])["status"] == "cancelled"

    assert metrics.stats()["cancelled"] == 1  # counted once, like every end

    assert store.cancel(ids[1]) == "final"
    assert store.cancel("0" * 32) == "missing"
    assert metrics.stats()["cancelled"] == 1
    assert drain(scripts) == [ids[0], ids[2], ids[3]]


def test_only_the_owner_may_cancel(store):
    job_id = submit("mine", user="alice")
    assert store.cancel(job_id, user="mallory") == "missing"
    assert store.cancel(job_id, user="alice") == "cancelled"


def test_a_failed_attempt_backs_off_in_its_own_place_and_frees_the_slot(store, scripts):
    first = submit("flaky")
    behind = submit("behind")
    running = admit(scripts, cap=1)
    assert running.job_id == first
    assert admit(scripts, cap=1).outcome == "busy"
    assert positions([behind]) == [0]
    assert scripts.back_off(first, running.epoch, 60_000, "busy", "llm_busy") == 1
    job = public(first)
    assert (job["status"], job["position"], job["error_code"]) == ("retrying", 0, "llm_busy")
    assert 55 <= job["retry_in_seconds"] <= 60
    # The slot is free during the backoff: the job behind may start, the backing-off one may not yet. It hands its
    # slot over: it is back in its place in the step that starts the job behind, whose position never goes up.
    assert positions([behind]) == [0]
    assert admit(scripts, cap=1).job_id == behind
    third = submit("third")
    assert positions([first, third]) == [0, 1]  # in its own place, ahead of every later job
    get_redis().zadd(keys.BACKOFF, {first: 0})  # its backoff is over
    finish(scripts, queue.Admission("ok", behind, 1))
    again = admit(scripts, cap=1)
    assert (again.job_id, record(first)["attempts"]) == (first, "2")


def test_a_job_that_backs_off_while_nothing_else_may_start_is_counted_at_once_by_the_jobs_behind_it(store, scripts):
    first = submit("flaky")
    behind = submit("behind")
    running = admit(scripts, cap=1, rate=1)  # the rate window is full now
    assert positions([behind]) == [0]
    assert scripts.back_off(first, running.epoch, 1_000, "busy", "llm_busy") == 1
    # it will start before the job behind it (its backoff ends long before the window has room): that position
    # goes up, truthfully
    assert positions([first, behind]) == [0, 1]
    assert admit(scripts, cap=1, rate=1).outcome == "wait"


def test_a_job_cancelled_while_it_hands_its_slot_over_leaves_nothing(store, scripts):
    first = submit("flaky")
    behind = submit("behind")
    running = admit(scripts, cap=1)
    assert scripts.back_off(first, running.epoch, 60_000, "busy", "llm_busy") == 1
    assert store.cancel(first) == "cancelled"
    assert admit(scripts, cap=1).job_id == behind
    client = get_redis()
    assert not client.exists("qc:handover") and client.zcard(keys.BACKOFF) == 0 and client.zcard(keys.WAITING) == 0
    assert record(first)["status"] == "cancelled"


def test_every_waiting_job_backing_off_makes_the_ticket_wait(store, scripts):
    job_id = submit("flaky")
    running = admit(scripts)
    assert scripts.back_off(job_id, running.epoch, 5_000, "busy", "llm_busy") == 1
    waiting = admit(scripts)
    assert waiting.outcome == "wait" and 0 < waiting.wait_ms <= 5_000


def test_the_last_attempt_fails_the_job_instead_of_backing_off(store, scripts):
    settings.queue_max_retries = 1
    job_id = submit("doomed")
    for attempt in (1, 2):
        running = admit(scripts)
        outcome = scripts.back_off(job_id, running.epoch, 0, "busy", "llm_busy")
        if attempt == 1:
            assert outcome == 1
            get_redis().zadd(keys.BACKOFF, {job_id: 0})
    assert outcome == 2
    job = public(job_id)
    assert (job["status"], job["attempts"], job["error_code"]) == ("failed", 2, "llm_busy")
    assert "gave up after 2 attempts" in job["error"]
    assert admit(scripts).outcome == "empty"


def test_cancelling_a_job_backing_off_ends_it(store, scripts):
    job_id = submit("flaky")
    running = admit(scripts)
    assert scripts.back_off(job_id, running.epoch, 5000, "busy", "llm_busy") == 1
    assert store.cancel(job_id) == "cancelled"
    assert get_redis().zcard(keys.BACKOFF) == 0 and get_redis().zcard(keys.WAITING) == 0
    assert admit(scripts).outcome == "empty"
    assert record(job_id)["status"] == "cancelled"


def test_a_cancel_that_races_a_transient_error_is_not_lost_to_the_retry(store, scripts):
    job_id = submit("cancel me")
    running = admit(scripts)
    assert store.cancel(job_id) == "cancelling"
    assert public(job_id)["cancelling"] is True
    # The LLM call fails before the worker's next poll sees the cancel: the job is not parked for a retry
    # (ADMIT would clear the flag and run it again); it ends as cancelled there and then.
    assert scripts.back_off(job_id, running.epoch, 5000, "busy", "llm_busy") == -1
    assert admit(scripts).outcome == "empty"
    raw = record(job_id)
    assert (raw["status"], raw["attempts"]) == ("cancelled", "1")


# --- 10 (and invariants 4-5). one terminal state, stale workers fenced off ---------------------------

def test_a_job_ends_once_and_a_stale_worker_cannot_write_to_it(store, scripts):
    client = get_redis()
    job_id = submit("contested")
    first = admit(scripts)
    assert scripts.append(job_id, first.epoch, 11, 0, "token", "old ") == 1

    # The first worker stops renewing its lease: the reaper puts the job back with a new epoch.
    client.zadd(keys.LEASES, {job_id: 0})
    back, ended = scripts.reap()
    assert (back, ended) == ([job_id], [])
    assert (record(job_id)["status"], positions([job_id])) == ("queued", [0])
    second = admit(scripts)
    assert second.job_id == job_id and second.epoch > first.epoch
    assert record(job_id)["attempts"] == "2"

    # The stale worker wakes up: none of its writes land.
    assert scripts.append(job_id, first.epoch, 12, 1, "token", "stale ") == 0
    assert scripts.heartbeat(job_id, first.epoch) == [0, 0]
    assert finish(scripts, first, "failed") == 0
    assert scripts.append(job_id, second.epoch, 12, 0, "token", "new") == 1
    assert finish(scripts, second) == 1
    assert finish(scripts, second, "failed") == 0  # a second end is refused
    assert store.cancel(job_id) == "final"

    raw = record(job_id)
    assert (raw["status"], raw["progress"]) == ("completed", "100")
    entries = store.stream(job_id)
    assert [e["k"] for _, e in entries].count("done") == 1
    assert store.job(job_id).answer == "x"  # the stored answer, once ended
    assert client.zcard(keys.LEASES) == 0


def test_releasing_a_dead_workers_leases_puts_its_jobs_back_at_the_next_reap_and_no_one_elses(store, scripts):
    settings.queue_concurrency = 100
    dead, alive = submit("held by the dead"), submit("held by the living")
    assert queue.Admission.parse(scripts.admit("host:1")).job_id == dead
    assert queue.Admission.parse(scripts.admit("host:2")).job_id == alive
    assert scripts.reap() == [[], []]  # leases of two minutes: nothing has run out

    assert scripts.release("host:1") == 1
    assert scripts.reap() == [[dead], []]
    assert (record(dead)["status"], record(alive)["status"]) == ("queued", "running")
    assert scripts.release("host:1") == 0  # nothing held any more: a second look changes nothing
    assert scripts.reap() == [[], []]


def test_the_beat_is_a_heartbeat_and_the_count_of_missing_tickets(store, scripts, r):
    tickets, delayed = f"{NAMESPACE}:{QUEUE_NAME}.msgs", f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs"
    for i in range(3):
        submit(f"waiting {i}")  # each sends its ticket
    assert scripts.beat("host:1", tickets, delayed) == [[], [], 0]
    assert r.zscore(keys.WORKERS, "host:1")
    r.delete(tickets)  # tickets lost (Redis restarted without them, a sender died)
    assert scripts.beat("host:1", tickets, delayed) == [[], [], 3]


def test_tickets_running_jobs_are_not_counted_as_free_for_the_waiting_ones(store, scripts, r):
    tickets, delayed = f"{NAMESPACE}:{QUEUE_NAME}.msgs", f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs"
    for i in range(2):
        submit(f"running {i}")
        assert admit(scripts).outcome == "ok"
    for i in range(3):
        submit(f"waiting {i}")
    r.delete(tickets)
    r.hset(tickets, mapping={"ticket-1": "…", "ticket-2": "…"})  # the running jobs' tickets: the others were lost
    assert scripts.beat("host:1", tickets, delayed) == [[], [], 3]  # it said 1: the rest waited for a job to end


def test_the_beat_reaps_too(store, scripts, r):
    tickets, delayed = f"{NAMESPACE}:{QUEUE_NAME}.msgs", f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs"
    job_id = submit("held by the dead")  # its ticket still counts
    assert queue.Admission.parse(scripts.admit("host:1")).job_id == job_id
    r.zadd(keys.LEASES, {job_id: 0})  # its worker stopped renewing long ago
    assert scripts.beat("host:2", tickets, delayed) == [[job_id], [], 0]  # the janitor sends it a ticket all the same
    assert record(job_id)["status"] == "queued"


def test_expired_leases_are_read_with_the_worker_holding_each_and_when_the_next_runs_out(store, scripts):
    held = submit("held")
    assert queue.Admission.parse(scripts.admit("host:7")).job_id == held
    next_ms, *expired = scripts.read_expired()
    assert expired == [] and 0 < next_ms <= settings.lease_ttl_ms  # main.py looks again when it runs out
    get_redis().zadd(keys.LEASES, {held: 0})  # its worker stopped renewing it
    assert scripts.read_expired() == [-1, held, "host:7"]  # and no other lease to look at later


def test_a_reaped_job_that_used_its_attempts_fails_instead_of_looping(store, scripts):
    settings.queue_max_retries = 1
    job_id = submit("poison")
    for _ in range(2):
        running = admit(scripts)
        assert running.job_id == job_id
        get_redis().zadd(keys.LEASES, {job_id: 0})  # its worker died mid-call
        scripts.reap()
    job = public(job_id)
    assert (job["status"], job["attempts"], job["error_code"]) == ("failed", 2, "worker_lost")
    assert admit(scripts).outcome == "empty"


def test_a_reaped_job_with_a_pending_stop_ends_cancelled_with_what_was_streamed(store, scripts):
    job_id = submit("stop me")
    running = admit(scripts)
    assert scripts.append(job_id, running.epoch, 20, 0, "token", "seen ", "token", "so far") == 1
    assert store.cancel(job_id) == "cancelling"
    get_redis().zadd(keys.LEASES, {job_id: 0})  # its worker is cut off: nobody ends it but the reaper
    assert scripts.reap() == [[], [job_id]]
    job = public(job_id)
    assert (job["status"], job["answer"]) == ("cancelled", "seen so far")


def test_chunks_are_numbered_within_an_attempt_and_one_sent_again_is_written_once(store, scripts):
    job_id = submit("numbered")
    first = admit(scripts)
    assert scripts.append(job_id, first.epoch, 10, 0, "token", "a", "token", "b") == 1
    assert scripts.append(job_id, first.epoch, 10, 0, "token", "a", "token", "b") == 1  # sent again: a timeout
    assert scripts.append(job_id, first.epoch, 11, 1, "token", "b", "token", "c") == 1  # half of it known
    # The end carries what the worker could not confirm: written only from where the stream is.
    assert scripts.finish(job_id, first.epoch, "failed", "failed", 2, 2, "token", "c", "token", "d") == 1
    assert [e["d"] for _, e in store.stream(job_id) if e["k"] == "token"] == ["a", "b", "c", "d"]

    # A new attempt numbers from 0 again.
    job_id = submit("again")
    running = admit(scripts)
    scripts.append(job_id, running.epoch, 10, 0, "token", "x")
    get_redis().zadd(keys.LEASES, {job_id: 0})
    scripts.reap()
    second = admit(scripts)
    assert scripts.append(job_id, second.epoch, 10, 0, "token", "y") == 1
    assert [(e["a"], e["d"]) for _, e in store.stream(job_id) if e["k"] == "token"] == [
        (str(running.epoch), "x"), (str(second.epoch), "y")]


def test_stream_status_entries_carry_json_snapshots(store, scripts):
    job_id = submit("hello")
    running = admit(scripts)
    assert scripts.append(job_id, running.epoch, 10, 0, "token", "a") == 1   # the first chunk: generating
    assert scripts.append(job_id, running.epoch, 14, 1, "token", "b") == 1   # progress told every 5 points
    assert scripts.append(job_id, running.epoch, 15, 2, "token", "c") == 1
    snapshots = [(e["a"], json.loads(e["d"])) for _, e in store.stream(job_id) if e["k"] == "status"]
    assert [(a, s["phase"], s["progress"]) for a, s in snapshots] == [
        ("0", "queued", 0), ("1", "prompt", 8), ("1", "generating", 10), ("1", "generating", 15)]


def test_a_live_job_reads_with_its_answer_so_far_and_only_its_owner_reads_it(store, scripts):
    job_id = submit("hello", user="alice")
    running = admit(scripts)
    scripts.append(job_id, running.epoch, 20, 0, "think", "hmm", "token", "Hel", "token", "lo")
    job = store.job(job_id, user="alice")
    assert (job.status, job.answer, job.thinking) == ("running", "Hello", "hmm")
    assert store.job(job_id, user="bob") is None
    assert store.job("not-an-id") is None
