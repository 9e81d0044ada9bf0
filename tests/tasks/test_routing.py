"""Routing across several LLM servers, at the admission layer (real Redis, no workers): per-backend slots, lines
per model, never an idle slot while a job it can serve waits, positions per line, the circuit breaker."""

from __future__ import annotations

import asyncio
import json

import pytest

from tasks import backends, queue
from tasks.llm.base import close_shared_http
from tasks.settings import settings
from tasks.store import JobError, async_store, sync_store

FLEET = {"backend": [
    {"name": "big", "url": "http://127.0.0.1:9", "slots": 1, "models": ["a", "b"]},
    {"name": "small", "url": "http://127.0.0.1:9", "slots": 2, "models": ["a"]},
    {"name": "other", "url": "http://127.0.0.1:9", "kind": "openai", "slots": 1, "models": ["c"]},
], "aliases": {"any": ["b", "c"]}}


@pytest.fixture
def store(redis_server):
    settings.queue_recovery_seconds = 120
    settings.queue_max_waiting_per_user = 1000
    settings.llm_backends = json.dumps(FLEET)
    return sync_store()


def submit(store, model: str, priority: str = "normal", user: str = "u") -> str:
    return store.submit(f"for {model}", user=user, priority=priority, model=model).job_id


def admit(store) -> queue.Admission:
    return queue.Admission.parse(store.scripts.admit("w"))


def test_each_backend_takes_only_models_it_serves_up_to_its_own_slots(store):
    c_jobs = [submit(store, "c") for _ in range(2)]
    a_jobs = [submit(store, "a") for _ in range(4)]
    started = [admit(store) for _ in range(4)]
    assert sorted((s.backend, s.model) for s in started) == [("big", "a"), ("other", "c"), ("small", "a"),
                                                              ("small", "a")]
    assert admit(store).outcome == "busy"  # every slot that could serve the rest is taken
    assert store.job(c_jobs[1]).position == 0 and store.job(a_jobs[3]).position == 0


def test_no_head_of_line_blocking_a_free_slot_never_waits_for_a_job_it_can_serve(store):
    blocked = [submit(store, "c", "high") for _ in range(3)]  # ahead of everything, only 'other' serves c
    assert admit(store).backend == "other"
    behind = submit(store, "a", "low")
    started = admit(store)
    assert (started.job_id, started.backend in ("big", "small")) == (behind, True)
    assert store.job(blocked[1]).position == 0


def test_an_alias_runs_on_any_server_with_one_of_its_models(store):
    job = submit(store, "any")
    started = admit(store)
    assert started.job_id == job and (started.backend, started.model) in (("big", "b"), ("other", "c"))


def test_position_counts_the_jobs_ahead_that_compete_for_the_same_servers(store):
    first_b = submit(store, "b")
    c_job = submit(store, "c")
    a_job = submit(store, "a")
    # a competes with b (both on 'big'), not with c (only on 'other')
    assert store.positions([first_b, c_job, a_job]) == {first_b: 0, c_job: 0, a_job: 1}


def test_a_model_no_server_offers_is_refused_at_submit(store):
    with pytest.raises(JobError) as refused:
        submit(store, "nope")
    assert (refused.value.status, refused.value.code) == (422, "unknown_model")


def test_an_unreachable_server_is_skipped_until_its_cool_down_ends(store, r):
    only_c = [submit(store, "c") for _ in range(2)]
    first = admit(store)
    assert first.backend == "other"
    assert store.scripts.back_off(first.job_id, first.epoch, 0, "unreachable", "llm_unreachable") == 1
    assert r.hget("qc:backend:other", "state") == "down"
    job = store.job(only_c[1])
    assert job.blocked == "backend_down"
    assert admit(store).outcome == "wait"  # nothing else can run c: wait for the cool-down
    r.hset("qc:backend:other", "down_until", 0)  # cool-down over: one job may try it (half-open)
    probe = admit(store)
    assert probe.backend == "other" and admit(store).outcome in ("busy", "wait")
    store.scripts.finish(probe.job_id, probe.epoch, "completed", "done", 0, 0, "answer", "ok")
    assert r.hget("qc:backend:other", "state") == "up"


def test_a_failed_server_hands_its_job_to_another_that_serves_the_model(store, r):
    job = submit(store, "a")
    first = admit(store)
    store.scripts.back_off(job, first.epoch, 0, "gone", "llm_unreachable")
    second = admit(store)
    assert second.job_id == job and second.backend != first.backend


