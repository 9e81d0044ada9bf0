"""Shared fixtures over :mod:`devtools`: a private Redis, the fake LLM, worker pools, the app — and the test tiers.

Everything is real: the embedded redis-server binary on a free port (never the user's Redis), an HTTP server
speaking the LLM protocols, the ``dramatiq`` CLI in subprocesses, ``main.py`` itself. Every tier is a marker
applied here from what a test uses: ``unit``, ``redis``, ``workers``, ``e2e`` (a browser), ``demo``;
``uv run pytest -m "not e2e and not demo"`` is the fast loop. The run is parallel (``-n auto --dist loadfile``
in pyproject.toml): each test process has its own Redis, fake LLM and worker pools.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from devtools.fake_llm import FakeLLM
from devtools.pools import WorkerPools
from devtools.processes import ROOT, clean_environ
from devtools.stack import App, RedisServer, Workers, apply_settings
from tasks import connection, keys
from tasks.settings import settings

#: Settings every test process shares: fast recovery, no rate limit unless a test sets one.
TEST_ENV = {
    "QUEUE_RATE_PER_MIN": "0",
    "QUEUE_RECOVERY_SECONDS": "6",
    "RETRY_MIN_BACKOFF_MS": "200",
    "RETRY_MAX_BACKOFF_MS": "600",
    "LLM_FIRST_TOKEN_TIMEOUT": "5",
    "LLM_IDLE_TIMEOUT": "3",
    "API_RATE_PER_MIN": "0",
    "QUEUE_MAX_WAITING_PER_USER": "1000",
    "LLM_BREAKER_COOLDOWN_SECONDS": "1",
}

TIERS = ("unit", "redis", "workers", "e2e", "demo")
WORKER_FIXTURES = {"workers", "pools", "module_workers", "module_app", "app_factory", "e2e_app"}
REDIS_FIXTURES = {"redis_server", "r", "env"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test its tier, unless it names one itself."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        path = Path(item.path).relative_to(ROOT / "tests")
        used = set(getattr(item, "fixturenames", ()))
        if path.parts[0] == "e2e":
            tier = "e2e"
        elif path.name == "test_demo.py":
            tier = "demo"
        elif used & WORKER_FIXTURES:
            tier = "workers"
        elif used & REDIS_FIXTURES:
            tier = "redis"
        else:
            tier = "unit"
        item.add_marker(getattr(pytest.mark, tier))
    # Heaviest modules first (each kept whole, in its own order): run in parallel, the long ones do not end last.
    weight = {}
    for item in items:
        tier = next(tier for tier in TIERS if item.get_closest_marker(tier))
        weight[item.path] = min(weight.get(item.path, len(TIERS)), TIERS[::-1].index(tier))
    items.sort(key=lambda item: weight[item.path])


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one test process more than there are cores (most tests wait on processes, sockets and
    timers more than they compute), at most 6. Each has its own Redis, fake LLM and worker pools; ``-n 0`` runs
    everything in this process."""
    return min((os.cpu_count() or 1) + 1, 6)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _isolated(request, monkeypatch) -> Iterator[None]:
    """Each test that uses Redis starts from an empty database and default test settings."""
    original = settings.model_copy()
    env = {**TEST_ENV}
    if "fake_llm" in request.fixturenames or "env" in request.fixturenames:
        fake = request.getfixturevalue("fake_llm")
        fake.reset()  # before the flush: what a check finds from now on belongs to this test
        env["OLLAMA_HOST"] = fake.url
    if "redis_server" in request.fixturenames or "env" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
        env["REDIS_URL"] = server.url
        redis.Redis.from_url(server.url).flushall()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    apply_settings(env)
    connection.reset_connections()
    yield
    for name in type(settings).model_fields:
        setattr(settings, name, getattr(original, name))
    connection.reset_connections()


@pytest.fixture
def env(redis_server, fake_llm) -> dict[str, str]:
    """The environment for this test's child processes: the session's Redis and fake LLM, test settings."""
    return clean_environ()


