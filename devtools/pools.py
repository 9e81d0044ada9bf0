"""Worker pools shared by the tests: one running ``dramatiq`` pool per (processes, threads, settings).

Starting a pool costs seconds; most tests want one of a handful of settings. A test takes a pool, and gives it
back at its end: a pool whose jobs have all ended is paused (SIGSTOP) and kept for the next test with the same
settings, any other is stopped. Only the pool in use runs, because every pool takes tickets from the same
queue: an idle pool with other settings would run the next test's jobs by its own rules.

A pool taken again has lived through a FLUSHALL (and perhaps a Redis restart) while it slept, so it must show
fresh heartbeats within a few seconds, or it is replaced by a new one. A test that kills or pauses worker
processes must not use a shared pool: its processes would be the next test's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from devtools.stack import Workers
from devtools.waiting import wait_for

Key = tuple[int, int, tuple[tuple[str, str], ...]]


class WorkerPools:
    """``take`` a pool for a test, ``give_back`` at its end; ``close`` at the end of the session."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env, self.log_dir = env, log_dir
        self.paused: dict[Key, Workers] = {}
        self.taken: dict[int, tuple[Key, Workers]] = {}  # by id(pool)

    def take(self, processes: int = 2, threads: int = 4, **settings_env: str) -> Workers:
        key = (processes, threads, tuple(sorted(settings_env.items())))
        pool = self.paused.pop(key, None)
        if pool is not None and not self._wakes_up(pool):
            pool.kill()
            pool = None
        if pool is None:
            pool = Workers(self.env, self.log_dir, processes, threads, **settings_env).start()
        self.taken[id(pool)] = key, pool
        return pool

    @staticmethod
    def _wakes_up(pool: Workers) -> bool:
        pool.resume()
        with contextlib.suppress(AssertionError, RuntimeError):
            pool.wait_ready(timeout=5)
            return True
        return False

    def give_back(self, pool: Workers, quiet: Callable[[], bool], timeout: float = 5.0) -> None:
        """Keep ``pool`` for later if it is alive and ``quiet()`` (no job of its running) comes true within
        ``timeout`` seconds; stop it otherwise."""
        key, _ = self.taken.pop(id(pool))
        try:
            idle = pool.alive and wait_for(quiet, timeout=timeout, what="the pool's jobs to end")
        except Exception:  # noqa: BLE001 - Redis down, jobs hanging: a pool not shown idle is not reused
            idle = False
        if idle:
            pool.pause()
            self.paused[key] = pool
        else:
            pool.kill()

    def close(self) -> None:
        """End every pool (killed: how workers stop has tests of its own, and saying goodbye takes seconds)."""
        pools = [*self.paused.values(), *(pool for _, pool in self.taken.values())]
        for pool in pools:
            pool.kill()
        self.paused.clear()
        self.taken.clear()
