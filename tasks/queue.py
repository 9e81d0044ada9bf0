"""The admission layer: who waits, who runs, in which order. Every decision is one atomic Lua step in Redis.

Dramatiq's Redis broker has no priorities, so Dramatiq messages here are interchangeable *tickets*: a
ticket that a worker runs asks the ADMIT step for the best waiting job and runs that one. The order is
decided here and nowhere else. The steps live in ``tasks/lua/`` (one file each, after a shared prelude);
:class:`Scripts` loads them onto a client and sends every call the settings they depend on.

Invariants (each step keeps them; tests/tasks/test_queue*.py check them):

1. A job is in at most one of ``waiting`` (sorted by score) and ``leases`` (running, scored by lease expiry).
   A job backing off before a retry is in ``waiting`` — in its own place — and also in ``backoff`` (scored by
   its retry time); ADMIT passes over it until then. Between its failed attempt and the next ADMIT it may be in
   ``handover`` instead of ``waiting`` (see BACK_OFF): that ADMIT puts it back in its line in the step that gives
   its slot to another job.
2. ``score = level * 10^12 + seq``: strict priority between levels, FIFO within one. A job keeps its score
   for life, so a job that comes back (a retry, a crash) is back in its own place, ahead of everything
   submitted after it.
3. ``ZCARD leases <= cap``; a job starts only when ``starts`` holds fewer than ``rate`` starts in the last
   60 s. Holding back never counts as an attempt.
4. Every admission increments the job's ``epoch`` and ``attempts``. Writes from a worker carry its epoch and
   are ignored when it is stale, so a worker that lost its lease can't mix its tokens in. Every path back to
   the line (a failed attempt, a reaped lease) checks ``attempts``: a job fails after ``max_attempts``,
   whatever kept killing it.
5. A job reaches exactly one terminal status (completed, failed, cancelled), through one Lua function
   (``end_job`` in the prelude) that counts it, writes its minute buckets, leaves every queue structure, and
   sets the expiries of its record and stream, in the same step.
6. There are at least as many tickets as waiting jobs. Submission sends one, so does the janitor for each
   job it puts back; it also tops them up once a second (see :mod:`tasks.janitor`); surplus tickets find
   nothing and end.

The position of a job is its ``ZRANK`` in ``waiting`` (O(log n)): the number of jobs ahead of it in line,
those backing off included. A job can start sooner than its position says (a slot is never left idle while a
job ahead backs off). Positions go up only when a job of a higher level (or an earlier fair-share turn) is
submitted ahead, or when a running job ahead fails while nothing else may start (a full rate window, its server's
breaker open, admission paused): it will start before the jobs behind it, and their positions say so. Otherwise a
job that backs off hands its slot over (BACK_OFF): it comes back in line in the same step that starts the job
next in line, and the positions behind it only count down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tasks import backends, keys
from tasks.settings import settings

PRIORITY_LEVELS = {"high": 0, "normal": 1, "low": 2}
LEVEL_SPAN = 10**15  # scores of level L are in [L * LEVEL_SPAN, (L + 1) * LEVEL_SPAN)
TERMINAL = ("completed", "failed", "cancelled")
LIVE = ("queued", "retrying", "running")

STEPS = ("submit", "admit", "heartbeat", "append", "finish", "back_off", "cancel", "reap", "release", "beat",
         "reprioritize", "backend_seen", "read_job", "read_jobs", "read_conversations", "read_clock", "read_positions",
         "read_expired", "read_board")
LUA = Path(__file__).resolve().parent / "lua"
BUCKET_TTL_S = 2 * 86400
IDEMPOTENCY_S = 86400
CONVERSATIONS_KEPT = 100


@cache
def source(step: str) -> str:
    """The Lua of one step, with the prelude in front (the prelude decodes ARGV[1], the config)."""
    prelude = (LUA / "prelude.lua").read_text().replace("@PREFIX@", keys.PREFIX)
    return prelude + "\n" + (LUA / f"{step}.lua").read_text()


def config() -> str:
    """What the steps need to know of the settings, sent with every call (processes may differ in settings
    only through their environment, and every caller sends its own)."""
    fleet = backends.fleet()
    return json.dumps({
        "backends": [{k: v for k, v in {"name": b.name, "cap": b.slots, "rate": b.rate_per_min or None,
                                        "models": list(b.models) if b.models else None}.items() if v is not None}
                     for b in fleet.backends],
        "aliases": {alias: list(models) for alias, models in fleet.aliases.items()},
        "breaker_failures": backends.BREAKER_FAILURES, "breaker_cooldown_ms": int(settings.llm_breaker_cooldown_seconds * 1000),
        "aging_ms": int(settings.queue_aging_seconds * 1000),
        "rate": settings.queue_rate_per_min,
        "lease_ms": settings.lease_ttl_ms, "reap_grace_ms": settings.reap_grace_ms,
        "max_attempts": settings.max_attempts, "max_waiting": settings.queue_max_waiting,
        "history_size": settings.history_size, "conversations_kept": CONVERSATIONS_KEPT,
        "stream_ttl_s": settings.stream_ttl_seconds, "retention_s": int(settings.job_retention_hours * 3600),
        "bucket_ttl_s": BUCKET_TTL_S, "idempotency_s": IDEMPOTENCY_S,
    })


class Scripts:
    """The Lua steps registered on one client (sync or asyncio): ``Scripts(client).admit(worker_id)``.

    Each call returns what the step returns (an awaitable of it on an asyncio client)."""

    def __init__(self, client) -> None:
        self._scripts = {step: client.register_script(source(step)) for step in STEPS}

    def __getattr__(self, step: str):
        script = self._scripts.get(step)
        if script is None:
            raise AttributeError(step)
        return lambda *args: script(args=[config(), *args])


@dataclass(frozen=True)
class Admission:
    """What the admission step decided for a ticket: ``ok`` (with the job's record), ``empty``, ``busy``, or
    ``wait`` (nothing may start for ``wait_ms``: the rate window, or every waiting job backing off)."""

    outcome: str
    job_id: str | None = None
    epoch: int = 0
    wait_ms: int = 0
    backend: str = ""
    model: str = ""
    record: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, reply: list) -> Admission:
        outcome = reply[0]
        if outcome == "ok":
            flat = reply[5:]
            return cls("ok", reply[1], int(reply[2]), backend=reply[3], model=reply[4],
                       record=dict(zip(flat[0::2], flat[1::2])))
        if outcome == "wait":
            return cls("wait", wait_ms=max(0, int(reply[1])))
        return cls(outcome)


def level_range(level: int) -> tuple[int, int]:
    """The scores of one priority level, for counting the waiting jobs of each."""
    return level * LEVEL_SPAN, (level + 1) * LEVEL_SPAN - 1
