"""Child processes that never outlive the process that started them.

A child started with :func:`spawn` gets ``PR_SET_PDEATHSIG`` (Linux): the kernel signals it the moment its parent
dies, however the parent dies — Ctrl-C, ``kill -9``, a test run cut short by a timeout. Processes that Dramatiq
forks for us call :func:`die_with_parent` themselves when they boot. Each child also gets a session of its own,
so that a terminal's Ctrl-C reaches only the parent, which then stops its children in order (the Redis server
flushes its append-only file, workers give their tickets back).

Elsewhere than Linux the death signal does not exist; the parent's own clean-up is then all there is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform == "linux" else None


def _set_death_signal(signum: int) -> None:
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies.

    If the parent is already gone (it died between our fork and this call), exit at once: the death signal is
    only sent on a later death.
    """
    _set_death_signal(signum)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def _preexec(signum: int, parent: int) -> Callable[[], None]:
    def child() -> None:  # runs in the child between fork and exec: only async-signal-safe work here
        _set_death_signal(signum)
        if os.getppid() != parent:
            os._exit(1)
    return child


def spawn(args: list[str], *, death_signal: int = signal.SIGKILL, **popen: object) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session, killed with ``death_signal`` when this process (strictly: the
    thread that calls this) dies. Use SIGTERM for a child that must get to say goodbye (Redis writes its AOF)."""
    popen.setdefault("start_new_session", True)
    if _libc is not None:
        popen["preexec_fn"] = _preexec(death_signal, os.getpid())
    return subprocess.Popen(args, **popen)  # noqa: S603 - our own commands


def stop(process: subprocess.Popen, timeout: float = 10.0, first: int = signal.SIGTERM) -> int:
    """Send ``first`` to the child's whole process group, wait, then SIGKILL the group; return the exit code."""
    if process.poll() is None:
        _signal_group(process, first)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process, signal.SIGKILL)
    return process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass
