"""Following a door's job: its events in order, keep-alives while it waits, and a cancel when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.requests import HTTPConnection

from tasks import aio
from tasks.fold import JobState
from tasks.identities import Identity
from tasks.store import JobError, Submitted, async_store, validate_text
from ui import api, bus

KEEPALIVE_SECONDS = 5.0
DISCONNECT_POLL_SECONDS = 0.25


@dataclass
class Event:
    """What a door translates: ``token`` / ``think`` (text), ``waiting`` (a keep-alive while the job waits, with
    its position), ``restart`` (the answer starts over: an attempt failed after text was sent), ``done`` (the
    ended job)."""

    kind: str
    text: str = ""
    job: JobState | None = None


class DoorMessages:
    """Validation of the chat a door's client sends, into plain {role, content} messages."""

    ROLES = ("system", "user", "assistant")

    @staticmethod
    def parse(raw: object, limit_chars: int) -> tuple[list[dict], str]:
        """(messages, the last user message); JobError 422 with a person's sentence otherwise."""
        if not isinstance(raw, list) or not raw:
            raise JobError("invalid_request", "messages: give at least one message.")
        messages, total = [], 0
        for index, message in enumerate(raw):
            if not isinstance(message, dict) or message.get("role") not in DoorMessages.ROLES:
                raise JobError("invalid_request", f"messages[{index}]: a message needs a role (system, user or "
                               "assistant) and a content.")
            content = message.get("content")
            if isinstance(content, list):  # OpenAI's parts: text only
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise JobError("invalid_request", f"messages[{index}]: only text content is supported.")
                content = "".join(part["text"] for part in content)
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise JobError("invalid_request", f"messages[{index}]: content must be text.")
            validate_text(content, f"messages[{index}] content")  # every message goes to Redis, not just the last
            total += len(content)
            messages.append({"role": message["role"], "content": content})
        if total > limit_chars:
            raise JobError("message_too_long", f"The messages have {total} characters; the limit is {limit_chars}.",
                           limit=limit_chars, length=total)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if not last_user.strip():
            raise JobError("empty_message", "The last user message is empty.")
        return messages, last_user


async def submit(who: Identity, request: HTTPConnection, messages: list[dict], prompt: str, model: str | None,
                 options: dict | None) -> Submitted:
    """A door job for ``who``: priority from ``X-Queue-Priority`` (within their ceiling), default normal."""
    priority = request.headers.get("x-queue-priority", "normal").strip().lower()
    return await api.submit(who, prompt, priority=priority, model=model, kind="door", messages=messages,
                            options=options or None)


async def events(job_id: str, request: Request, watch_client: bool = False) -> AsyncIterator[Event]:
    """The job's events until it ends. If the client goes away (or the consumer stops early), the job is
    cancelled: its slot is free within a second. A streaming response is cancelled by Starlette when its client
    leaves; a plain one asks for ``watch_client`` (a task listens for the client's disconnect meanwhile)."""
    changes: asyncio.Queue[list] = asyncio.Queue()
    left = asyncio.Event()
    watcher = asyncio.create_task(_listen_for_disconnect(request, left)) if watch_client else None
    ended, sent_text, shown = False, False, None
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        # Inside the try: a client that leaves while the job is looked up still cancels it.
        job = await bus.follow(job_id, changes.put_nowait, after="0-0")
        if job is None:
            return
        while True:
            try:
                entries = await asyncio.wait_for(changes.get(), DISCONNECT_POLL_SECONDS)
            except TimeoutError:
                entries = []  # nothing new; an empty list also comes when only the position or ETA moved
            if left.is_set():
                return
            for _, entry in entries:
                kind = entry.get("k")
                if kind in ("token", "think") and entry.get("d"):
                    sent_text, quiet_since = True, loop.time()
                    yield Event(kind, entry["d"])
                elif kind == "reset" and sent_text:
                    yield Event("restart")
                elif kind == "done":
                    ended = True
                    yield Event("done", job=await async_store().job(job_id))
                    return
            # While it waits: its position at once and whenever it moves, else a keep-alive every few seconds
            # (counted from what was sent, not from what was heard: ETA updates must not starve the keep-alive).
            if job.waiting and (job.position != shown or loop.time() - quiet_since >= KEEPALIVE_SECONDS):
                shown, quiet_since = job.position, loop.time()
                yield Event("waiting", job=job)
    finally:
        if watcher is not None:
            watcher.cancel()
        bus.unfollow(job_id, changes.put_nowait)
        if not ended:  # in a task of its own: this one may be in a cancelled scope (its client left)
            with contextlib.suppress(Exception):
                await aio.finish(async_store().cancel(job_id))


async def _listen_for_disconnect(request: Request, left: asyncio.Event) -> None:
    """Set ``left`` when the client goes away, by waiting on the request's receive channel (the body is read by
    then: a disconnect is all that can come), as Starlette's streaming responses do. Not
    ``Request.is_disconnected()``: it polls with a cancelled scope, and under a BaseHTTPMiddleware (NiceGUI's, which
    the doors skip now: ui/fastpath.py) that poll lost the disconnect message, so a client that left was never
    noticed and its job ran on."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    left.set()


async def outcome(job_id: str, request: Request) -> JobState | None:
    """For a plain (not streamed) door request: the ended job, with its stored answer — or None when the client
    left first (its job is cancelled then)."""
    async for event in events(job_id, request, watch_client=True):
        if event.kind == "done":
            return event.job
    return None
