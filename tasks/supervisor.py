"""Child processes that never outlive the process that started them.

A child started with :func:`spawn` gets ``PR_SET_PDEATHSIG`` (Linux): the kernel signals it the moment its parent
dies, however the parent dies — Ctrl-C, ``kill -9``, a test run cut short by a timeout. Processes that Dramatiq
forks for us call :func:`die_with_parent` themselves when they boot. Each child also gets a session of its own,
so that a terminal's Ctrl-C reaches only the parent, which then stops its children in order (the Redis server
flushes its append-only file, workers give their tickets back).

Elsewhere than Linux the death signal does not exist; the parent's own clean-up is then all there is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil

log = logging.getLogger("queuechat.supervisor")

PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform == "linux" else None


def _set_death_signal(signum: int) -> None:
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


def die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies.

    If the parent is already gone (it died between our fork and this call: we were adopted by init, or by
    ``parent``'s successor), exit at once: the death signal is only sent on a later death.
    """
    _set_death_signal(signum)
    if os.getppid() == 1 or (parent is not None and os.getppid() != parent):
        os._exit(1)


def _preexec(signum: int, parent: int, umask: int | None) -> Callable[[], None]:
    def child() -> None:  # runs in the child between fork and exec: only async-signal-safe work here
        if umask is not None:
            os.umask(umask)
        _set_death_signal(signum)
        if os.getppid() != parent:
            os._exit(1)
    return child