def test_a_server_whose_models_are_not_known_yet_takes_no_job_until_a_check_lists_them(store, r):
    settings.llm_backends = json.dumps({"backend": [
        {"name": "known", "url": "http://127.0.0.1:9", "slots": 1, "models": ["a"]},
        {"name": "new", "url": "http://127.0.0.1:9", "slots": 1}]})
    job = submit(store, "z")  # only 'new' may have it: accepted, but not sent there blind
    assert admit(store).outcome == "busy"
    assert store.job(job).blocked is None  # not blocked: its first check is on the way
    store.scripts.backend_seen("new", "0", "", "", "")
    assert store.job(job).blocked == "backend_down"
    r.hset("qc:backend:new", "down_until", 0)  # the cool-down is over; still no blind try
    assert admit(store).outcome == "busy"
    r.delete("qc:wake")
    store.scripts.backend_seen("new", "1", '["z"]', "[]", "")
    assert r.lrange("qc:wake", 0, -1) == ["backend:new"]  # a waiting ticket is woken for it
    started = admit(store)
    assert (started.job_id, started.backend) == (job, "new")


def test_a_server_in_good_health_is_preferred_to_one_just_out_of_its_cool_down(store, r):
    r.hset("qc:backend:small", mapping={"state": "down", "down_until": 0, "loaded": '["a"]'})
    first, second, third = submit(store, "a"), submit(store, "a"), submit(store, "a")
    assert (admit(store).backend, admit(store).backend) == ("big", "small")  # then small, half-open: one job
    assert admit(store).outcome == "busy" and store.job(third).position == 0
    assert (store.job(first).backend, store.job(second).backend) == ("big", "small")


def test_position_and_eta_count_the_jobs_that_start_first_on_the_servers_that_can_run_yours(store, r):
    # big serves a and b (1 slot), small serves a (2 slots), other serves c (1 slot).
    b1, c1, a1, c2, a2, b2 = (submit(store, model) for model in ("b", "c", "a", "c", "a", "b"))
    places = store.places([b1, c1, a1, c2, a2, b2])
    # b2 may only run on big, where the jobs of the lines a and b ahead of it may start first (b1, a1, a2);
    # a2 on big or small (b1, a1); c2 only on other (c1).
    assert places == {b1: (0, None), c1: (0, None), a1: (1, None), c2: (1, None), a2: (2, None), b2: (3, None)}
    # ETAs: the slots of the servers that serve the line (a: 1 + 2, b: 1, c: 1), one service time per round
    assert [store.clock(line).cap for line in ("a", "b", "c", "")] == [3, 1, 1, 4]
    service = store.clock("a").service_ms / 1000
    assert store.eta(2, "a") == 0 and store.eta(3, "a") == service  # three slots: a2 starts in the first round
    assert store.eta(3, "b") == 3 * service and store.eta(1, "c") == service
    # a server that goes down takes its slots out of its lines' clocks, and its jobs say why they wait
    r.hset("qc:backend:other", mapping={"state": "down", "down_until": 2**50})
    store._clocks.clear()  # a clock is read at most twice a second per line
    assert store.clock("c").cap == 0 and store.places([c2])[c2] == (1, "backend_down")
    assert store.clock("a").cap == 3


def test_a_failed_health_check_of_a_server_busy_with_our_calls_does_not_mark_it_down(store, r):
    # A server that answers one request at a time (llama-cpp-python) queues the check behind the running answer.
    submit(store, "c")
    running = admit(store)
    assert running.backend == "other"
    store.scripts.backend_seen("other", "1", "", "", "")
    assert store.scripts.backend_seen("other", "0", "", "", "") == ["up", "up"]
    assert r.hget("qc:backend:other", "state") == "up"
    store.scripts.finish(running.job_id, running.epoch, "completed", "done", 0, 0, "answer", "ok")
    assert store.scripts.backend_seen("other", "0", "", "", "") == ["down", "up"]  # idle and not answering: down


def test_a_server_that_takes_the_health_check_but_answers_nothing_in_time_is_busy_not_down(store, r):
    # llama-cpp-python's server holds /v1/models until its running answer ends, whoever asked for that answer.
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await backends._check(async_store(), backends.Backend("busy", f"http://127.0.0.1:{port}/v1", "openai",
                                                                  slots=1))
        finally:
            server.close()
            await close_shared_http()

    r.hset("qc:backend:busy", "state", "up")
    asyncio.run(main())
    assert r.hget("qc:backend:busy", "state") == "up"
