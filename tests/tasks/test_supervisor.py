"""``main.py`` and its worker processes (:mod:`tasks.supervisor`), attacked with ``kill -9`` and ``SIGSTOP``
(issue 10, points 2, 4 and 8).

* One worker process dying takes nobody with it: its job runs again within QUEUE_RECOVERY_SECONDS while the
  other process goes on with its own long answers, a job submitted meanwhile starts, and main.py has the dead
  worker back within seconds. main.py puts the dead worker's job back in line at once, not when its lease runs
  out.
* A worker frozen outright can't close its LLM call: main.py kills it once its lease has run out, before the job
  is handed to another worker, so the cap holds.
* No process outlives the one that started it, whichever is killed: a dramatiq CLI takes its worker with it, and
  main.py takes its workers and its Redis.

Times are Redis' (stream entry ids, heartbeats); what the LLM saw is what the fake counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import psutil

from devtools.fake_llm import Reply
from devtools.figures import children
from devtools.processes import clean_environ
from devtools.stack import App
from devtools.waiting import wait_for
from tasks.settings import settings
from tasks.supervisor import WorkerPool
from tasks.store import sync_store
from tests.helpers import (asked, booted_workers, heartbeat_ms, raw, redis_ms, resets, slow, snapshots, submit,
                           wait_over, wait_running, worker_pid, worker_processes)


def gone(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    return True


# --- 2. one worker process killed: the others go on, the job is back in time, main.py restarts it -----------

def test_a_killed_worker_process_is_recovered_in_time_and_restarted_while_the_other_is_busy(app_factory,
                                                                                           fake_llm):
    app = app_factory(WORKER_PROCESSES="2", WORKER_THREADS="2", QUEUE_CONCURRENCY="4")
    booted_workers(app.pid, 2)
    long_jobs = [submit(slow(f"long {i}", 400, 0.05)) for i in range(3)]  # 20 s each: 2 + 1 on two processes
    records = {job_id: wait_running(job_id) for job_id in long_jobs}
    by_process: dict[int, list[str]] = {}
    for job_id, record in records.items():
        by_process.setdefault(worker_pid(record), []).append(job_id)
    [victim] = [pid for pid, jobs in by_process.items() if len(jobs) == 1]
    [busy] = [pid for pid, jobs in by_process.items() if len(jobs) == 2]
    [orphaned] = by_process[victim]

    killed_ms = redis_ms()
    os.kill(victim, signal.SIGKILL)
    newcomer = submit("newcomer [[tokens=3]]")
    recovery_ms = settings.queue_recovery_seconds * 1000
    wait_running(orphaned, attempts=2, timeout=settings.queue_recovery_seconds + 20)
    assert resets(orphaned)[-1][0] - killed_ms <= recovery_ms, resets(orphaned)[-1][0] - killed_ms
    # back in line before its lease had run out (the reaper alone waits for the lease and then the reap grace)
    [(back_ms, back)] = [(ms, s) for ms, s in snapshots(orphaned) if s["phase"] == "recovering"]
    assert back["attempts"] == 1 and back_ms - killed_ms < settings.lease_ttl_ms, back_ms - killed_ms
    [started] = wait_over(newcomer)
    assert started["status"] == "completed"
    assert int(raw(newcomer)["started_at"]) - killed_ms <= recovery_ms
    # main.py has the worker back: a new process, beating
    replacement = wait_for(lambda: [pid for pid in worker_processes(app.pid) if pid not in (victim, busy)
                                    and heartbeat_ms(pid)], timeout=20, what="a restarted worker process")
    assert heartbeat_ms(replacement[0]) - killed_ms <= recovery_ms
    # and the other process was never stopped: its two answers went on, first attempts, untouched
    assert busy in worker_processes(app.pid)
    for job_id in by_process[busy]:
        assert (raw(job_id)["status"], raw(job_id)["attempts"], len(resets(job_id))) == ("running", "1", 1)
    for job_id in long_jobs:
        sync_store().cancel(job_id)
    wait_over(*long_jobs)


def test_a_worker_killed_as_soon_as_it_booted_is_started_again_without_a_backoff(app_factory, fake_llm):
    app = app_factory(WORKER_PROCESSES="1")
    for _ in range(3):  # a CLI that lived under 5 s: only one whose worker never booted is held back
        [victim] = booted_workers(app.pid, 1)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in worker_processes(app.pid), timeout=10, what="the killed worker to go")
    booted_workers(app.pid, 1)
    restarts = [line for line in app.output().splitlines() if "exited with" in line]
    assert len(restarts) == 3 and not [line for line in restarts if "restarting in" in line], restarts


def test_a_worker_cli_that_cannot_start_is_started_again_after_a_growing_delay(caplog):
    pool = WorkerPool(processes=1, threads=1, env=clean_environ())
    pool.command = [sys.executable, "-c", "raise SystemExit(3)"]  # as a broken import would
    with caplog.at_level(logging.WARNING, logger="queuechat.supervisor"):
        pool.start()
        try:
            wait_for(lambda: len(exits(caplog)) >= 3, timeout=20, what="three exits")
        finally:
            pool.stop(timeout=1)
    assert exits(caplog)[:3] == ["worker 0 exited with 3; restarting in 1 s",
                                 "worker 0 exited with 3; restarting in 2 s",
                                 "worker 0 exited with 3; restarting in 4 s"]


def exits(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if "exited with" in record.getMessage()]


def test_the_pool_watches_its_workers_through_descriptors_numbered_past_1023(env, caplog):
    """An app with a thousand clients gets pidfds numbered past 1023, where ``select()`` raises: the pool's thread
    died and no worker was ever started again (seen with 1100 connections). The pool waits with ``poll()``."""
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the clients' sockets, as far as fds go
    assert spare[-1] > 1023  # every descriptor opened from now on is numbered past 1023: the pool's too
    pool = WorkerPool(processes=1, threads=1, env=clean_environ(**env))
    try:
        with caplog.at_level(logging.WARNING, logger="queuechat.supervisor"):
            pool.start()
            try:
                [first] = wait_for(lambda: list(pool.workers()), timeout=30, what="a booted worker")
                os.kill(first, signal.SIGKILL)
                wait_for(lambda: [pid for pid in pool.workers() if pid != first], timeout=30,
                         what="the killed worker seen dead and started again")
            finally:
                pool.stop(timeout=5)
    finally:
        for fd in spare:
            os.close(fd)
    assert pool.thread.is_alive() is False and len(exits(caplog)) == 1, exits(caplog)


# A CLI that starts a "worker" which outlives it by a second once it is killed (as a worker busy at that moment
# may): the pool has started the next CLI by the time it sees that worker dead.
SLOW_ORPHAN_CLI = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, time\\nparent = os.getppid()\\n"
                  "while os.getppid() == parent: time.sleep(0.02)\\ntime.sleep(1)"])
time.sleep(3600)
"""


