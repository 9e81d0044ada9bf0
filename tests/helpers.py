"""Small readings of jobs that the tests of the queue's guarantees share: every time is Redis' clock (a job's stream
entry ids are Redis milliseconds), never the test's."""

from __future__ import annotations

import json
import socket

from devtools.figures import children
from devtools.waiting import wait_for
from tasks import keys, queue
from tasks.connection import get_redis
from tasks.store import sync_store


def submit(prompt: str, priority: str = "normal", user: str = "u1", **kwargs) -> str:
    return sync_store().submit(prompt, user=user, priority=priority, **kwargs).job_id


def raw(job_id: str) -> dict:
    """The job's record as Redis holds it."""
    return get_redis().hgetall(keys.job(job_id))


def public(job_id: str) -> dict:
    return sync_store().job(job_id).public()


def redis_ms() -> int:
    seconds, micros = get_redis().time()
    return seconds * 1000 + micros // 1000


def entries(job_id: str) -> list[tuple[int, dict]]:
    """The job's stream as (Redis ms, entry), oldest first."""
    return [(int(entry_id.split("-")[0]), entry) for entry_id, entry in sync_store().stream(job_id)]


def snapshots(job_id: str) -> list[tuple[int, dict]]:
    """(Redis ms, snapshot) of the job's status and done entries."""
    return [(ms, json.loads(e["d"])) for ms, e in entries(job_id) if e["k"] in ("status", "done")]


def resets(job_id: str) -> list[tuple[int, int]]:
    """(Redis ms, epoch) of every attempt's start."""
    return [(ms, int(e["a"])) for ms, e in entries(job_id) if e["k"] == "reset"]


def tokens_of(job_id: str, epoch: int) -> list[tuple[int, str]]:
    """(Redis ms, text) of the tokens written by one attempt (epoch)."""
    return [(ms, e["d"]) for ms, e in entries(job_id) if e["k"] == "token" and int(e["a"]) == epoch]


def asked(fake_llm, marker: str) -> int:
    """How many chat requests the fake received whose last user message contains ``marker``."""
    def last_user(body: dict) -> str:
        return next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
    return sum(marker in last_user(body) for body in fake_llm.requests)


def is_over(job_id: str) -> bool:
    return raw(job_id).get("status") in queue.TERMINAL


def wait_over(*ids: str, timeout: float = 60) -> list[dict]:
    """The public jobs once every one has ended (AssertionError naming their states otherwise)."""
    try:
        wait_for(lambda: all(is_over(job_id) for job_id in ids), timeout=timeout, interval=0.1)
    except AssertionError:
        states = [(raw(job_id).get("prompt", "")[:30], raw(job_id).get("status"), raw(job_id).get("attempts"))
                  for job_id in ids]
        raise AssertionError(f"jobs not ended after {timeout} s: {states}") from None
    return [public(job_id) for job_id in ids]


def wait_running(job_id: str, attempts: int = 1, tokens: int = 1, timeout: float = 30) -> dict:
    """The record once attempt number ``attempts`` runs and has written ``tokens`` tokens."""
    def running() -> dict | None:
        record = raw(job_id)
        if record.get("status") != "running" or int(record.get("attempts", 0)) != attempts:
            return None
        return record if len(tokens_of(job_id, int(record["epoch"]))) >= tokens else None
    return wait_for(running, timeout=timeout, interval=0.05, what=f"attempt {attempts} of {job_id} to stream")


def slow(label: str, tokens: int, delay: float) -> str:
    """A prompt the fake answers with ``tokens`` tokens ``t0 t1 …``, ``delay`` seconds apart."""
    return f"{label} [[tokens={tokens}]][[delay={delay}]]"


def echoed(tokens: int) -> str:
    return "".join(f"t{i}" if i == 0 else f" t{i}" for i in range(tokens))


def worker_processes(app_pid: int) -> dict[int, int]:
    """main.py's worker processes (the children of the dramatiq CLIs it supervises): pid -> its CLI's pid."""
    return {worker: master for master in children(app_pid) for worker in children(master)}


def heartbeat_ms(pid: int) -> int | None:
    """The latest heartbeat of a worker process of this host (Redis ms), if it has sent one."""
    score = get_redis().zscore(keys.WORKERS, f"{socket.gethostname()}:{pid}")
    return int(score) if score else None


def booted_workers(app_pid: int, count: int, timeout: float = 60) -> dict[int, int]:
    """main.py's worker processes once ``count`` of them have sent a heartbeat in the last 3 s."""
    def booted() -> dict[int, int] | None:
        found = worker_processes(app_pid)
        now = redis_ms()
        fresh = {pid: master for pid, master in found.items() if (heartbeat_ms(pid) or 0) > now - 3000}
        return fresh if len(fresh) == count else None
    return wait_for(booted, timeout=timeout, interval=0.1, what=f"{count} booted worker processes")


def worker_pid(record: dict) -> int:
    """The pid of the worker process holding a job (its record's ``worker`` is host:pid)."""
    return int(record["worker"].rpartition(":")[2])
