"""Fair share between identities within a priority level (start-time fair queuing in the SUBMIT step), per-user
quotas, aging and re-prioritising — on a real Redis, one admission at a time, no workers."""

from __future__ import annotations

import random

import pytest

from tasks import queue
from tasks.settings import settings
from tasks.store import JobError, sync_store


@pytest.fixture
def store(redis_server):
    settings.queue_recovery_seconds = 120
    settings.queue_concurrency = 1000
    return sync_store()


def submit(store, user: str, priority: str = "normal", label: str = "") -> str:
    return store.submit(label or f"{user} asks", user=user, priority=priority).job_id


def drain(store) -> list[str]:
    order = []
    while (admission := queue.Admission.parse(store.scripts.admit("w"))).outcome == "ok":
        order.append(admission.job_id)
    return order


def test_users_take_turns_within_a_level_and_each_keeps_its_own_order(store):
    alice = [submit(store, "alice", label=f"a{i}") for i in range(5)]
    bob = [submit(store, "bob", label=f"b{i}") for i in range(3)]
    order = drain(store)
    assert order == [alice[0], bob[0], alice[1], bob[1], alice[2], bob[2], alice[3], alice[4]]


def test_a_newcomer_waits_for_at_most_one_job_of_a_user_with_a_hundred(store):
    settings.queue_max_waiting_per_user = 1000
    heavy = [submit(store, "heavy") for _ in range(100)]
    newcomer = submit(store, "newcomer")
    assert store.positions([newcomer])[newcomer] == 1
    order = drain(store)
    assert order.index(newcomer) == 1 and order[0] == heavy[0]
    assert [job for job in order if job != newcomer] == heavy  # FIFO within the heavy user


def test_a_newcomer_arriving_later_still_gets_the_next_fair_turn(store):
    settings.queue_max_waiting_per_user = 1000
    heavy = [submit(store, "heavy") for _ in range(30)]
    started = [queue.Admission.parse(store.scripts.admit("w")).job_id for _ in range(10)]
    assert started == heavy[:10]
    late = submit(store, "late")
    assert store.positions([late])[late] == 1  # after the heavy user's next one, not after all 20
    assert drain(store)[:2] == [heavy[10], late]


def test_priority_stays_strict_between_levels(store):
    settings.queue_max_waiting_per_user = 1000
    lows = [submit(store, f"user{i}", "low") for i in range(5)]
    normals = [submit(store, "heavy", "normal") for _ in range(5)]
    high = submit(store, "someone", "high")
    order = drain(store)
    assert order == [high, *normals, *lows]


def test_a_single_waiting_job_never_moves_back_for_jobs_of_its_level(store):
    settings.queue_max_waiting_per_user = 1000
    rng = random.Random(7)
    for i in range(20):
        submit(store, "heavy")
    watched = submit(store, "patient")
    last = store.positions([watched])[watched]
    for step in range(200):
        action = rng.random()
        if action < 0.5:
            submit(store, rng.choice(["heavy", "other", f"new{step}"]))
        elif action < 0.8:
            queue.Admission.parse(store.scripts.admit("w"))
        else:
            submit(store, rng.choice(["x", "y"]), "low")
        now = store.positions([watched])[watched]
        if now is None:
            break
        assert now <= last, (step, last, now)
        last = now


def test_positions_are_exact_under_fair_share(store):
    settings.queue_max_waiting_per_user = 1000
    rng = random.Random(11)
    ids = [submit(store, rng.choice(["a", "b", "c", "d"]), rng.choice(["high", "normal", "low"])) for _ in range(40)]
    before = store.positions(ids)
    order = drain(store)
    assert {job_id: order.index(job_id) for job_id in ids} == before


def test_a_user_over_the_waiting_quota_is_refused_and_others_are_not(store):
    settings.queue_max_waiting_per_user = 3
    for _ in range(3):
        submit(store, "greedy")
    with pytest.raises(JobError) as refused:
        submit(store, "greedy")
    assert (refused.value.status, refused.value.code, refused.value.params["limit"]) == (429, "too_many_waiting", 3)
    submit(store, "modest")
    queue.Admission.parse(store.scripts.admit("w"))  # one of greedy's starts: room again
    submit(store, "greedy")


def test_aging_promotes_a_job_that_waited_too_long(store, r):
    settings.queue_max_waiting_per_user = 1000
    old = submit(store, "patient", "low")
    normals = [submit(store, "busy", "normal") for _ in range(3)]
    settings.queue_aging_seconds = 30
    r.zadd("qc:since", {old: 0})  # it has waited long enough
    store.scripts.reap()
    job = store.job(old)
    assert job.priority == "normal" and job.record["aged_from"] == "low"
    order = drain(store)
    assert order.index(old) < 3  # ahead of the normal jobs of the busy user after its fair turn
    assert order[-1] in normals


def test_an_admin_may_move_a_waiting_job_to_another_level(store):
    settings.queue_max_waiting_per_user = 1000
    lows = [submit(store, "u", "low") for _ in range(3)]
    normal = submit(store, "v", "normal")
    assert store.reprioritize(lows[2], "high")
    assert store.job(lows[2]).priority == "high"
    assert drain(store) == [lows[2], normal, lows[0], lows[1]]
    assert not store.reprioritize(lows[0], "high")  # no longer waiting


def test_the_admin_board_shows_every_job_without_its_text_and_pausing_holds_admission(store):
    ids = [submit(store, user, label=f"secret {user}") for user in ("a", "b", "a")]
    running = queue.Admission.parse(store.scripts.admit("w"))
    board = store.board()
    assert [row["job_id"] for row in board["running"]] == [running.job_id]
    assert [(row["job_id"], row["position"]) for row in board["waiting"]] == [(ids[1], 0), (ids[2], 1)]
    assert board["waiting_total"] == 2 and not board["paused"]
    assert "secret" not in str(board)
    store.pause(True)
    assert store.board()["paused"] and queue.Admission.parse(store.scripts.admit("w")).outcome == "busy"
    store.pause(False)
    assert queue.Admission.parse(store.scripts.admit("w")).job_id == ids[1]


def test_usage_per_identity_counts_ended_jobs_and_their_waits(store):
    for user in ("a", "a", "b"):
        submit(store, user)
        admission = queue.Admission.parse(store.scripts.admit("w"))
        store.scripts.finish(admission.job_id, admission.epoch, "completed", "done", 0, 0, "completion_tokens", "7")
    rows = {row["user"]: row for row in store.usage()}
    assert (rows["a"]["jobs"], rows["a"]["tokens"], rows["b"]["jobs"]) == (2, 14, 1)
    assert rows["a"]["wait_p50_ms"] is not None