def test_a_killed_clis_worker_seen_dead_after_the_restart_does_not_stop_the_new_cli(env, caplog):
    pool = WorkerPool(processes=1, threads=1, env=clean_environ(**env))
    pool.command = [sys.executable, "-c", SLOW_ORPHAN_CLI]
    with caplog.at_level(logging.WARNING, logger="queuechat.supervisor"):
        pool.start()
        try:
            [worker] = wait_for(lambda: list(pool.workers()), timeout=10, what="the first CLI's worker")
            orphan = psutil.Process(worker)
            os.kill(pool.slots[0].process.pid, signal.SIGKILL)
            wait_for(lambda: gone(orphan), timeout=10, what="its worker to end a second later")
            wait_for(lambda: [pid for pid in pool.workers() if pid != worker], timeout=10,
                     what="the next CLI's worker")
        finally:
            pool.stop(timeout=1)
    assert len(exits(caplog)) == 1, exits(caplog)  # the next CLI ran on: no second restart


# --- 4. a worker frozen under main.py ---------------------------------------------------------------------

def test_a_worker_frozen_under_main_py_is_killed_before_its_job_runs_elsewhere(app_factory, fake_llm):
    app = app_factory(WORKER_PROCESSES="2", WORKER_THREADS="2")  # the default cap: 1
    booted_workers(app.pid, 2)
    fake_llm.script(Reply(tokens=[f" w{i}" for i in range(400)], token_delay=0.05),
                    Reply(tokens=["Clean", " second", " attempt."], token_delay=0.05))
    job = submit("frozen")
    frozen = psutil.Process(worker_pid(wait_running(job, tokens=3)))
    frozen.suspend()  # SIGSTOP: it can close nothing itself
    wait_for(lambda: gone(frozen), timeout=settings.queue_recovery_seconds + 10, what="main.py to kill it")
    [done] = wait_over(job, timeout=settings.queue_recovery_seconds + 30)
    assert (done["status"], done["attempts"], done["answer"]) == ("completed", 2, "Clean second attempt.")
    assert asked(fake_llm, "frozen") == 2 and fake_llm.cancelled == 1
    assert fake_llm.max_active == 1  # its call closed with it, before the job ran again elsewhere
    assert f"worker {frozen.pid} holds the expired lease of job {job}" in app.output()


