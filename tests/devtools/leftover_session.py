"""A pytest session that test_no_leftovers.py runs and then kills: Redis, the fake LLM, a paused worker pool
and main.py with its own Redis and workers, all running. (Not collected by the suite: it has no test_ prefix.)"""

from __future__ import annotations

import time

from devtools.waiting import wait_for


def test_a_worker_pool_is_kept_paused(workers):
    workers.start()


def test_everything_runs_until_the_session_is_killed(app_factory, fake_llm):
    app = app_factory(REDIS_URL="", WORKER_PROCESSES="1")  # main.py's embedded Redis and its own workers
    wait_for(lambda: app.health().get("workers"), timeout=60, what="main.py's workers")
    print("READY", flush=True)
    time.sleep(300)
