"""The fleet with real worker processes: three fake LLM servers on loopback — two speaking Ollama's API, one the
OpenAI-compatible one — with different models and slot counts, configured through ``LLM_BACKENDS`` (inline JSON)
in the environment of two ``dramatiq`` worker processes and of ``main.py --no-workers``.

    alpha  ollama  slots 2 (configured)             shared:7b, alpha:1b
    beta   ollama  slots 1 (configured)             shared:7b, beta:1b
    gamma  openai  slots unset: its /props says 2   gamma:1b
    alias  small -> alpha:1b | gamma:1b

What is observed is what the servers saw (each fake's requests, ``max_active``) and what Redis holds (job records,
``slots:{backend}``, timestamps of the Redis clock), never the wall clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from devtools.fake_llm import FakeLLM, Reply
from devtools.sse import events
from devtools.stack import App, Workers
from devtools.waiting import wait_for
from tasks import keys, queue
from tasks.settings import settings
from tasks.store import sync_store

SLOTS = {"alpha": 2, "beta": 1, "gamma": 2}
MODELS = {"alpha": ["shared:7b", "alpha:1b"], "beta": ["shared:7b", "beta:1b"], "gamma": ["gamma:1b"]}
KINDS = {"alpha": "ollama", "beta": "ollama", "gamma": "openai"}


@dataclass
class Fleet:
    fakes: dict[str, FakeLLM]
    config: str
    workers: Workers
    app: App

    def up(self) -> None:
        """Every fake serving (a test that crashed one may have left it down), as it was made."""
        for fake in self.fakes.values():
            if fake._thread is None:
                fake.start()
            fake.reset()


@pytest.fixture(scope="module")
def fleet_stack(worker_pools, stack_env, tmp_path_factory) -> Iterator[Fleet]:
    fakes = {name: FakeLLM(models=MODELS[name], slots=SLOTS[name]).start() for name in SLOTS}
    config = json.dumps({"backend": [
        {"name": name, "kind": KINDS[name], "url": fakes[name].url, **({"slots": SLOTS[name]} if name != "gamma" else {})}
        for name in SLOTS], "aliases": {"small": ["alpha:1b", "gamma:1b"]}})
    pool = worker_pools.take(processes=2, threads=4, LLM_BACKENDS=config)
    app = App({**stack_env, "LLM_BACKENDS": config}, tmp_path_factory.mktemp("fleet-app")).start("--no-workers")
    try:
        yield Fleet(fakes, config, pool, app)
    finally:
        app.kill()
        client = redis.Redis.from_url(stack_env["REDIS_URL"])
        worker_pools.give_back(pool, lambda: not client.zcard(keys.LEASES))
        for fake in fakes.values():
            fake.stop()


@pytest.fixture
def fleet(fleet_stack, r, monkeypatch) -> Iterator[Fleet]:
    """The fleet with empty Redis, every server up and discovered (models, loaded, slots) by the workers."""
    monkeypatch.setattr(settings, "llm_backends", fleet_stack.config)
    fleet_stack.up()
    discovered(r)
    yield fleet_stack
    wait_for(lambda: not r.zcard(keys.LEASES) and all(f.wait_idle(0) for f in fleet_stack.fakes.values()),
             timeout=20, what="the fleet to be idle")


def discovered(r, **expect) -> None:
    """Wait until a fresh check of every server is in Redis (``expect``: name -> predicate on its view)."""
    r.delete(*[f"{keys.PREFIX}discovery:{name}" for name in SLOTS])
    since = now_ms(r)

    def fresh() -> bool:
        views = {view["name"]: view for view in sync_store().backends()}
        checked = {name: int(r.hget(keys.backend(name), "checked_at") or 0) for name in SLOTS}
        return all(checked[name] >= since and views[name]["state"] == "up" and views[name]["models"]
                   and expect.get(name, lambda view: True)(views[name]) for name in SLOTS)

    wait_for(fresh, timeout=15, what="the servers to be checked")


# --- helpers --------------------------------------------------------------------------------------------

def now_ms(r) -> int:
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


def submit(model: str, prompt: str, priority: str = "normal", user: str = "u") -> str:
    return sync_store().submit(prompt, user=user, priority=priority, model=model).job_id


def slow(label: str, tokens: int = 6, delay: float = 0.05) -> str:
    return f"{label} [[tokens={tokens}]][[delay={delay}]]"


def echoed(tokens: int) -> str:
    return " ".join(f"t{i}" for i in range(tokens))


def raw(r, job_id: str) -> dict:
    return r.hgetall(keys.job(job_id))


def wait_over(r, ids: list[str], timeout: float = 60) -> list[dict]:
    wait_for(lambda: all(r.hget(keys.job(i), "status") in queue.TERMINAL for i in ids), timeout=timeout,
             interval=0.05, what=f"{len(ids)} jobs to end")
    return [raw(r, i) for i in ids]


def served(fake: FakeLLM) -> list[tuple[str, str]]:
    """(model, prompt) of every chat request the server received."""
    return [(body["model"], body["messages"][-1]["content"]) for body in fake.requests]


def sample_slots(r) -> dict[str, int]:
    pipe = r.pipeline(transaction=True)
    for name in SLOTS:
        pipe.scard(keys.slots(name))
    return dict(zip(SLOTS, pipe.execute()))


# --- routing and per-server caps ----------------------------------------------------------------------

def test_jobs_run_only_where_their_model_is_served_and_every_servers_cap_holds_across_processes(fleet, r):
    plan = {"alpha:1b": 5, "beta:1b": 3, "gamma:1b": 5, "shared:7b": 5}
    ids = {submit(model, slow(f"{model} #{i}", 8, 0.04)): model for model, n in plan.items() for i in range(n)}
    samples = []

    def sample() -> bool:
        samples.append(sample_slots(r))
        return all(r.hget(keys.job(i), "status") in queue.TERMINAL for i in ids)

    wait_for(sample, timeout=60, interval=0.02, what="every job to end")
    jobs = {i: raw(r, i) for i in ids}
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert all(j["answer"] == echoed(8) and j["attempts"] == "1" for j in jobs.values())
    for job_id, job in jobs.items():
        assert job["model"] in MODELS[job["backend"]], (job["model"], job["backend"])
    for name, fake in fleet.fakes.items():
        assert {model for model, _ in served(fake)} <= set(MODELS[name])
        assert fake.max_active == SLOTS[name], (name, fake.max_active)  # the cap is reached, never passed
    assert len(served(fleet.fakes["alpha"])) + len(served(fleet.fakes["beta"])) == 5 + 3 + 5
    for name in SLOTS:
        assert max(s[name] for s in samples) == SLOTS[name]
    assert max(sum(s.values()) for s in samples) <= sum(SLOTS.values())
    # the caps above were shared by both worker processes, not held by one
    assert len({j["worker"] for j in jobs.values()}) == 2
    # gamma's two slots came from the server (llama.cpp's /props), not from LLM_BACKENDS
    assert {v["name"]: v["slots"] for v in sync_store().backends()}["gamma"] == 2


def test_a_free_slot_never_waits_behind_high_jobs_only_another_server_can_run(fleet, r):
    highs = [submit("gamma:1b", slow(f"high {i}", 10, 0.05), "high") for i in range(8)]  # 4 rounds on gamma
    lows = [submit("alpha:1b", slow(f"low {i}", 10, 0.05), "low") for i in range(4)]  # 2 rounds on alpha
    samples = []

    def sample() -> bool:
        pipe = r.pipeline(transaction=True)
        pipe.zcard(keys.PREFIX + "line:gamma:1b").zcard(keys.PREFIX + "line:alpha:1b")
        pipe.scard(keys.slots("alpha")).scard(keys.slots("gamma"))
        samples.append(pipe.execute())
        return all(r.hget(keys.job(i), "status") in queue.TERMINAL for i in highs + lows)

    wait_for(sample, timeout=60, interval=0.02, what="every job to end")
    jobs = [raw(r, i) for i in highs + lows]
    assert {j["status"] for j in jobs} == {"completed"}
    # While high jobs for gamma waited, alpha ran the low jobs with both of its slots.
    assert any(gamma_waiting and alpha_running == 2 for gamma_waiting, _, alpha_running, _ in samples)
    assert max(int(raw(r, i)["started_at"]) for i in lows) < max(int(raw(r, i)["started_at"]) for i in highs)
    assert fleet.fakes["gamma"].max_active == 2 and fleet.fakes["alpha"].max_active == 2


def test_an_alias_runs_on_any_server_with_one_of_its_models(fleet, r):
    ids = [submit("small", slow(f"small {i}", 6, 0.05)) for i in range(6)]
    jobs = wait_over(r, ids)
    assert {j["status"] for j in jobs} == {"completed"}
    assert {(j["backend"], j["run_model"]) for j in jobs} == {("alpha", "alpha:1b"), ("gamma", "gamma:1b")}
    assert {m for m, _ in served(fleet.fakes["alpha"])} == {"alpha:1b"} and not served(fleet.fakes["beta"])


@pytest.mark.parametrize("loaded_on", ["alpha", "beta"])
def test_the_server_that_has_the_model_loaded_is_preferred_when_both_are_free(fleet, r, loaded_on):
    other = {"alpha": "beta", "beta": "alpha"}[loaded_on]
    fleet.fakes[loaded_on].set_loaded(["shared:7b"])
    fleet.fakes[other].set_loaded([])
    discovered(r, **{loaded_on: lambda v: v["loaded"] == ["shared:7b"], other: lambda v: v["loaded"] == []})
    for i in range(3):  # one after the other: both servers free each time
        [job] = wait_over(r, [submit("shared:7b", f"one at a time {i}")])
        assert (job["status"], job["backend"]) == ("completed", loaded_on)
    assert not served(fleet.fakes[other])


def test_before_the_first_check_a_job_waits_for_it_instead_of_going_to_a_server_without_its_model(fleet, r):
    # As on a fresh start: nothing known of the servers, and their first check a moment away.
    r.delete(*[keys.backend(name) for name in SLOTS])
    for name in SLOTS:
        r.set(f"{keys.PREFIX}discovery:{name}", "1", px=1500)
    ids = [submit(model, f"early for {model}") for model in ("gamma:1b", "beta:1b", "alpha:1b")]
    jobs = wait_over(r, ids, timeout=20)
    assert [(j["status"], j["backend"], j["attempts"]) for j in jobs] == [
        ("completed", "gamma", "1"), ("completed", "beta", "1"), ("completed", "alpha", "1")]


# --- failover: a server killed mid-answer -------------------------------------------------------------------

def token_entries(r, job_id: str) -> list[dict]:
    return [entry for _, entry in sync_store().stream(job_id)]


def api_job(api: httpx.Client, job_id: str) -> dict:
    return api.get(f"/api/jobs/{job_id}").json()


def test_a_server_killed_mid_answer_hands_its_job_to_another_and_is_tried_again_after_its_cool_down(fleet, r):
    alpha, beta = fleet.fakes["alpha"], fleet.fakes["beta"]
    beta.set_loaded(["shared:7b"])
    alpha.set_loaded([])
    discovered(r, beta=lambda v: v["loaded"] == ["shared:7b"], alpha=lambda v: v["loaded"] == [])
    victim = submit("shared:7b", slow("victim", 40, 0.05))
    wait_for(lambda: sum(e["k"] == "token" for e in token_entries(r, victim)) >= 3, what="the first tokens")
    assert raw(r, victim)["backend"] == "beta"
    beta.kill()

    # The job starts afresh on the other server that has the model: one more attempt, the whole answer.
    [job] = wait_over(r, [victim], timeout=30)
    assert (job["status"], job["backend"], job["attempts"], job["answer"]) == ("completed", "alpha", "2", echoed(40))
    stream = token_entries(r, victim)
    resets = [i for i, e in enumerate(stream) if e["k"] == "reset"]
    assert len(resets) == 2
    assert "".join(e["d"] for e in stream[resets[-1]:] if e["k"] == "token") == echoed(40)
    assert [m for m, _ in served(alpha)] == ["shared:7b"]
    # The dead server is down, for everyone: Redis, /health, and new jobs for its models go elsewhere.
    assert r.hget(keys.backend("beta"), "state") == "down" and int(r.hget(keys.backend("beta"), "trips")) >= 1
    with httpx.Client(base_url=fleet.app.url, timeout=10) as api:
        health = wait_for(lambda: (h := fleet.app.health()).get("backends", {}).get("beta") == "down" and h,
                          timeout=10, what="/health to show beta down")
        assert health["backends"] == {"alpha": "up", "beta": "down", "gamma": "up"} and health["llm"] is True
        figures = exported(fleet.app)
        assert figures[("queuechat_backend_up", "beta", None)] == 0 and figures[("queuechat_backend_up", "alpha", None)] == 1
        assert figures[("queuechat_backend_breaker_trips_total", "beta", None)] >= 1
        assert figures[("queuechat_backend_errors_total", "beta", None)] >= 1
        assert sync_store().backends()[1]["recent_errors"][-1]["code"] == "llm_unreachable"
        later = wait_over(r, [submit("shared:7b", f"while beta is down {i}") for i in range(3)])
        assert {(j["status"], j["backend"]) for j in later} == {("completed", "alpha")}
        # alpha's two slots take two; the third may try beta once its cool-down is over (half-open), and is
        # then back on alpha
        assert sorted(j["attempts"] for j in later)[:2] == ["1", "1"] and max(j["attempts"] for j in later) <= "2"

        # A job for a model only the dead server has waits, and says why (through the API of the app).
        only_beta = api.post("/api/chat", json={"message": "for beta alone", "model": "beta:1b"}).json()["job_id"]
        trips = int(r.hget(keys.backend("beta"), "trips"))
        wait_for(lambda: int(r.hget(keys.backend("beta"), "trips")) >= trips + 1, timeout=15,
                 what="a half-open try of beta that failed")  # after a cool-down, a job tried it: still dead
        body = api_job(api, only_beta)
        assert body["status"] in ("queued", "retrying") and body["blocked"] == "backend_down", body
        assert body["eta_seconds"] is None  # no time can be promised until a server for it is back
        said = next(e.data for e in events(api, f"/stream/status/{only_beta}") if e.event == "status"
                    and e.data.get("blocked"))  # a page or SSE client following it is told the same
        assert (said["blocked"], said["eta_seconds"]) == ("backend_down", None)

        # Back: after its cool-down a job tries it, succeeds, and it is up again.
        beta.start()
        [done] = wait_over(r, [only_beta], timeout=30)
        assert (done["status"], done["backend"], done["answer"]) == ("completed", "beta", "You said: for beta alone")
        # Each try of the dead server after a cool-down was one of the job's attempts (every attempt counts): a
        # job waits for its server through at most QUEUE_MAX_RETRIES such tries.
        resets = [int(entry_id.split("-")[0]) for entry_id, e in sync_store().stream(only_beta) if e["k"] == "reset"]
        assert 2 <= int(done["attempts"]) == len(resets) <= settings.max_attempts
        # and the dead server was tried once per cool-down, not at every retry (Redis' clock: the entry ids)
        cool_down = settings.llm_breaker_cooldown_seconds * 1000
        assert all(later - earlier >= cool_down for earlier, later in zip(resets, resets[1:])), resets
        assert r.hget(keys.backend("beta"), "state") == "up"
        wait_for(lambda: fleet.app.health().get("backends", {}).get("beta") == "up", timeout=10,
                 what="/health to show beta up again")


# --- position and ETA per line ------------------------------------------------------------------------------

def test_position_and_eta_count_only_the_lines_that_compete_and_every_reader_agrees(fleet, r):
    sync_store().pause(True)  # nothing starts: the figures stand still while they are compared
    try:
        with httpx.Client(base_url=fleet.app.url, timeout=10) as api:
            def post(model: str, text: str) -> str:
                return api.post("/api/chat", json={"message": text, "model": model}).json()["job_id"]

            ahead = [post(model, f"ahead {model}") for model in
                     ("alpha:1b", "beta:1b", "shared:7b", "gamma:1b", "alpha:1b")]
            mine = post("alpha:1b", "mine")
            # alpha alone serves alpha:1b: ahead of mine there, the alpha and shared jobs (not beta's, not gamma's)
            body = api_job(api, mine)
            assert (body["position"], body["blocked"]) == (3, None)
            # its ETA: alpha's 2 slots, one service time (10 s before any call ended) per round of 2
            assert body["eta_seconds"] == 10 == sync_store().eta(3, "alpha:1b")
            # shared:7b runs on alpha or beta: the alpha and the beta job ahead of it may both start first
            assert [api_job(api, job_id)["position"] for job_id in ahead] == [0, 0, 2, 0, 2]
            streamed = next(e.data for e in events(api, f"/stream/status/{mine}") if e.event == "status"
                            and e.data.get("position") is not None)
            assert (streamed["position"], streamed["eta_seconds"], streamed["blocked"]) == (3, 10, None)
    finally:
        sync_store().pause(False)
    assert {j["status"] for j in wait_over(r, ahead + [mine])} == {"completed"}


# --- figures per server -------------------------------------------------------------------------------------

def exported(app: App) -> dict[tuple, float]:
    """/metrics as {(sample name, backend label, status label): value}."""
    return {(sample.name, sample.labels.get("backend"), sample.labels.get("status")): sample.value
            for family in text_string_to_metric_families(httpx.get(app.url + "/metrics", timeout=10).text)
            for sample in family.samples}


def test_a_server_that_streams_no_usage_has_its_tokens_counted_from_the_pieces(fleet, r):
    """llama-cpp-python's server ignores ``stream_options.include_usage``: its speed in the drawer and its users'
    tokens would read zero beside a count of answers."""
    fleet.fakes["gamma"].set_default(Reply(tokens=["a ", "b ", "c ", "d"], token_delay=0.02, usage=False))
    [job] = wait_over(r, [submit("gamma:1b", "count me")])
    assert (job["status"], job["backend"], job["answer"], job["completion_tokens"]) == ("completed", "gamma",
                                                                                        "a b c d", "4")
    [gamma] = [view for view in sync_store().backends() if view["name"] == "gamma"]
    assert gamma["completed"] == 1 and gamma["tokens"] == 4 and gamma["tokens_per_s"] > 0


def test_metrics_per_server_add_up_to_what_each_server_did(fleet, r):
    fleet.fakes["gamma"].script(Reply(status=500, error="boom"))  # gamma's first call fails; the job retries
    ids = [submit(model, slow(f"{model} {i}", 5 + i, 0.03)) for i, model in
           enumerate(["alpha:1b", "alpha:1b", "beta:1b", "gamma:1b", "gamma:1b", "shared:7b"])]
    jobs = wait_over(r, ids)
    assert {j["status"] for j in jobs} == {"completed"}
    figures = exported(fleet.app)
    views = {view["name"]: view for view in sync_store().backends()}
    for name in SLOTS:
        mine = [j for j in jobs if j["backend"] == name]
        assert figures[("queuechat_backend_jobs_total", name, "completed")] == len(mine) == views[name]["completed"]
        assert figures[("queuechat_backend_jobs_total", name, "failed")] == 0
        assert figures[("queuechat_backend_tokens_total", name, None)] == sum(int(j["completion_tokens"]) for j in mine)
        assert figures[("queuechat_backend_generation_seconds_total", name, None)] > 0
        assert figures[("queuechat_backend_tokens_per_second", name, None)] == views[name]["tokens_per_s"] > 0
        assert figures[("queuechat_backend_up", name, None)] == 1
        assert figures[("queuechat_backend_slots", name, None)] == SLOTS[name]
        assert figures[("queuechat_backend_slots_used", name, None)] == 0
        assert figures[("queuechat_backend_breaker_trips_total", name, None)] == 0
    assert figures[("queuechat_backend_errors_total", "gamma", None)] == 1
    assert figures[("queuechat_backend_errors_total", "alpha", None)] == 0
    [error] = views["gamma"]["recent_errors"]
    assert error["code"] == "llm_refused" and "boom" in error["error"]
    gamma_job = next(j for j in jobs if j["model"] == "gamma:1b" and j["attempts"] == "2")
    assert gamma_job["answer"] == echoed(int(gamma_job["completion_tokens"]))


# --- slots from the server ----------------------------------------------------------------------------------

def test_slots_unset_are_what_the_server_says_else_one(r, monkeypatch):
    import asyncio

    from tasks import backends
    from tasks.llm.base import close_shared_http
    from tasks.store import async_store

    with FakeLLM(models=["m:1"], slots=2) as counted, FakeLLM(models=["m:1"]) as silent:  # /props: 2, and 0
        monkeypatch.setattr(settings, "llm_backends", json.dumps({"backend": [
            {"name": "counted", "kind": "openai", "url": counted.url},
            {"name": "silent", "kind": "openai", "url": silent.url},
            {"name": "ollama", "kind": "ollama", "url": silent.url}]}))

        async def check() -> None:
            await backends.discover(async_store())
            await close_shared_http()

        asyncio.run(check())
    assert {v["name"]: (v["state"], v["slots"]) for v in sync_store().backends()} == {
        "counted": ("up", 2), "silent": ("up", 1), "ollama": ("up", 1)}  # Ollama does not say: configure it
    assert sync_store().clock("m:1").cap == 4  # and admission counts the same slots


def test_a_server_is_checked_again_once_per_check_period_whoever_asks(r, monkeypatch):
    import asyncio

    from tasks import backends
    from tasks.llm.base import close_shared_http
    from tasks.store import async_store

    with FakeLLM(models=["m:1"]) as server:
        monkeypatch.setattr(settings, "llm_backends", json.dumps({"backend": [{"name": "one", "url": server.url}]}))
        monkeypatch.setattr(settings, "llm_check_seconds", 0.5)

        async def check() -> None:
            await backends.discover(async_store())
            await close_shared_http()

        def checks() -> int:  # a check lists the models: /api/tags
            return server.hits["/api/tags"]

        asyncio.run(check())
        asyncio.run(check())  # another process's turn comes too soon: the lock says it was just checked
        assert checks() == 1
        time.sleep(0.5)
        asyncio.run(check())
        assert checks() == 2
