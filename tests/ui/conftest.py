"""Fixtures for the tests of the app's surface (doors, identities, security headers) against a running main.py.

``app`` is the module's shared app (``module_app``: main.py without workers of its own, on the module's worker
pool, cap 1) that is left quiet after each test: every job that test left waiting or running is cancelled and
its LLM call ended, so that the next test starts on an empty line. ``keys`` makes real API keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from devtools.fake_llm import FakeLLM, Reply
from devtools.stack import App
from devtools.waiting import wait_for
from tasks import identities
from tasks.store import sync_store


def settle(r: redis.Redis, fake: FakeLLM) -> None:
    """Cancel whatever waits or runs, let the fake's held answers go, and wait until nothing holds a slot."""
    for job_id in [*r.zrange("qc:waiting", 0, -1), *r.zrange("qc:leases", 0, -1)]:
        sync_store().cancel(job_id)
    fake.release()
    wait_for(lambda: not r.zcard("qc:leases") and not r.zcard("qc:waiting"), timeout=20, what="the line to empty")
    assert fake.wait_idle(10), "an LLM call outlived its cancelled job"


@pytest.fixture
def app(module_app, redis_server, fake_llm, r) -> Iterator[App]:
    yield module_app
    settle(r, fake_llm)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with what the module's app and workers logged last."""
    report = yield
    if call.when == "call" and report.failed:
        for name in ("module_app", "module_workers"):
            if (child := item.funcargs.get(name)) is not None:
                report.sections.append((f"{name} log (its end)", child.log_tail(6000)))
    return report


@pytest.fixture
def keys(r) -> Callable[..., str]:
    """``keys("alice", max_priority="high")``: a new API key's plaintext."""
    return lambda name, **limits: identities.create_key(name, **limits)[0]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(app: App, key: str | None = None, **headers: str) -> httpx.Client:
    """An HTTP client of the app as one caller: an API key's, or anonymous (None)."""
    return httpx.Client(base_url=app.url, timeout=20, headers={**(bearer(key) if key else {}), **headers})


def redis_ms(r: redis.Redis) -> int:
    """Now, on the Redis clock the jobs' timestamps are written with."""
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


def discovered(app: App, r: redis.Redis, fake: FakeLLM) -> None:
    """Wait until the LLM server's models, as a check since the test's flush found them, are in Redis and in the
    app's copy (the doors list models from it; refreshed every ~2 s). Equal, not just there: a check that read
    the server during the previous test (the session's workers keep checking between tests) can write its
    finding after this test's flush."""
    served = sorted(fake.models)
    wait_for(lambda: json.loads(r.hget("qc:backend:ollama", "models") or "[]") == served, timeout=15,
             what=f"the LLM server's models {served}")
    wait_for(lambda: sorted(httpx.get(app.url + "/api/models", timeout=5).json()["servers"]) == served,
             timeout=15, what="the app's copy of the models")


def job(r: redis.Redis, job_id: str) -> dict:
    return r.hgetall(f"qc:job:{job_id}")


def hold_the_slot(app: App, r: redis.Redis, fake: FakeLLM, key: str) -> str:
    """A job of ``key`` that runs and holds the one slot (cap 1) until the test cancels it or ``settle`` does;
    returns its id."""
    fake.script(Reply(tokens=["held "] * 600, token_delay=0.1))  # a minute; not a hang: LLM_IDLE_TIMEOUT is 3 s
    with client(app, key) as caller:
        job_id = caller.post("/api/chat", json={"message": "hold the slot"}).json()["job_id"]
    wait_for(lambda: job(r, job_id).get("status") == "running" and fake.active == 1, timeout=15,
             what="the holding job to run")
    return job_id
