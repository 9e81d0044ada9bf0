"""Readings of processes, through psutil: trees, CPU and memory, open connections, and which processes carry
a marker in their environment (so that a test can find everything a run started, wherever it ended up)."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Self

import psutil


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every process below it."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (the worker processes of a dramatiq CLI, say)."""
    with contextlib.suppress(psutil.Error):
        return [child.pid for child in psutil.Process(pid).children()]
    return []


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def cpu_percent(pid: int, seconds: float) -> float:
    """CPU used by ``pid`` over the next ``seconds``, in % of one core."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def tree_rss(pid: int) -> int:
    total = 0
    for process in tree(pid):
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def descendants_pss(name_part: str) -> int:
    """Summed proportional set size (shared pages divided among their users, so a sum is honest) of our
    descendants whose name contains ``name_part`` (Chromium's processes, say)."""
    total = 0
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if name_part in process.name():
                total += process.memory_full_info().pss
    return total


def established_connections(port: int) -> int:
    """TCP connections accepted on ``port`` and still open (websockets and keep-alive HTTP alike)."""
    return sum(1 for connection in psutil.net_connections(kind="tcp")
               if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_ESTABLISHED)


def processes_with(name: str, value: str) -> list[psutil.Process]:
    """Live processes (not zombies: they run nothing) whose environment has ``name=value``."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(name) == value:
                found.append(process)
    return found


class PeakMemory:
    """Samples the resident memory of a few process trees once a second in the background; keeps the peak."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.peak = {name: 0 for name in pids}
        self.last = dict(self.peak)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def __enter__(self) -> Self:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sample()

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.last[name] = tree_rss(pid)
            self.peak[name] = max(self.peak[name], self.last[name])
