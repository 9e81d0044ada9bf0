"""The private queuechat stack: a Redis, the fake LLM, ``main.py`` and ``dramatiq`` workers, on loopback only.

The pieces are used one by one by the tests' fixtures (each with its own lifetime) and together, as a
:class:`Stack`, by the benchmarks. Nothing here touches the user's Redis or port 8080: every port is a free one
on 127.0.0.1, every folder a temporary one. Children inherit this process's environment without pytest's
variables, plus their stack's ``REDIS_URL``, ``OLLAMA_HOST`` and settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self, TypeVar

import httpx
import psutil
import redis

from devtools import figures
from devtools.fake_llm import FakeLLM
from devtools.processes import Child, clean_environ
from devtools.waiting import wait_for
from tasks import connection
from tasks.broker import worker_environment
from tasks.keys import WORKERS
from tasks.redis_server import RedisServer, free_port
from tasks.settings import settings

__all__ = ["App", "RedisServer", "Stack", "Workers", "apply_settings"]

HEARTBEAT_FRESH_MS = 3000
HOSTNAME = socket.gethostname()  # worker ids in ``qc:workers`` are host:pid

W = TypeVar("W", bound="Workers")


def apply_settings(env: dict[str, str]) -> None:
    """Make this process's settings what its children read from ``env``, so that code run here (a submit, a
    position) agrees with the app and the workers."""
    for name, value in env.items():
        field = name.lower()
        if field in type(settings).model_fields:
            current = getattr(settings, field)
            setattr(settings, field, value if current is None else type(current)(value))


class App(Child):
    """``main.py`` as a subprocess: UI and API, with its own workers unless started with ``--no-workers``.

    A restart (``stop()``, then ``start()``) keeps the port and the log. Its death signal is SIGTERM, so that
    even an abandoned app stops its own Redis and workers in order.
    """

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.base_env = {"DATA_DIR": str(log_dir / "data"), **env, "PORT": str(self.port)}
        super().__init__(f"app-{self.port}", [], env=self.base_env, log_path=log_dir / f"app-{self.port}.log",
                         stop_signal=signal.SIGINT, death_signal=signal.SIGTERM)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, **settings_env: str) -> App:
        """Start with these arguments and settings; return once ``/health`` answers (200, or 503: no Redis)."""
        self.command = [sys.executable, "main.py", *args]
        self.env = {**self.base_env, **settings_env}
        super().start()
        wait_for(self._answers, timeout=60, interval=0.2, what=f"the app on {self.url}")
        return self

    def _answers(self) -> bool:
        self.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/health", timeout=2).status_code in (200, 503)
        return False

    def health(self) -> dict:
        """``/health`` as JSON; empty when the app does not answer."""
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return httpx.get(self.url + "/health", timeout=2).json()
        return {}


class Workers(Child):
    """``dramatiq tasks.actors --processes P --threads T`` with the environment ``main.py`` gives its workers.

    The worker processes die with their master (``tasks.actors``' Janitor sees to it; another module, such as the
    benchmarks' no-op actor, gets ``devtools.worker_guard`` along for that). :meth:`pause`
    and :meth:`resume` stop and continue the whole pool (SIGSTOP/SIGCONT), for pools shared between tests.
    """

    def __init__(self, env: dict[str, str], log_dir: Path, processes: int = 2, threads: int = 4,
                 module: str = "tasks.actors", **settings_env: str) -> None:
        self.processes = processes
        name = f"workers-{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}"
        guard = [] if module == "tasks.actors" else ["devtools.worker_guard"]
        command = [sys.executable, "-m", "dramatiq", module, *guard, "--processes", str(processes),
                   "--threads", str(threads)]
        super().__init__(name, command, env={**worker_environment(threads), **env, **settings_env},
                         log_path=log_dir / f"{name}.log")

    def start(self) -> Self:
        """Start; return once every worker process is up."""
        super().start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until each worker process of this pool has sent a heartbeat since this call: it runs, and it
        reaches Redis (a heartbeat older than the call may come from before a pause or a Redis restart)."""
        with self._redis() as client:
            since = _now_ms(client)

            def beating() -> bool:
                members = [f"{HOSTNAME}:{pid}" for pid in self.children()]
                scores = client.zmscore(WORKERS, members) if members else []
                return len(members) == self.processes and all(score and score >= since for score in scores)

            self._wait(beating, timeout, f"heartbeats from the {self.processes} worker processes")

    def wait_online(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` worker processes, of any pool, have a fresh heartbeat in ``qc:workers``."""
        with self._redis() as client:
            self._wait(lambda: client.zcount(WORKERS, _now_ms(client) - HEARTBEAT_FRESH_MS, "+inf") >= count,
                       timeout, f"{count} worker processes online")

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        def ready() -> bool:
            self.check_alive()
            with contextlib.suppress(redis.RedisError):  # Redis restarting: not yet
                return condition()
            return False

        try:
            wait_for(ready, timeout=timeout, interval=0.1, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; the end of the workers' log:\n{self.log_tail()}") from None

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2)

    def children(self) -> list[int]:
        """The worker processes (the dramatiq master's children)."""
        return figures.children(self.pid)

    def pause(self) -> None:
        """Stop every process of the pool; return once they are (a signal is delivered when the kernel gets to it)."""
        self._signal_pool(signal.SIGSTOP)
        wait_for(lambda: all(process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
                             for process in figures.tree(self.pid)), timeout=5, what=f"{self.name} to stop")

    def resume(self) -> None:
        self._signal_pool(signal.SIGCONT)

    def _signal_pool(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        self.resume()  # a stopped process keeps every signal but SIGKILL pending
        super().stop(timeout)


def _now_ms(client: redis.Redis) -> int:
    """Redis' clock, in ms: the one heartbeats are scored with."""
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


class Stack:
    """A private queuechat on loopback: ``with Stack("run", QUEUE_CONCURRENCY="16") as stack: ...``.

    Entering starts Redis (in a temporary folder) and the fake LLM (in this process) and points this process's
    settings at them; leaving stops every piece, newest first, on success, error or Ctrl-C alike, and removes
    the folder unless ``keep_logs`` is set or something failed.
    """

    def __init__(self, name: str, fake: FakeLLM | None = None, **settings_env: str) -> None:
        self.name, self.settings_env = name, settings_env
        self.fake = fake or FakeLLM()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"queuechat-{name}-"))
        self.children: list[Child] = []
        self.cleanup = contextlib.ExitStack()
        self.keep_logs = False

    def __enter__(self) -> Self:
        try:
            self.redis_server = RedisServer(self.tmp / "redis").start()
            self.cleanup.callback(self.redis_server.stop)
            self.fake.start()
            self.cleanup.callback(self.fake.stop)
            env = {"REDIS_URL": self.redis_server.url, "OLLAMA_HOST": self.fake.url, **self.settings_env}
            os.environ.update(env)
            apply_settings(env)
            connection.reset_connections()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        try:
            for child in reversed(self.children):
                child.stop()
        finally:
            self.cleanup.close()
        if kind is not None or self.keep_logs:
            print(f"{self.name}: logs and Redis data kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def child_env(self, **extra: str) -> dict[str, str]:
        return clean_environ(REDIS_URL=self.redis_server.url, OLLAMA_HOST=self.fake.url,
                             DATA_DIR=str(self.tmp / "data"), NICEGUI_STORAGE_PATH=str(self.tmp / "nicegui"),
                             PYTHONUNBUFFERED="1", **self.settings_env, **extra)

    def start_app(self, *args: str, **extra: str) -> App:
        app = App(self.child_env(**extra), self.tmp)
        self.children.append(app)
        return app.start(*args)

    def start_workers(self, processes: int = 2, threads: int = 8, kind: type[W] = Workers, **extra: str) -> W:
        workers = kind(self.child_env(**extra), self.tmp, processes, threads)
        self.children.append(workers)
        return workers.start()

    @contextlib.contextmanager
    def workers(self, processes: int = 2, threads: int = 8, kind: type[W] = Workers, **extra: str) -> Iterator[W]:
        """Workers for one phase: ``with stack.workers(): ...`` stops them at the end of the block."""
        workers = self.start_workers(processes, threads, kind, **extra)
        try:
            yield workers
        finally:
            workers.stop()
            self.children.remove(workers)

    def enter(self, context):
        """Tie another context manager (a browser, say) to this stack's clean-up."""
        return self.cleanup.enter_context(context)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def reset_data(self) -> None:
        """Empty Redis between phases, so that one phase's jobs and totals don't colour the next."""
        self.redis().flushall()