@pytest.fixture(scope="session")
def stack_env(redis_server, fake_llm) -> dict[str, str]:
    """Like ``env``, for processes that outlive one test (started once, with the default test settings)."""
    return clean_environ(**TEST_ENV, REDIS_URL=redis_server.url, OLLAMA_HOST=fake_llm.url)


@pytest.fixture
def r(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture(scope="session")
def worker_pools(stack_env, tmp_path_factory) -> Iterator[WorkerPools]:
    pools = WorkerPools(stack_env, tmp_path_factory.mktemp("workers"))
    yield pools
    pools.close()


class SharedWorkers:
    """The ``workers`` fixture: ``workers.start(processes=2, QUEUE_CONCURRENCY="1")`` takes a running pool with
    those settings from the session's pools; ``workers.output()`` is what it logged during this test."""

    def __init__(self, pools: WorkerPools) -> None:
        self.pools = pools
        self.pool: Workers | None = None

    def start(self, processes: int = 2, threads: int = 4, **settings_env: str) -> Workers:
        apply_settings(settings_env)
        self.pool = self.pools.take(processes, threads, **settings_env)
        self.log_start = len(self.pool.output())
        return self.pool

    def output(self) -> str:
        return self.pool.output()[self.log_start:]


def quiet(redis_server: RedisServer, fake_llm: FakeLLM) -> Callable[[], bool]:
    """No job holds a slot and the fake LLM answers nobody: workers may be paused or shared now."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=2)
    return lambda: not client.zcard(keys.LEASES) and fake_llm.active == 0 and fake_llm.waiting == 0


@pytest.fixture
def workers(worker_pools, redis_server, fake_llm) -> Iterator[SharedWorkers]:
    shared = SharedWorkers(worker_pools)
    yield shared
    if shared.pool is not None:
        worker_pools.give_back(shared.pool, quiet(redis_server, fake_llm))


@pytest.fixture
def pools(env, tmp_path) -> Iterator[Callable[..., Workers]]:
    """``pools(processes=1, threads=4, **settings)``: a worker pool of this test's own (a ``dramatiq`` main process),
    stopped after the test; for tests that kill, freeze or cut off workers (never a shared pool's)."""
    started: list[Workers] = []

    def start(processes: int = 1, threads: int = 4, **settings_env: str) -> Workers:
        apply_settings(settings_env)
        pool = Workers(env, tmp_path, processes, threads, **settings_env).start()
        started.append(pool)
        return pool

    yield start
    for pool in started:
        pool.kill()


@pytest.fixture(scope="module")
def module_workers(worker_pools, redis_server, fake_llm) -> Iterator[Workers]:
    pool = worker_pools.take()
    yield pool
    worker_pools.give_back(pool, quiet(redis_server, fake_llm))


@pytest.fixture(scope="module")
def module_app(stack_env, module_workers, tmp_path_factory) -> Iterator[App]:
    app = App(stack_env, tmp_path_factory.mktemp("app")).start("--no-workers")
    yield app
    app.kill()


@pytest.fixture
def app_factory(env, tmp_path) -> Iterator[Callable[..., App]]:
    """``app_factory(*args, **settings)``: ``main.py`` with these arguments and settings, stopped after the test."""
    started: list[App] = []

    def start(*args: str, **settings_env: str) -> App:
        apply_settings(settings_env)
        app = App(env, tmp_path).start(*args, **settings_env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.kill()


@pytest.fixture(scope="module")
def two_apps(stack_env, module_workers, tmp_path_factory) -> Iterator[tuple[App, App]]:
    """Two app instances (``main.py --no-workers``) on one Redis and the module's workers, with one STORAGE_SECRET,
    as behind a load balancer."""
    env = {**stack_env, "STORAGE_SECRET": "one-secret-for-every-instance-0123456789"}
    started = []
    try:
        for name in ("a", "b"):
            started.append(App(env, tmp_path_factory.mktemp(f"instance-{name}")).start("--no-workers"))
        yield started[0], started[1]
    finally:
        for app in started:
            app.kill()
