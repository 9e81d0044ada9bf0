"""The job store: every read and write of jobs, conversations and histories that the app, the API and the
workers make — over one Redis client, sync or asyncio.

Each method is one round trip (a Lua step of ``tasks/lua/`` or a pipeline). On a sync client a method returns
its value; on an asyncio client it returns an awaitable of the same value: one implementation, two faces, the
way redis-py's own commands work::

    store = sync_store()                      # the process-wide sync store (FastAPI's thread pool, scripts)
    store = async_store()                     # the store of the running event loop (pages, SSE, workers)
    job = await async_store().job(job_id, user=identity)

Whoever reads on behalf of a person passes ``user``: a job, conversation or history of someone else reads as
missing (the HTTP API turns that into 404), so no caller can forget the check.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from tasks import aio, backends, keys, queue
from tasks.broker import send_tickets
from tasks.connection import get_async_redis, get_redis
from tasks.eta import Clock, eta_seconds
from tasks.fold import JobState
from tasks.settings import settings

CLOCK_SECONDS = 0.5        # the queue's clock (for ETAs) is read at most this often per process
CONVERSATION_TURNS = 500   # the most turns a conversation read returns
LAST_ENTRY_ID = f"{2**64 - 1}-{2**64 - 1}"  # the largest id a stream entry can have


class JobError(Exception):
    """A request we refuse, with a code the UI translates and an HTTP status the API answers with."""

    def __init__(self, code: str, message: str, status: int = 422, **params: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.params = code, message, status, params


@dataclass(frozen=True)
class Submitted:
    job_id: str
    conversation_id: str | None
    position: int
    repeated: bool = False  # an earlier submit with the same idempotency key made this job


def new_id() -> str:
    """128 random bits, as hex: job and conversation ids can't be guessed."""
    return secrets.token_hex(16)


def looks_like_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


