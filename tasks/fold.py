"""The one fold from a job's stream to its state, used by the worker, the pages and the SSE API alike.

A job's stream (``stream:{id}``) holds every change of the job in order: ``status`` and ``done`` entries carry a
JSON snapshot of the record's changing fields, ``token`` and ``think`` entries carry text, a ``reset`` starts a new
attempt's answer afresh (its ``a``, the epoch, is the attempt's). Entry ids are increasing and double as SSE event
ids, so whoever folds can resume after the last id it saw. :class:`JobState` starts from a job's record (the
hash) and folds entries into it; the public JSON of a job (the HTTP API's contract) is :meth:`JobState.public`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class JobState:
    """What is known of one job: its record, overlaid with the stream entries folded so far."""

    job_id: str
    kind: str = "chat"
    user: str = ""
    priority: str = "normal"
    model: str = ""
    prompt: str = ""
    conversation_id: str | None = None
    lang: str = "en"
    status: str = "queued"
    phase: str = "queued"
    progress: int = 0
    attempts: int = 0
    error: str | None = None
    error_code: str | None = None
    cancelling: bool = False
    retry_at: int | None = None          # ms: a job backing off starts again no sooner
    done_reason: str | None = None       # 'stop', or 'length' when the answer was cut at its length limit
    answer: str = ""
    thinking: str = ""
    created_at: int | None = None        # ms since the epoch, the Redis clock
    started_at: int | None = None
    first_token_at: int | None = None
    finished_at: int | None = None
    position: int | None = None          # jobs ahead in line while waiting (set by the reader, not the stream)
    eta_seconds: int | None = None
    blocked: str | None = None           # why a waiting job can't start: 'no_backend' | 'backend_down'
    backend: str | None = None           # the LLM server of the latest attempt
    cursor: str | None = None            # id of the last stream entry folded in
    read_at: int | None = None           # ms, the Redis clock when the record was read
    record: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, raw: dict, position: int | None = None) -> JobState:
        """The state a job's hash describes; for a finished job that includes its stored answer."""
        state = cls(
            job_id=raw["id"], kind=raw.get("kind", "chat"), user=raw.get("user", ""),
            priority=raw.get("priority", "normal"), model=raw.get("model", ""), prompt=raw.get("prompt", ""),
            conversation_id=raw.get("conversation_id") or None, lang=raw.get("lang", "en"),
            created_at=_int(raw.get("created_at")), started_at=_int(raw.get("started_at")),
            first_token_at=_int(raw.get("first_token_at")), finished_at=_int(raw.get("finished_at")),
            record=raw)
        state._snapshot(raw)
        if state.finished:
            state.answer, state.thinking = raw.get("answer", ""), raw.get("thinking", "")
        state.position = position if state.waiting else None
        return state

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def waiting(self) -> bool:
        return self.status in ("queued", "retrying")

    def apply(self, entries: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
        """Fold ``entries`` (``(id, fields)`` in stream order) newer than the cursor; return those folded."""
        applied = []
        for entry_id, entry in entries:
            if not newer(entry_id, self.cursor):
                continue
            self.cursor = entry_id
            kind = entry.get("k")
            if kind == "reset":
                self.answer, self.thinking = "", ""
            elif kind == "token":
                self.answer += entry.get("d", "")
            elif kind == "think":
                self.thinking += entry.get("d", "")
            elif kind in ("status", "done"):
                self._snapshot(json.loads(entry.get("d") or "{}"))
            applied.append((entry_id, entry))
        return applied

    def _snapshot(self, data: dict) -> None:
        """The changing fields, from a record (strings) or a stream snapshot (JSON values) alike."""
        self.status = data.get("status") or self.status
        self.phase = data.get("phase") or self.phase
        self.progress = int(float(data.get("progress") or 0))
        self.attempts = int(data.get("attempts") or 0)
        self.error = data.get("error") or None
        self.error_code = data.get("error_code") or None
        self.cancelling = data.get("cancel") in (True, "1") and not self.finished
        self.retry_at = _int(data.get("retry_at")) if self.status == "retrying" else None
        self.done_reason = data.get("done_reason") or None
        self.backend = data.get("backend") or self.backend
        self.priority = data.get("priority") or self.priority
        if not self.waiting:
            self.position = self.eta_seconds = self.blocked = None

    def retry_in(self, now_ms: int) -> int | None:
        """Whole seconds until a job backing off may start again (None when it is not backing off)."""
        if self.retry_at is None:
            return None
        return max(0, -(-(self.retry_at - now_ms) // 1000))

    def public(self, *, now_ms: int | None = None, with_answer: bool = True) -> dict:
        """The job as the HTTP API promises it (docs: README, "HTTP API")."""
        body = {
            "job_id": self.job_id, "kind": self.kind, "conversation_id": self.conversation_id,
            "status": self.status, "phase": self.phase, "priority": self.priority,
            "position": self.position, "eta_seconds": self.eta_seconds,
            "retry_in_seconds": self.retry_in(now_ms or self.read_at or 0) if self.retry_at else None,
            "progress": self.progress, "error": self.error, "error_code": self.error_code,
            "attempts": self.attempts, "cancelling": self.cancelling, "done_reason": self.done_reason,
            "blocked": self.blocked, "backend": self.backend,
            "model": self.model, "prompt": self.prompt,
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "first_token_at": iso(self.first_token_at),
        }
        if with_answer:
            body["answer"], body["thinking"] = self.answer, self.thinking
        return body


def newer(entry_id: str, cursor: str | None) -> bool:
    """Whether stream entry ``entry_id`` comes after ``cursor`` (None = before everything)."""
    return cursor is None or entry_key(entry_id) > entry_key(cursor)


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ('1700000000000-3') as a comparable pair; anything malformed sorts first."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _int(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