# --- 8. orphans -----------------------------------------------------------------------------------------------

def test_a_dramatiq_cli_killed_under_main_py_takes_its_worker_with_it_and_main_py_starts_both_again(app_factory,
                                                                                                   fake_llm):
    app = app_factory(WORKER_PROCESSES="2")
    workers = booted_workers(app.pid, 2)
    worker, master = sorted(workers.items())[0]
    worker_process = psutil.Process(worker)
    os.kill(master, signal.SIGKILL)
    try:
        wait_for(lambda: gone(worker_process), timeout=5, what=f"worker {worker} to die with its CLI")
    finally:
        with contextlib.suppress(psutil.Error):  # a failed test must not leave it behind
            worker_process.kill()
    again = booted_workers(app.pid, 2)
    assert worker not in again and master not in again.values()
    # One restart: the CLI started in the place of the killed one is not stopped when its predecessor's worker
    # is seen dead (it was, a moment later: a second restart).
    restarts = [line for line in app.output().splitlines() if "exited with" in line]
    assert len(restarts) == 1, restarts
    job = submit("still served")
    assert wait_over(job)[0]["status"] == "completed"


def test_main_py_killed_leaves_no_worker_and_no_redis_behind(env, tmp_path, fake_llm):
    own_redis = {name: value for name, value in env.items() if name != "REDIS_URL"}  # main.py embeds its Redis
    app = App(own_redis, tmp_path)
    data = Path(tmp_path / "data" / "redis").resolve()
    tree: list[psutil.Process] = []
    try:
        app.start(WORKER_PROCESSES="2")
        wait_for(lambda: app.health().get("workers") == 2, timeout=60, what="main.py's two workers")
        tree = psutil.Process(app.pid).children(recursive=True)
        redis_servers = [p for p in tree if "redis-server" in " ".join(p.cmdline()) and Path(p.cwd()) == data]
        masters = [p for p in tree if p.pid in children(app.pid) and "dramatiq" in " ".join(p.cmdline())]
        assert len(redis_servers) == 1 and len(masters) == 2 and len(tree) == 5, [p.cmdline() for p in tree]
        os.kill(app.pid, signal.SIGKILL)
        wait_for(lambda: all(gone(p) for p in tree), timeout=10,
                 what=f"main.py's children to go: {[(p.pid, p.cmdline()[:3]) for p in tree if not gone(p)]}")
    finally:
        for process in tree:  # a failed test must not leave them either
            with contextlib.suppress(psutil.Error):
                process.kill()
        app.stop()


def test_main_py_stopped_with_ctrl_c_stops_every_worker_cleanly(app_factory, fake_llm):
    app = app_factory(WORKER_PROCESSES="3")
    workers = booted_workers(app.pid, 3)
    app.process.send_signal(signal.SIGINT)
    app.process.wait(30)
    log = app.output()
    # each worker stopped its threads and said so (none was left hanging until main.py's stop timeout killed it)
    assert log.count("Worker has been shut down.") == 3 and "Killing worker process" not in log
    assert not [pid for pid in workers if psutil.pid_exists(pid) and not gone(psutil.Process(pid))]
