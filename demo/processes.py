"""Subprocesses the demo starts, and the guarantee that it stops every one of them.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the demo, which then stops the
children in order (the app first asks its workers and its Redis to stop). Stopping does not trust that chain:
the whole process tree is noted before the signal, and whatever of it is still alive afterwards is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


class Child:
    """One subprocess with its output in a log file."""

    def __init__(self, name: str, args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.name, self.args, self.cwd, self.env, self.log_path = name, args, cwd, env, log
        self.process: subprocess.Popen | None = None
        self.known: set[tuple[int, str]] = set()  # (pid, start time) of processes it started, seen so far

    def start(self) -> Child:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def note_descendants(self) -> None:
        """Remember what the child has started, so that it is stopped even if the child itself dies first
        (a dead parent's children are adopted by init, and no longer found below it)."""
        if self.process is not None:
            self.known |= {found for found in map(_identity, descendants(self.process.pid)) if found}

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 25.0) -> None:
        """SIGINT (a graceful stop, as Ctrl-C would be), then SIGKILL for anything of its tree still alive."""
        if self.process is None:
            return
        self.note_descendants()
        tree = [*self.known, *filter(None, [_identity(self.process.pid)])]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        deadline = time.monotonic() + 5
        while any(_identity(pid) == (pid, started) for pid, started in tree) and time.monotonic() < deadline:
            time.sleep(0.1)  # grandchildren that the child was still stopping when it exited
        for pid, started in tree:
            if _identity(pid) == (pid, started):  # the same process, not a new one with a recycled pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from Linux's ``/proc`` (elsewhere: none, the app stops its own)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, ppid, …, start time (index 19)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live process, None once it is gone (or a zombie, which runs nothing)."""
    if not Path("/proc/self").exists():  # no /proc: a pid that answers is taken to be the same process
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid, ""
    fields = _stat(pid)
    if not fields or fields[0] == "Z":
        return None
    return pid, fields[19]


def wait_until(check: Callable[[], object], timeout: float, what: str, child: Child | None = None):
    """Poll ``check`` until it returns something truthy; fail early if ``child`` died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive:
            raise RuntimeError(f"{child.name} exited while waiting for {what}:\n{child.log_tail()}")
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def get_json(url: str) -> dict | None:
    """GET ``url`` as JSON (whatever the status); None when nothing answers."""
    try:
        return httpx.get(url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