class JobStore:
    def __init__(self, client) -> None:
        self.client = client
        self.is_async = isinstance(client, aioredis.Redis)
        self.scripts = queue.Scripts(client)
        self._clocks: dict[str, tuple[float, Clock]] = {}

    # --- writing ----------------------------------------------------------------------------------------

    def submit(self, message: object, *, user: str, priority: object = "normal", model: str | None = None,
               conversation_id: str | None = None, kind: str = "chat", lang: str = "en",
               idempotency_key: str | None = None, options: dict | None = None,
               max_waiting: int | None = None, messages: list[dict] | None = None) -> Submitted:
        """Validate, record and enqueue one job in a single atomic step; then send its ticket.

        ``max_waiting``: how many jobs of ``user`` may wait at once (default QUEUE_MAX_WAITING_PER_USER).
        ``messages`` (kind 'door': a job of the OpenAI or Ollama API): the whole chat to send, as the client gave
        it; ``message`` is then its last user message, shown in the history."""
        message = validate_message(message)
        validate_priority(priority)
        if kind == "chat":
            conversation_id = conversation_id or new_id()
            if not looks_like_id(conversation_id):
                raise JobError("conversation_not_found", "No such conversation.", status=404)
        else:
            conversation_id = None
        job_id = new_id()
        model = model or settings.ollama_model
        for value, what in ((model, "model"), (idempotency_key or "", "Idempotency-Key"), (lang, "language")):
            validate_text(value, what)
        fields = {"kind": kind, "priority": priority, "prompt": message, "model": model, "lang": lang}
        if options:
            fields["options"] = json.dumps(options)
        if messages is not None:
            fields["messages"] = json.dumps(messages, ensure_ascii=False)
        title = " ".join(message.split())[:80]
        limit = max_waiting or settings.queue_max_waiting_per_user
        reply = self.scripts.submit(job_id, queue.PRIORITY_LEVELS[priority], user, model, conversation_id or "",
                                    idempotency_key or "", title, limit, *[x for kv in fields.items() for x in kv])

        def submitted(reply: list) -> Submitted:
            if reply[0] == 0:
                raise refusal(reply[1], limit)
            if reply[0] == 2:
                return Submitted(reply[1], conversation_id, 0, repeated=True)
            return Submitted(reply[1], conversation_id, int(reply[2]))

        return _then(reply, submitted, after=lambda done: None if done.repeated else send_tickets(1))

    def cancel(self, job_id: str, user: str | None = None) -> str:
        """'cancelled' (it was waiting: ended now), 'cancelling' (its worker stops it), 'final' or 'missing'."""
        return self.scripts.cancel(job_id, user or "")

    # --- reading ----------------------------------------------------------------------------------------

    def job(self, job_id: str, user: str | None = None) -> JobState | None:
        """A job with its answer so far and its live position, or None (missing, or not ``user``'s)."""
        if not looks_like_id(job_id):
            return _then(None, lambda _: None, awaitable=self.is_async)

        def state(reply: list | None) -> JobState | None:
            if not reply:
                return None
            flat, position, entries, now, why = reply
            job = JobState.from_record(_pairs(flat))
            job.read_at = int(now)
            job.apply([(entry_id, _pairs(fields)) for entry_id, fields in entries])
            job.position = position if position >= 0 and job.waiting else None
            job.blocked = why or None
            return job

        return _then(self.scripts.read_job(job_id, user or ""), state)

    def stream(self, job_id: str, after: str | None = None, count: int | None = None) -> list[tuple[str, dict]]:
        """A job's stream entries after the entry id ``after`` (exclusive; None = from the start), oldest first."""
        if after == LAST_ENTRY_ID:  # nothing can come after it (and Redis refuses it as an exclusive start)
            return _then([], list, awaitable=self.is_async)
        start = "-" if after in (None, "", "-", "0", "0-0") else "(" + after
        return self.client.xrange(keys.stream(job_id), min=start, count=count)

    def conversation(self, conversation_id: str, user: str) -> list[JobState]:
        """The turns of ``user``'s conversation, oldest first; JobError 404 when it is not theirs (or gone)."""
        if not looks_like_id(conversation_id):
            raise JobError("conversation_not_found", "No such conversation.", status=404)

        def turns(reply: list | bool | None) -> list[JobState]:
            if reply is None or reply is False:
                raise JobError("conversation_not_found", "No such conversation.", status=404)
            return [JobState.from_record(_pairs(flat)) for flat in reply]

        return _then(self.scripts.read_jobs("c:" + conversation_id, user, CONVERSATION_TURNS), turns)

    def history(self, user: str, limit: int | None = None) -> list[JobState]:
        """``user``'s latest jobs, newest first (without their live positions)."""
        return _then(self.scripts.read_jobs("h:" + user, user, limit or settings.history_size),
                     lambda reply: [JobState.from_record(_pairs(flat)) for flat in reply or []])

    def conversations(self, user: str, limit: int = queue.CONVERSATIONS_KEPT) -> list[dict]:
        """``user``'s conversations, most recently active first: ``{id, title, updated_at}``."""
        from tasks.fold import iso

        def listed(flat: list) -> list[dict]:
            return [{"id": flat[i], "title": flat[i + 1], "updated_at": iso(int(flat[i + 2]))}
                    for i in range(0, len(flat), 3)]

        return _then(self.scripts.read_conversations(user, limit), listed)

    def positions(self, job_ids: list[str]) -> dict[str, int | None]:
        """Live positions of several jobs in one round trip (None: not waiting)."""
        return _then(self.places(job_ids), lambda places: {job_id: p for job_id, (p, _) in places.items()})

    def places(self, job_ids: list[str]) -> dict[str, tuple[int | None, str | None]]:
        """(position, why it can't start: None | 'no_backend' | 'backend_down') of several jobs, one round trip."""
        def parse(flat: list) -> dict:
            return {job_id: (None if flat[2 * i] < 0 else flat[2 * i], flat[2 * i + 1] or None)
                    for i, job_id in enumerate(job_ids)}

        if not job_ids:
            return _then({}, lambda places: places, awaitable=self.is_async)
        return _then(self.scripts.read_positions(*job_ids), parse)

    def context(self, record: dict) -> list[dict]:
        """The chat messages for the LLM: the conversation's earlier completed turns, then this prompt (worker);
        or, for a job of an API door, the messages its client sent."""
        if record.get("messages"):
            return _then(json.loads(record["messages"]), lambda messages: messages, awaitable=self.is_async)
        conversation = record.get("conversation_id")

        def messages(turns: list[JobState] | None) -> list[dict]:
            earlier = []
            for turn in turns or []:
                if turn.job_id == record["id"]:
                    break
                if turn.status == "completed":
                    earlier.append(turn)
            out: list[dict] = []
            for turn in earlier[-settings.context_turns:] if settings.context_turns else []:
                out += [{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": turn.answer}]
            return out + [{"role": "user", "content": record["prompt"]}]

        if not conversation or record.get("turn") == "1":  # a conversation's first turn has nothing before it
            return _then(None, messages, awaitable=self.is_async)
        return _then(self.scripts.read_jobs("c:" + conversation, record.get("user", ""), CONVERSATION_TURNS),
                     lambda reply: messages([JobState.from_record(_pairs(f)) for f in reply or []]))

    # --- the queue's clock: estimates of when a waiting job starts ------------------------------------

    def clock(self, line: str = "") -> Clock:
        """The queue's clock for the jobs of one line (a model or alias; '' = all): the slots of the backends
        that serve it, their running calls, recent service times and the rate window. Read at most every
        CLOCK_SECONDS per line."""
        cached = self._clocks.get(line)
        if cached and time.monotonic() - cached[0] < CLOCK_SECONDS:
            return _then(cached[1], lambda clock: clock, awaitable=self.is_async)

        def parse(reply: list) -> Clock:
            now, cap, running, service, starts = reply
            clock = Clock.of(int(now), int(cap), settings.queue_rate_per_min, [int(x) for x in service],
                             [int(x) for x in running], [int(x) for x in starts[1::2]])
            self._clocks[line] = (time.monotonic(), clock)
            return clock

        return _then(self.scripts.read_clock(line), parse)

    def eta(self, position: int | None, line: str = "") -> int | None:
        """Seconds until the job at ``position`` of ``line`` may start (see :mod:`tasks.eta`)."""
        return _then(self.clock(line), lambda clock: eta_seconds(position, clock))

    def backends(self) -> list[dict]:
        """Every configured backend as the queue sees it now, in one round trip: ``name``, ``kind``, ``state``
        ('up', 'down' or 'unknown': not checked yet), ``models`` (None: not known), ``loaded``, ``slots`` (the cap in
        use), ``running``, ``failures`` (in a row), ``trips`` (times the breaker opened), ``down_until`` (ms); and
        its figures: ``completed``, ``failed``, ``errors`` (failed calls), ``tokens`` and ``generation_ms`` (all
        time), ``tokens_per_s`` (over its recent answers; None before the first), ``recent_errors`` (the last few:
        ``at`` ms, ``code``, ``error``)."""
        fleet = backends.fleet()
        pipe = self.client.pipeline(transaction=False)
        for backend in fleet.backends:
            pipe.hgetall(keys.backend(backend.name)).scard(keys.slots(backend.name))
            pipe.hgetall(keys.backend_stats(backend.name)).lrange(keys.backend_errors(backend.name), 0, -1)
        return _then(pipe.execute(), lambda replies: [
            _backend_view(backend, *replies[4 * i:4 * i + 4]) for i, backend in enumerate(fleet.backends)])

    def board(self, limit: int = 200) -> dict:
        """What the admin board shows: whether admission is paused, every running job and the first ``limit``
        waiting ones (owner, priority, model, times, attempts, position — never their text), and how many wait."""
        names = ("job_id", "user", "priority", "model", "status", "created_at", "started_at", "attempts", "backend",
                 "worker")

        def parse(reply: list) -> dict:
            paused, running, waiting, total = reply
            return {"paused": bool(paused), "running": [dict(zip(names, row)) for row in running],
                    "waiting": [{**dict(zip(names, row)), "position": row[10], "retry_at": row[11] or None}
                                for row in waiting], "waiting_total": total}

        return _then(self.scripts.read_board(limit), parse)

    def pause(self, paused: bool) -> None:
        """Hold (or resume) admission: running jobs finish, waiting ones stay in line."""
        if paused:
            return self.client.set(keys.PAUSED, "1")
        pipe = self.client.pipeline(transaction=True)
        # one wake-up per ticket that may be waiting (the list's cap), not one in all: each admits a job at once
        pipe.delete(keys.PAUSED).lpush(keys.WAKE, *["resume"] * 100).ltrim(keys.WAKE, 0, 99)
        pipe.publish(keys.EVENTS, keys.QUEUE_CHANGED)
        return pipe.execute()

    def usage(self, hours: int = 24) -> list[dict]:
        """Per identity over the last ``hours``: jobs ended, tokens written, median wait (ms), most active first.
        (Hour buckets by this host's clock: at the edges a bucket more or less, which the board can live with.)"""
        pipe = self.client.pipeline(transaction=False)
        hour = int(time.time()) // 3600
        for h in range(hour - hours + 1, hour + 1):
            pipe.hgetall(keys.usage(h)).lrange(keys.usage(h) + ":waits", 0, -1)

        def parse(reply: list) -> list[dict]:
            by_user: dict[str, dict] = {}

            def row(user: str) -> dict:
                return by_user.setdefault(user, {"user": user, "jobs": 0, "tokens": 0, "waits": []})

            for counts, waits in zip(reply[0::2], reply[1::2]):
                for field, value in counts.items():
                    what, _, user = field.partition(":")
                    row(user)[what] += int(value)
                for sample in waits:
                    user, _, ms = sample.rpartition("|")
                    row(user)["waits"].append(int(ms))
            rows = []
            for entry in by_user.values():
                waits = sorted(entry.pop("waits"))
                rows.append({**entry, "wait_p50_ms": waits[len(waits) // 2] if waits else None})
            return sorted(rows, key=lambda r: (-r["jobs"], r["user"]))

        return _then(pipe.execute(), parse)

    def reprioritize(self, job_id: str, priority: str) -> bool:
        """Move a waiting job to another level (the admin board); False when it is not waiting."""
        validate_priority(priority)
        return _then(self.scripts.reprioritize(job_id, queue.PRIORITY_LEVELS[priority]), bool)


# --- validation ---------------------------------------------------------------------------------------------

def validate_message(message: object) -> str:
    if not isinstance(message, str) or not message.strip():
        raise JobError("empty_message", "The message is empty: type a question first.")
    validate_text(message, "message")
    if len(message) > settings.max_prompt_chars:
        raise JobError("message_too_long", f"The message has {len(message)} characters; the limit is "
                       f"{settings.max_prompt_chars}.", limit=settings.max_prompt_chars, length=len(message))
    return message


def validate_text(value: str, what: str) -> None:
    """Text that can't be written as UTF-8 (a lone surrogate, as JSON's "\\ud800" decodes to) is refused."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise JobError("bad_text", f"The {what} contains a character that is not valid text "
                       f"(at position {error.start}): remove it and try again.", where=what) from None


def validate_priority(priority: object) -> None:
    if priority not in queue.PRIORITY_LEVELS:
        raise JobError("bad_priority", f"Unknown priority {priority!r}: use high, normal or low.")


def refusal(code: str, waiting_limit: int = 0) -> JobError:
    """The JobError for a refusal code of the submit step."""
    if code == "queue_full":
        return JobError("queue_full", f"The queue is full ({settings.queue_max_waiting} jobs waiting): "
                        "try again in a minute.", status=429, limit=settings.queue_max_waiting)
    if code == "too_many_waiting":
        return JobError("too_many_waiting", f"You already have {waiting_limit} messages waiting, the most one "
                        "person may have: wait for one to start.", status=429, limit=waiting_limit)
    if code == "unknown_model":
        return JobError("unknown_model", "No LLM server offers this model: pick another one.", status=422)
    return JobError("conversation_not_found", "No such conversation.", status=404)


# --- the two faces ------------------------------------------------------------------------------------------

def _then(result: Any, parse: Callable[[Any], Any], after: Callable[[Any], None] | None = None,
          awaitable: bool = False) -> Any:
    """``parse(result)``, now (sync client) or once awaited (asyncio client); then ``after(value)``, a sync
    side effect. The asyncio face runs it in a thread, so that it never blocks the event loop, and does not wait
    for it: the caller's answer need not wait for a thread (a ticket: one never sent is topped up by the janitor
    within a second). ``awaitable``: answer with an awaitable even when ``result`` is already at hand (the asyncio
    face of a cached value)."""
    if awaitable and not inspect.isawaitable(result):
        result = _ready(result)
    if inspect.isawaitable(result):
        async def finish() -> Any:
            value = parse(await result)
            if after is not None:
                aio.detach(asyncio.to_thread(after, value), f"after {parse.__name__}")
            return value
        return finish()
    value = parse(result)
    if after is not None:
        after(value)
    return value


def _backend_view(backend: backends.Backend, raw: dict, running: int, stats: dict, errors: list[str]) -> dict:
    models = list(backend.models) if backend.models else (json.loads(raw["models"]) if raw.get("models") else None)
    recent_ms = float(stats.get("recent_ms") or 0)
    return {"name": backend.name, "kind": backend.kind, "state": raw.get("state", "unknown"), "models": models,
            "loaded": json.loads(raw["loaded"]) if raw.get("loaded") else [],
            "slots": backend.slots or int(raw.get("slots") or 1), "running": running,
            "failures": int(raw.get("failures") or 0), "trips": int(raw.get("trips") or 0),
            "down_until": int(raw.get("down_until") or 0),
            **{name: int(stats.get(name) or 0) for name in ("completed", "failed", "errors", "tokens",
                                                            "generation_ms")},
            "tokens_per_s": round(float(stats["recent_tokens"]) * 1000 / recent_ms, 1) if recent_ms else None,
            "recent_errors": [json.loads(entry) for entry in errors]}


async def _ready(value: Any) -> Any:
    return value


def _pairs(flat: list) -> dict:
    return dict(zip(flat[0::2], flat[1::2]))


_sync: tuple[object, JobStore] | None = None
_async: dict[int, tuple[object, JobStore]] = {}


def sync_store() -> JobStore:
    """The process-wide store on the sync client."""
    global _sync
    client = get_redis()
    if _sync is None or _sync[0] is not client:
        _sync = (client, JobStore(client))
    return _sync[1]


def async_store() -> JobStore:
    """The store of the running event loop (asyncio clients can't cross loops)."""
    client = get_async_redis()
    loop = id(asyncio.get_running_loop())
    cached = _async.get(loop)
    if cached is None or cached[0] is not client:
        cached = _async[loop] = (client, JobStore(client))
    return cached[1]
