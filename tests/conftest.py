"""Shared fixtures: a private Redis, the fake Ollama server, real Dramatiq worker processes and the app.

Everything here is real: the embedded redis-server binary on a free port (never the user's Redis), an HTTP
server speaking Ollama's protocol, the `dramatiq` CLI in subprocesses, and `main.py` for end-to-end tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tasks import connection
from tasks.broker import worker_environment
from tasks.redis_server import RedisServer, free_port
from tasks.settings import settings
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parent.parent

#: Settings every test process shares: fast recovery, no rate limit unless a test sets one.
TEST_ENV = {
    "QUEUE_RATE_PER_MIN": "0",
    "QUEUE_RECOVERY_SECONDS": "6",
    "RETRY_MIN_BACKOFF_MS": "200",
    "RETRY_MAX_BACKOFF_MS": "600",
    "LLM_FIRST_TOKEN_TIMEOUT": "5",
    "LLM_IDLE_TIMEOUT": "3",
    "API_RATE_PER_MIN": "0",
}


def apply_settings(env: dict[str, str]) -> None:
    """Make this (the test) process's settings match what its child processes read from the environment."""
    for name, value in env.items():
        field = name.lower()
        setattr(settings, field, type(getattr(settings, field))(value) if getattr(settings, field) is not None
                else value)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _isolated(request, monkeypatch) -> Iterator[None]:
    """Each test that uses Redis starts from an empty database and default test settings."""
    original = settings.model_copy()
    env = {**TEST_ENV}
    if "redis_server" in request.fixturenames or "env" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
        env["REDIS_URL"] = server.url
        redis.Redis.from_url(server.url).flushall()
    if "fake_llm" in request.fixturenames or "env" in request.fixturenames:
        fake = request.getfixturevalue("fake_llm")
        fake.reset()
        env["OLLAMA_HOST"] = fake.url
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
    """The environment for child processes: this test's Redis and fake LLM, test settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


@pytest.fixture(scope="module")
def module_env(redis_server, fake_llm) -> dict[str, str]:
    """Like ``env``, for processes shared by the tests of one module (started once, with default test settings)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**clean, **TEST_ENV, "REDIS_URL": redis_server.url, "OLLAMA_HOST": fake_llm.url}


@pytest.fixture
def r(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


class Workers:
    """The real `dramatiq` CLI as a subprocess: ``workers.start(processes=2, QUEUE_CONCURRENCY="1")``."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.process: subprocess.Popen | None = None

    def start(self, processes: int = 2, threads: int = 4, **settings_env: str) -> Workers:
        env = {**worker_environment(threads), **self.env, **settings_env}
        apply_settings(settings_env)
        self.log = open(self.log_dir / f"workers-{time.monotonic_ns()}.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "tasks.actors", "--processes", str(processes),
             "--threads", str(threads)], cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_online(processes)
        return self

    def wait_online(self, processes: int, timeout: float = 30) -> None:
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seconds, micros = client.time()
            if client.zcount("qc:workers", seconds * 1000 + micros // 1000 - 3000, "+inf") >= processes:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"workers did not come up: {self.output()[-3000:]}")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # the master forwards it once to its children; a second signal kills
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def workers(env, tmp_path) -> Iterator[Workers]:
    pool = Workers(env, tmp_path)
    yield pool
    pool.stop()


def wait_for(predicate: Callable[[], object], timeout: float = 20, what: str = "", interval: float = 0.05):
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


class App:
    """`main.py` as a subprocess (UI + API, with or without its own workers)."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.process: subprocess.Popen | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, **settings_env: str) -> App:
        env = {**self.env, "PORT": str(self.port), "DATA_DIR": str(self.log_dir / "data"), **settings_env}
        apply_settings(settings_env)
        self.log = open(self.log_dir / f"app-{self.port}.log", "w")
        self.process = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._answers, timeout=60, interval=0.2, what=f"the app on {self.url}")
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"main.py exited: {self.output()[-3000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def module_workers(module_env, tmp_path_factory) -> Iterator[Workers]:
    pool = Workers(module_env, tmp_path_factory.mktemp("workers")).start(processes=2)
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def module_app(module_env, module_workers, tmp_path_factory) -> Iterator[App]:
    app = App(module_env, tmp_path_factory.mktemp("app")).start("--no-workers")
    yield app
    app.stop()


@pytest.fixture
def app_factory(env, tmp_path) -> Iterator[Callable[..., App]]:
    started: list[App] = []

    def start(*args: str, **settings_env: str) -> App:
        app = App(env, tmp_path).start(*args, **settings_env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


# --- the browser ----------------------------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """CHROMIUM_PATH, then the system Chromium, then Playwright's own download (None: use Playwright's)."""
    import shutil

    candidates = [os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    return None
