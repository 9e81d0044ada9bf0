"""One child process of a dev stack, and the promise that it never outlives the process that started it.

Every child starts through :func:`tasks.supervisor.spawn`: in a session of its own (a terminal's Ctrl-C reaches
only us, and we stop the children in order) and with a death signal, so that the kernel ends it when we die,
however we die — SIGTERM, SIGKILL, a test run cut short. Stopping a child stops its whole tree: first its own
graceful shutdown, then its process group, then whatever it started in sessions of its own (``main.py``'s Redis
and workers), noted with psutil before the first signal.

A fixture that only needs the child gone, not stopped well (how things stop has tests of its own), kills the tree
instead (:meth:`~Child.kill`): a ``dramatiq`` CLI takes 2–4 s to say goodbye, and a test run ends some fifty.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from tasks import supervisor

ROOT = Path(__file__).resolve().parent.parent


def without_pytest(env: dict[str, str]) -> dict[str, str]:
    """``env`` without pytest's variables: a child must not believe it runs under pytest."""
    return {name: value for name, value in env.items() if not name.startswith("PYTEST_")}


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment for a child: without pytest's variables, with ``extra``."""
    return {**without_pytest(dict(os.environ)), **extra}


class Child:
    """One subprocess, its output appended to ``log_path`` (kept across restarts)."""

    def __init__(self, name: str, command: list[str], *, env: dict[str, str], log_path: Path,
                 stop_signal: int = signal.SIGTERM, death_signal: int = signal.SIGKILL) -> None:
        self.name, self.command, self.env, self.log_path = name, command, env, log_path
        self.stop_signal, self.death_signal = stop_signal, death_signal
        self.process: subprocess.Popen | None = None
        self.asked_to_stop = False
        self.noted: set[psutil.Process] = set()

    def start(self) -> Child:
        self.asked_to_stop = False
        with open(self.log_path, "ab") as log:
            self.process = supervisor.spawn(self.command, death_signal=self.death_signal, cwd=ROOT,
                                            env=without_pytest(self.env), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise, with the end of its log, when the child has exited: a wait for it would be in vain."""
        if not self.alive:
            raise RuntimeError(f"{self.name} exited; the end of its log:\n{self.log_tail()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.output()[-chars:]

    def descendants(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(self.pid).children(recursive=True)
        return []

    def note_descendants(self) -> None:
        """Remember what the child has started so far, so that :meth:`stop` ends it even if the child dies first
        (its children are then adopted by init, and no longer found below it)."""
        self.noted.update(self.descendants())

    def ask_to_stop(self) -> None:
        """``stop_signal`` to the child alone, once: it stops what it started, in order (dramatiq's master takes
        a second signal as an order to kill its workers)."""
        if self.alive and not self.asked_to_stop:
            self.asked_to_stop = True
            self.process.send_signal(self.stop_signal)

    def stop(self, timeout: float = 15.0) -> None:
        """:meth:`ask_to_stop` and wait, then signal its process group, then SIGKILL anything of its tree still
        alive."""
        if self.process is None:
            return
        tree = {*self.noted, *self.descendants()}
        self.ask_to_stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        supervisor.stop(self.process, timeout=5)
        left = wait_ended(tree, timeout=5)  # grandchildren the child was still stopping as it exited
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil checks it is the same process, not a new one with a recycled pid

    def kill(self) -> None:
        """SIGKILL the child, its process group and whatever it started, and wait until they are gone. What it
        started in sessions of its own gets the child's death signal too, also when it was started after the
        tree was noted here."""
        if self.process is None:
            return
        tree = {*self.noted, *self.descendants()}
        supervisor.stop(self.process, timeout=0, first=signal.SIGKILL)
        for process in tree:
            with contextlib.suppress(psutil.Error):
                process.kill()
        wait_ended(tree, timeout=5)


def wait_ended(processes: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has ended, and return those still running. Ended means gone or a zombie: a
    process whose parent died first (its whole tree killed at once) is reaped by init, here a second or more
    later, and holds nothing but its pid meanwhile (psutil.wait_procs would wait for the reaping)."""
    deadline = time.monotonic() + timeout
    while True:
        running = [process for process in processes if _running(process)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.01)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