def spawn(args: list[str], *, death_signal: int = signal.SIGKILL, umask: int | None = None,
          **popen: object) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session, killed with ``death_signal`` when this process (strictly: the
    thread that calls this) dies. Use SIGTERM for a child that must get to say goodbye (Redis writes its AOF).
    ``umask``: for a child whose files must be private (0o077: readable by this user only)."""
    popen.setdefault("start_new_session", True)
    popen["preexec_fn"] = _preexec(death_signal, os.getpid(), umask)
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


class WorkerPool:
    """``WORKER_PROCESSES`` workers, each its own ``dramatiq tasks.actors --processes 1`` CLI, kept running.

    One CLI per process, not one CLI with N processes: when one of its processes dies, the dramatiq CLI stops
    the others and waits for them to drain (up to a whole job); here a dead worker takes nobody with it and is
    started again within a second or two. It sleeps until one of them dies (each worker and each CLI is watched
    through a pidfd, on Linux: a death is seen at once) or it is time to look at the leases (when the next runs out,
    and at least every quarter of the reap grace while any runs): then it looks for workers of
    its own that hold a lease that has run out without renewal — a process frozen (SIGSTOP, a stuck interpreter)
    can't close its LLM call itself — and kills them, so that their connections close before the reaper hands
    the job to another worker (the reaper waits ``reap_grace_ms`` after a lease ran out).

    A worker process of its own that it sees dead (killed, crashed, or killed here for freezing) holds nothing
    any more: the kernel closed its connections with it. Its leases are released and its jobs put back at once
    (RELEASE, then REAP), without waiting for the lease and the grace to run out, and its CLI, which would only
    drain and exit, is stopped so that the process starts again sooner. Workers outside ``main.py`` (compose,
    another host) are recovered by their leases alone.
    """

    CHECK_SECONDS = 0.25  # how often a booting CLI is looked at for its worker; without pidfds, for deaths too

    def __init__(self, processes: int, threads: int, env: dict[str, str], cwd: str | None = None) -> None:
        self.command = [sys.executable, "-m", "dramatiq", "tasks.actors", "--processes", "1",
                        "--threads", str(threads)]
        self.env, self.cwd = env, cwd
        self.slots: list[_Slot] = [_Slot() for _ in range(processes)]
        self.stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe()  # stop() writes one byte: the pool's sleep ends at once
        self.thread = threading.Thread(target=self._run, name="worker-pool", daemon=True)

    def start(self) -> WorkerPool:
        self.thread.start()
        return self

    def _run(self) -> None:
        from tasks.settings import settings

        # The children get their death signal when this thread ends: it lives as long as the pool.
        leases_at = 0.0
        while not self.stopping.is_set():
            try:  # first: a CLI that exited with its worker is only restarted once it is known whether it had booted
                self.release_dead()
                if time.monotonic() >= leases_at:  # a round trip to Redis: at rest, all the pool asks of it
                    quarter_grace_ms = min(1000, settings.reap_grace_ms // 4)
                    leases_at = time.monotonic() + quarter_grace_ms / 1000  # should Redis be away: again soon
                    leases_at = time.monotonic() + self.kill_frozen(settings.lease_ttl_ms, quarter_grace_ms)
            except Exception:  # Redis away, a process gone meanwhile: next round
                log.debug("looking for dead or frozen workers failed", exc_info=True)
            for number, slot in enumerate(self.slots):
                slot.keep_running(self, number)
            self._sleep(leases_at)
        running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:  # all at once: each drains in parallel
            # The CLI master alone: it passes the signal on to its worker process, which takes a second one as an
            # order to exit at once (sys.exit in its signal handler), and then hung until the SIGKILL below.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
            stop(process, timeout=0, first=signal.SIGKILL)
        for slot in self.slots:
            slot.close()

    stop_timeout = 15.0

    def _sleep(self, leases_at: float) -> None:
        """Until a watched process dies, stop() is called, a CLI is due to be (re)started or looked at, or the
        next lease runs out."""
        now = time.monotonic()
        until = [leases_at]
        fds = [self._wake_read]
        for slot in self.slots:
            if slot.process is None:
                until.append(slot.restart_at)
            watched = slot.pidfds()
            if watched is None or slot.booting():  # no pidfds here, or its worker is still to be found
                until.append(now + self.CHECK_SECONDS)
            else:
                fds.extend(watched)
        poller = select.poll()  # not select.select: a busy app's pidfds may be numbered past 1023
        for fd in fds:
            poller.register(fd, select.POLLIN)
        ready = [fd for fd, _ in poller.poll(max(0.0, min(until) - now) * 1000)]
        if self._wake_read in ready:
            os.read(self._wake_read, 1)

    def workers(self) -> dict[int, int]:
        """pid of each live worker process (the CLI's child) -> its slot number."""
        return {pid: number for number, slot in enumerate(self.slots) for pid in slot.workers}

    def release_dead(self) -> None:
        """Put back at once the jobs of every worker process seen dead since the last look (see the class)."""
        from tasks.broker import send_tickets
        from tasks.keys import WORKERS
        from tasks.store import sync_store

        host = socket.gethostname()
        for slot in self.slots:
            dead = slot.watch()
            if not dead or self.stopping.is_set():
                continue
            # Its CLI would drain and exit, with nothing left to drain; not a CLI started since (the CLI died first).
            if slot.process is not None and slot.process is slot.owner:
                stop(slot.process, timeout=0, first=signal.SIGKILL)
            store = sync_store()
            ids = [f"{host}:{pid}" for pid in dead]
            slot.booted = any(score is not None for score in store.client.zmscore(WORKERS, ids))
            scripts = store.scripts
            released = sum(scripts.release(worker) for worker in ids)
            if released:
                back, _ = scripts.reap()
                send_tickets(len(back))
                log.warning("worker process %s died holding %d job(s): put back at once", dead, released)

    def kill_frozen(self, lease_ttl_ms: int, quarter_grace_ms: int) -> float:
        """Kill our workers that hold an expired lease; return the seconds until the next lease runs out (with
        none running, a lease's lifetime: a job admitted meanwhile can't run out sooner)."""
        from tasks.store import sync_store

        next_ms, *expired = sync_store().scripts.read_expired()
        if expired:
            self._kill_holders(expired)
        if next_ms < 0 and not expired:
            return lease_ttl_ms / 1000
        # While leases run, a look every quarter grace at least (as at most once a second before): the next expiry
        # is not enough after a Redis outage, when the reaper may come first to a lease that ran out meanwhile.
        return (quarter_grace_ms if next_ms < 0 else min(next_ms + 10, quarter_grace_ms)) / 1000

    def _kill_holders(self, expired: list[str]) -> None:
        ours = self.workers()
        host = socket.gethostname()
        for job_id, worker in zip(expired[0::2], expired[1::2]):
            worker_host, _, pid = (worker or "").rpartition(":")
            if worker_host == host and pid.isdigit() and int(pid) in ours:
                log.warning("worker %s holds the expired lease of job %s without renewing it: killing it",
                            pid, job_id)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every worker (SIGTERM: they finish or give back what they hold; SIGKILL after ``timeout``)."""
        self.stop_timeout = timeout
        self.stopping.set()
        if self._wake_write >= 0:
            os.write(self._wake_write, b"x")
        self.thread.join(timeout + 5)
        if not self.thread.is_alive() and self._wake_write >= 0:  # once: a second stop() finds nothing to do
            os.close(self._wake_read)
            os.close(self._wake_write)
            self._wake_read = self._wake_write = -1


class _Slot:
    """One supervised worker CLI, restarted at once when it ran for a few seconds or its worker had booted (sent a
    heartbeat); otherwise after a backoff (1, 2, 4 … 30 s), which keeps a CLI that can't start (a broken import, a
    wrong setting) from spinning. A worker killed from outside right after it booted is not that."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.workers: dict[int, psutil.Process] = {}  # the CLI's worker processes last seen alive
        self.owner: subprocess.Popen | None = None  # the CLI they were found under
        self.started = 0.0
        self.booted = False  # its worker process had sent a heartbeat before it died (set by release_dead)
        self.delay = 0.5
        self.restart_at = 0.0
        self._pidfds: dict[int, int] = {}  # pid -> a pidfd of the CLI or its worker: readable once it has exited

    def watch(self) -> list[int]:
        """Look at the CLI's worker process: the pids of those seen alive before and dead (or a zombie) now.

        The CLI runs one worker process (``--processes 1``): it is looked for among the CLI's children until it is
        found (listing children scans every process of the machine), then only looked at (its pidfd; elsewhere
        than Linux, its own /proc entry)."""
        if not self.workers and self.process is not None and self.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                self.workers = {child.pid: child for child in psutil.Process(self.process.pid).children()}
                self.owner = self.process
        dead = [pid for pid, process in self.workers.items() if self._exited(pid, process)]
        for pid in dead:
            del self.workers[pid]
            self._forget(pid)
        return dead

    def booting(self) -> bool:
        """Its CLI runs and its worker process is not found yet."""
        return self.process is not None and self.process.returncode is None and not self.workers

    def pidfds(self) -> list[int] | None:
        """What to wait on for a death here: the pidfds of its worker and of its CLI (None: no pidfds here)."""
        pids = [*self.workers, *([self.process.pid] if self.process and self.process.returncode is None else [])]
        fds = [self._pidfd(pid) for pid in pids]
        return None if None in fds else fds

    def close(self) -> None:
        for pid in list(self._pidfds):
            self._forget(pid)

    def _pidfd(self, pid: int) -> int | None:
        if pid not in self._pidfds:
            try:
                self._pidfds[pid] = os.pidfd_open(pid)
            except (AttributeError, OSError):  # not Linux, or gone already (its death is then seen by psutil)
                return None
        return self._pidfds[pid]

    def _forget(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def _exited(self, pid: int, process: psutil.Process) -> bool:
        fd = self._pidfd(pid)
        if fd is None:
            return not _alive(process)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    def keep_running(self, pool: WorkerPool, number: int) -> None:
        now = time.monotonic()
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self._forget(self.process.pid)
            code, self.process = self.process.returncode, None
            self.delay = 0.5 if self.booted or now - self.started > 5 else min(self.delay * 2, 30.0)
            self.restart_at = now + (0.0 if self.delay == 0.5 else self.delay)
            log.warning("worker %d exited with %s; restarting%s", number, code,
                        "" if self.delay == 0.5 else f" in {self.delay:.0f} s")
        if now >= self.restart_at:
            self.started, self.booted = now, False
            self.process = spawn(pool.command, cwd=pool.cwd, env=pool.env)


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (``is_running`` also says False when the pid went to another process). A process
    that can't be looked at counts as alive: only its lease may then hand its jobs to another worker."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
