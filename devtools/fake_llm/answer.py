"""Playing one :class:`Reply` over HTTP, the same way for every protocol.

A protocol module (``ollama.py``, ``openai.py``) says what a chunk, the end of an answer and an error look like
(a :class:`Format`); :class:`Answer` decides when each is sent: it waits for a slot like a busy server, sleeps
between tokens, plays the scripted fault, and notices a client that leaves — also while nothing is being
written (Starlette's own streaming response only notices when a write fails, never during a hang).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from starlette.types import Receive, Scope, Send

from devtools.fake_llm.reply import Reply, split_words

if TYPE_CHECKING:
    from devtools.fake_llm.server import FakeLLM

BROKEN = b'{"broken'
TOO_DEEP = b"[" * 100_000  # valid as far as it goes; a recursive parser gives up on it (RecursionError, not ValueError)


class Format(ABC):
    """How one protocol writes one answer. ``chunks`` are (kind, text) pairs, kind "thinking" or "content"."""

    media_type = "application/x-ndjson"
    wrong_shape: dict[str, Any] = {}

    def __init__(self, body: dict[str, Any], model: str, reply: Reply, *, limit: Any = None,
                 think: bool = True) -> None:
        self.body, self.model = body, model
        chunks = [("thinking", t) for t in (reply.thinking if think else [])]
        chunks += [("content", t) for t in reply.content_tokens()]
        if isinstance(limit, int) and 0 <= limit < len(chunks):
            chunks, self.done_reason = chunks[:limit], "length"
        else:
            self.done_reason = reply.done_reason
        self.chunks = chunks
        self.started_ns = time.perf_counter_ns()

    def text(self, kind: str) -> str:
        return "".join(text for k, text in self.chunks if k == kind)

    def prompt_tokens(self) -> int:
        messages = self.body.get("messages")
        texts = [m.get("content") for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        texts.append(self.body.get("prompt"))
        return sum(len(split_words(text)) for text in texts if isinstance(text, str))

    def frame(self, payload: bytes) -> bytes:
        """One line of the stream."""
        return payload + b"\n"

    def line(self, obj: dict[str, Any]) -> bytes:
        return self.frame(json.dumps(obj).encode())

    @abstractmethod
    def chunk(self, kind: str, text: str) -> bytes:
        """One streamed piece of the answer."""

    @abstractmethod
    def end(self) -> bytes:
        """What closes a complete stream."""

    @abstractmethod
    def whole(self) -> dict[str, Any]:
        """The answer of a request that did not ask for a stream."""

    @staticmethod
    @abstractmethod
    def error(status: int, message: str) -> dict[str, Any]:
        """The protocol's error body."""


class AbruptDisconnect(Exception):
    """Raised once a response has started: uvicorn then drops the connection (ASGI cannot say "close")."""


class QuietAbruptDisconnects(logging.Filter):
    """Keep the deliberate disconnects out of the logs: they are the script, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], AbruptDisconnect))


@dataclass
class _Outcome:
    finished: bool = False  # the whole answer (or the scripted error) went out
    client_gone: bool = False
    abort: bool = False


GENERATION = "fake_generation"  # in a request's ASGI state: the fake's generation when it came in (_CountHits)


def generation_of(scope: Scope) -> int | None:
    return scope.get("state", {}).get(GENERATION)


class Answer:
    """One response, as an ASGI app."""

    def __init__(self, fake: FakeLLM, fmt: Format, reply: Reply, *, stream: bool) -> None:
        self.fake, self.fmt, self.reply, self.stream = fake, fmt, reply, stream
        self.delay = reply.token_delay if reply.token_delay is not None else fake.token_delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = _Outcome()
        generation = generation_of(scope)
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, receive, group.cancel_scope, outcome)
            await self._serve(send, outcome, generation)
            group.cancel_scope.cancel()
        if outcome.client_gone and not outcome.finished:
            self.fake.count_cancelled(generation)
        if outcome.abort:
            raise AbruptDisconnect

    @staticmethod
    async def _watch(receive: Receive, scope: anyio.CancelScope, outcome: _Outcome) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        outcome.client_gone = True
        scope.cancel()

    async def _serve(self, send: Send, outcome: _Outcome, generation: int | None) -> None:
        reply = self.reply
        async with self.fake.slot(generation) as served:
            if not served:
                if self.fake.crashed:
                    outcome.abort = True
                else:
                    await _send_json(send, 503, self.fmt.error(503, "the fake LLM is stopping"))
                return
            await self.fake.pause(reply.first_token_delay)
            if reply.status != 200:
                message = reply.error or f"scripted error (HTTP {reply.status})"
                await _send_json(send, reply.status, self.fmt.error(reply.status, message))
                outcome.finished = True
                return
            self.fake.mark_loaded(self.fmt.model)
            await (self._stream if self.stream else self._whole)(send, outcome)

    async def _stream(self, send: Send, outcome: _Outcome) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", self.fmt.media_type.encode())]})
        for index, (kind, text) in enumerate(self.fmt.chunks):
            if await self._fault(index, send, outcome):
                return
            await self.fake.pause(self.delay if index else 0)
            if self.fake.crashed:
                outcome.abort = True
                return
            await _body(send, self.fmt.chunk(kind, text))
        if await self._fault(len(self.fmt.chunks), send, outcome):
            return
        await self.fake.pause(self.delay if self.fmt.chunks else 0)
        if self.fake.crashed:
            outcome.abort = True
            return
        await _body(send, self.fmt.end(), more=False)
        outcome.finished = True

    async def _fault(self, sent: int, send: Send, outcome: _Outcome) -> bool:
        """Play the fault due after ``sent`` chunks; True when it ended the response."""
        fault = self.reply.fault_at(sent)
        if fault == "hang":
            if await self.fake.hold():
                return False  # released: the answer goes on
            if self.fake.crashed:
                outcome.abort = True
            else:
                await _body(send, b"", more=False)  # the server is stopping
        elif fault == "disconnect":
            outcome.abort = True
        elif fault == "malformed":
            await _body(send, self.fmt.frame(BROKEN), more=False)
        elif fault == "wrong_shape":
            await _body(send, self.fmt.line(self.fmt.wrong_shape), more=False)
        elif fault == "too_deep":
            await _body(send, self.fmt.frame(TOO_DEEP), more=False)
        return fault is not None

    async def _whole(self, send: Send, outcome: _Outcome) -> None:
        """One JSON document; a fault anywhere in the reply spoils it as a whole."""
        reply = self.reply
        if reply.hang_after is not None and not await self.fake.hold() and not self.fake.crashed:
            await _send_json(send, 503, self.fmt.error(503, "the fake LLM is stopping"))
        elif self.fake.crashed:
            outcome.abort = True
        elif reply.disconnect_after is not None:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            outcome.abort = True
        elif reply.malformed_after is not None:
            await _send_raw(send, 200, BROKEN)
        elif reply.wrong_shape_after is not None:
            await _send_json(send, 200, self.fmt.wrong_shape)
        elif reply.too_deep_after is not None:
            await _send_raw(send, 200, TOO_DEEP)
        else:
            await self.fake.pause(self.delay * len(self.fmt.chunks))
            if self.fake.crashed:
                outcome.abort = True
                return
            await _send_json(send, 200, self.fmt.whole())
            outcome.finished = True


async def _body(send: Send, data: bytes, *, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _send_raw(send: Send, status: int, data: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await _body(send, data, more=False)


async def _send_json(send: Send, status: int, obj: dict[str, Any]) -> None:
    await _send_raw(send, status, json.dumps(obj).encode())
