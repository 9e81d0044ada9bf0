"""Every Redis key queuechat owns, in one place (the Lua steps in ``tasks/lua/`` build the same names from the
same prefix). Nothing outside ``tasks/`` names a key: the UI and the API read through :mod:`tasks.store`.

Per job: ``job:{id}`` (hash: the record), ``stream:{id}`` (its changes and tokens, see :mod:`tasks.fold`).
The line: ``waiting`` (zset of every waiting job, score = place in line), ``line:{model}`` (the same, per model or
alias), ``lines`` (set: lines with waiting jobs), ``backoff`` (zset: waiting jobs passed over until their retry
time), ``handover`` (set: jobs that backed off and rejoin their line at the next admission), ``since`` (zset: when each entered its level, for aging), ``leases`` (zset: running jobs by lease expiry),
``slots:{backend}`` (set: its running jobs), ``starts`` and ``starts:{backend}`` (zsets: start-rate windows),
``wake`` (list: a slot freed), ``seq`` (counter). Fair share: ``vclock`` (hash: level -> virtual clock),
``last:{level}`` (hash: user -> tag of their latest waiting job), ``user_waiting`` (hash: user -> jobs waiting).
Identities: ``key:{sha256}`` (hash: an API key's record), ``keys`` (hash: key id -> sha256). Servers: ``backend:{name}`` (hash: health, discovered models, breaker), ``discovery:{name}`` (a lock),
``backend_stats:{name}`` (hash: jobs ended, errors, tokens, generation time), ``backend_errors:{name}`` (list: the
last few errors). People: ``conv:{id}`` (list of job ids), ``conv:{id}:info`` (hash: owner,
title), ``convs:{user}`` (zset of conversations by last activity), ``history:{user}`` (list, capped),
``idem:{user}:{key}`` (an idempotent submit). Figures: ``usage:{hour}`` (hash: jobs and tokens per identity) with ``usage:{hour}:waits``, ``totals`` (hash), ``m:{minute}`` (hash) with samples
``m:{minute}:wait`` and ``m:{minute}:ttft``, ``service_ms`` (recent LLM call times), ``workers`` (heartbeats).
Each app process has ``tail:{process}`` (a stream that wakes its reader). Change notices go out on the channel ``events``. Dramatiq keeps its own keys under ``qc-dramatiq:``.
"""

from __future__ import annotations

PREFIX = "qc:"

WAITING = PREFIX + "waiting"
BACKOFF = PREFIX + "backoff"
LEASES = PREFIX + "leases"
STARTS = PREFIX + "starts"
WAKE = PREFIX + "wake"
SEQ = PREFIX + "seq"
TOTALS = PREFIX + "totals"
SERVICE_TIMES = PREFIX + "service_ms"
WORKERS = PREFIX + "workers"
EVENTS = PREFIX + "events"
PAUSED = PREFIX + "paused"        # exists while an admin holds admission

#: What is published on :data:`EVENTS`: one message per step, these topics one per line (a job's own changes are
#: in its stream, see prelude.lua).
QUEUE_CHANGED = "*queue"          # positions may have moved
USER_CHANGED = "u:"               # + user: their history or conversations changed
CONVERSATION_CHANGED = "c:"       # + conversation id: it got a new job


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def stream(job_id: str) -> str:
    return f"{PREFIX}stream:{job_id}"


def tail_wake(process: str) -> str:
    """A stream an app process reads beside the jobs' streams: adding to it ends that process's blocking read at once,
    so that a job followed meanwhile is read from now, not after the read times out."""
    return f"{PREFIX}tail:{process}"


def conversation(conversation_id: str) -> str:
    return f"{PREFIX}conv:{conversation_id}"


def history(user: str) -> str:
    return f"{PREFIX}history:{user}"


def conversations(user: str) -> str:
    return f"{PREFIX}convs:{user}"


def backend(name: str) -> str:
    return f"{PREFIX}backend:{name}"


def slots(name: str) -> str:
    return f"{PREFIX}slots:{name}"


def backend_stats(name: str) -> str:
    return f"{PREFIX}backend_stats:{name}"


def backend_errors(name: str) -> str:
    return f"{PREFIX}backend_errors:{name}"


API_KEYS = PREFIX + "keys"  # key id -> the sha256 of the key


def api_key(sha256: str) -> str:
    return f"{PREFIX}key:{sha256}"


def usage(hour: int) -> str:
    return f"{PREFIX}usage:{hour}"


def minute(number: int) -> str:
    return f"{PREFIX}m:{number}"


def samples(kind: str, number: int) -> str:
    return f"{PREFIX}m:{number}:{kind}"
