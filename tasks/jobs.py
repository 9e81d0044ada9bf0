"""Job records, conversations and history: what a job is, how it is submitted, read and cancelled.

A job lives in the hash ``qc:job:{id}``; its streamed output in the Stream ``qc:stream:{id}``, whose
entries are ``k`` (status | reset | token | think | done), ``d`` (text or a JSON snapshot) and ``a`` (the
epoch that wrote it). Entry ids double as SSE event ids. Ids are 128 random bits: knowing one is the
permission to read it, and nothing lists another user's ids.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from tasks import metrics, queue
from tasks.broker import send_tickets
from tasks.connection import KEY_PREFIX, get_redis
from tasks.settings import settings

CONVERSATION_OWNERS = KEY_PREFIX + "conversation_owners"
KINDS = ("chat", "suggest")


class JobError(Exception):
    """A request we refuse, with a code the UI translates and an HTTP status the API answers with."""

    def __init__(self, code: str, message: str, status: int = 422, **params) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.params = code, message, status, params


@dataclass(frozen=True)
class Submitted:
    job_id: str
    conversation_id: str | None
    position: int


def conversation_key(conversation_id: str) -> str:
    return f"{KEY_PREFIX}conv:{conversation_id}"


def history_key(user: str) -> str:
    return f"{KEY_PREFIX}history:{user}"


def conversations_key(user: str) -> str:
    return f"{KEY_PREFIX}convs:{user}"


def new_id() -> str:
    return secrets.token_hex(16)


def submit(message: str, *, user: str, priority: str = "normal", model: str | None = None,
           conversation_id: str | None = None, kind: str = "chat", lang: str = "en") -> Submitted:
    """Validate, record and enqueue one job in a single atomic step; then send its ticket."""
    message = validate_message(message)
    validate_priority(priority)
    client = get_redis()
    if kind == "chat":
        conversation_id = conversation_id or new_id()
        check_conversation_owner(conversation_id, user, allow_new=True)
    else:
        conversation_id = None
    job_id = new_id()
    fields = {"id": job_id, "kind": kind, "user": user, "priority": priority, "prompt": message,
              "model": model or settings.ollama_model, "lang": lang, "conversation_id": conversation_id or ""}
    keys = [queue.job_key(job_id), queue.WAITING, queue.SEQ, queue.TOTALS, conversation_key(conversation_id or "-"),
            history_key(user), conversations_key(user), CONVERSATION_OWNERS]
    args = [job_id, settings.queue_max_waiting, queue.PRIORITY_LEVELS[priority], settings.history_size,
            conversation_id or "", user, *[x for kv in fields.items() for x in kv]]
    accepted, position = queue.Scripts(client).submit(keys=keys, args=args)
    if not accepted:
        raise JobError("queue_full", f"The queue is full ({settings.queue_max_waiting} jobs waiting): "
                       "try again in a minute.", status=429, limit=settings.queue_max_waiting)
    send_tickets(1)
    return Submitted(job_id, conversation_id, int(position))


def validate_message(message: object) -> str:
    if not isinstance(message, str) or not message.strip():
        raise JobError("empty_message", "The message is empty: type a question first.")
    if len(message) > settings.max_prompt_chars:
        raise JobError("message_too_long", f"The message has {len(message)} characters; the limit is "
                       f"{settings.max_prompt_chars}.", limit=settings.max_prompt_chars, length=len(message))
    return message


def validate_priority(priority: object) -> None:
    if priority not in queue.PRIORITY_LEVELS:
        raise JobError("bad_priority", f"Unknown priority {priority!r}: use high, normal or low.")


def check_conversation_owner(conversation_id: str, user: str, *, allow_new: bool = False) -> None:
    owner = get_redis().hget(CONVERSATION_OWNERS, conversation_id)
    if owner == user or (owner is None and allow_new and _looks_like_id(conversation_id)):
        return
    raise JobError("conversation_not_found", "No such conversation.", status=404)


def _looks_like_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def cancel(job_id: str) -> str:
    """Cancel a job: 'cancelled' (it was waiting), 'cancelling' (its worker stops it), 'final' or 'missing'."""
    client = get_redis()
    keys = [queue.job_key(job_id), queue.WAITING, queue.DELAYED, queue.LEASES]
    outcome = queue.Scripts(client).cancel(keys=keys, args=[job_id])
    if outcome == "cancelled":  # ended here; a running job is counted by the worker that stops it
        metrics.record_finish(client.hgetall(queue.job_key(job_id)))
    return outcome


# --- reading ------------------------------------------------------------------------------------------

def get_raw(job_id: str) -> dict | None:
    raw = get_redis().hgetall(queue.job_key(job_id))
    return raw or None


def get_job(job_id: str) -> dict | None:
    """The public JSON of a job (the API contract), with its live position and answer so far."""
    raw = get_raw(job_id)
    if raw is None:
        return None
    answer, thinking = (raw.get("answer", ""), raw.get("thinking", "")) if raw["status"] in queue.TERMINAL \
        else answer_so_far(job_id)
    return public_job(raw, answer=answer, thinking=thinking,
                      position=queue.position(get_redis(), job_id) if raw["status"] == "queued" else None)


def public_job(raw: dict, *, answer: str | None = None, thinking: str = "", position: int | None = None,
               snapshot: dict | None = None) -> dict:
    """Shape a job hash (optionally overlaid with a stream snapshot) the way the API promises."""
    state = {**raw, **(snapshot or {})}
    body = {
        "job_id": raw["id"], "kind": raw.get("kind", "chat"), "conversation_id": raw.get("conversation_id") or None,
        "status": state["status"], "phase": state.get("phase"), "priority": raw["priority"],
        "position": position if state["status"] == "queued" else None,
        "eta_seconds": None, "progress": int(float(state.get("progress") or 0)),
        "error": state.get("error") or None, "error_code": state.get("error_code") or None, "attempts": int(state.get("attempts") or 0),
        "model": raw.get("model"), "prompt": raw.get("prompt", ""),
        "created_at": _iso(raw.get("created_at")), "started_at": _iso(raw.get("started_at")),
        "finished_at": _iso(raw.get("finished_at")), "first_token_at": _iso(raw.get("first_token_at")),
    }
    if answer is not None:
        body["answer"], body["thinking"] = answer, thinking
    return body


def _iso(ms: str | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def read_stream(job_id: str, after: str = "-", count: int | None = None) -> list[tuple[str, dict]]:
    """Stream entries after an entry id (exclusive), oldest first."""
    start = "-" if after in ("-", "0", "") else "(" + after
    return get_redis().xrange(queue.stream_key(job_id), min=start, count=count)


def answer_so_far(job_id: str) -> tuple[str, str]:
    """(answer, thinking) of the current attempt: the text after the last reset."""
    return fold_entries(read_stream(job_id))


def fold_entries(entries: list[tuple[str, dict]]) -> tuple[str, str]:
    answer: list[str] = []
    thinking: list[str] = []
    for _, entry in entries:
        kind = entry.get("k")
        if kind == "reset":
            answer, thinking = [], []
        elif kind == "token":
            answer.append(entry.get("d", ""))
        elif kind == "think":
            thinking.append(entry.get("d", ""))
    return "".join(answer), "".join(thinking)


def snapshot_of(entry: dict) -> dict:
    return json.loads(entry["d"]) if entry.get("k") in ("status", "done") else {}


# --- conversations and history ----------------------------------------------------------------------

def conversation_jobs(conversation_id: str) -> list[dict]:
    """The raw job hashes of a conversation, oldest first."""
    client = get_redis()
    ids = client.lrange(conversation_key(conversation_id), 0, -1)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(queue.job_key(job_id))
    return [raw for raw in pipe.execute() if raw]


def context_messages(raw: dict) -> list[dict]:
    """The chat messages sent to the LLM: earlier completed turns of the conversation, then this prompt."""
    messages: list[dict] = []
    if raw.get("conversation_id"):
        earlier = []
        for turn in conversation_jobs(raw["conversation_id"]):
            if turn["id"] == raw["id"]:
                break
            if turn.get("status") == "completed":
                earlier.append(turn)
        for turn in earlier[-settings.context_turns:] if settings.context_turns else []:
            messages += [{"role": "user", "content": turn["prompt"]},
                         {"role": "assistant", "content": turn.get("answer", "")}]
    messages.append({"role": "user", "content": raw["prompt"]})
    return messages


def list_conversations(user: str, limit: int = 100) -> list[dict]:
    """This user's conversations, most recently active first: id, title (first prompt), updated_at."""
    client = get_redis()
    items = client.zrevrange(conversations_key(user), 0, limit - 1, withscores=True)
    pipe = client.pipeline(transaction=False)
    for conversation_id, _ in items:
        pipe.lindex(conversation_key(conversation_id), 0)
    first_ids = pipe.execute()
    for first in first_ids:
        pipe.hget(queue.job_key(first or "-"), "prompt")
    titles = pipe.execute()
    return [{"id": cid, "title": (title or "").strip()[:80], "updated_at": _iso(str(int(score)))}
            for (cid, score), title in zip(items, titles)]


def history(user: str, limit: int | None = None) -> list[dict]:
    """This user's last tasks (newest first) as public job dicts without their answers."""
    client = get_redis()
    ids = client.lrange(history_key(user), 0, (limit or settings.history_size) - 1)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(queue.job_key(job_id))
    return [public_job(raw) for raw in pipe.execute() if raw]
