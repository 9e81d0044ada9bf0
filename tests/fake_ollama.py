"""A scriptable fake Ollama server that speaks Ollama's HTTP protocol on loopback.

Why a real server instead of mocks: the code under test talks to Ollama over
HTTP with streaming NDJSON, timeouts, cancellation and retries.  Those paths
only get exercised honestly when real sockets are involved, so this module
runs a small Starlette app under uvicorn and lets tests decide, request by
request, how the "model" behaves (slow, broken, hanging, failing, ...).

Two ways to use it:

* In-process (tests)::

      with FakeOllama() as fake:
          fake.script(Reply(text="Hello world", token_delay=0.01))
          ...  # point the app at fake.url

* Standalone (an app under test in another process, or a demo)::

      python tests/fake_ollama.py --port 11434 [--token-delay 0.05] [--script-file s.json]

  and script it over HTTP through the ``/_fake/*`` control endpoints.

Scripting model: every ``POST /api/chat`` consumes one queued ``Reply``
(FIFO).  When the queue is empty the default behaviour applies, which echoes
``You said: <last user message>`` so that tests get deterministic output.

This file deliberately has no pytest dependency: the demo imports it too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

DEFAULT_MODELS: tuple[str, ...] = ("qwen3:latest", "llama3.2:latest")
FAKE_VERSION = "0.0.0-fake"

_TOKENS_MARKER = re.compile(r"\[\[tokens=(\d+)\]\]")
_DELAY_MARKER = re.compile(r"\[\[delay=(\d+(?:\.\d*)?|\.\d+)\]\]")
_WORD = re.compile(r"\s*\S+|\s+")
_NDJSON = "application/x-ndjson"
_MALFORMED_LINE = b'{"broken\n'


# --------------------------------------------------------------------------- #
# Behaviours
# --------------------------------------------------------------------------- #


def split_words(text: str) -> list[str]:
    """Split text into word tokens that keep their leading whitespace.

    Joining the tokens gives back the exact text, which is what a client
    reassembling a stream should see: "Hello world" -> ["Hello", " world"].
    """
    return _WORD.findall(text)


@dataclass
class Reply:
    """How the fake answers one /api/chat request.

    Fault positions (``malformed_after``, ``hang_after``, ``disconnect_after``)
    count streamed message chunks, thinking chunks included; ``0`` means
    "before the first chunk".  When several are set, the earliest position
    wins; on a tie the order is malformed, disconnect, hang.
    """

    tokens: list[str] | None = None
    """Content tokens; when None they are derived from ``text``."""
    text: str = ""
    thinking: list[str] = field(default_factory=list)
    """Thinking tokens, streamed (as ``message.thinking``) before content."""
    token_delay: float | None = None
    """Seconds between chunks; None means the server-wide default."""
    first_token_delay: float = 0.0
    status: int = 200
    error: str = ""
    """Error message for a non-200 ``status`` (sent as ``{"error": ...}``)."""
    malformed_after: int | None = None
    """After N chunks send a line that is not JSON, then end the response."""
    hang_after: int | None = None
    """After N chunks go silent until the client leaves or the server stops."""
    disconnect_after: int | None = None
    """After N chunks drop the connection without a final done line."""
    done_reason: str = "stop"

    def __post_init__(self) -> None:
        """Validate eagerly so a bad script fails where it is written, not mid-test."""
        if self.tokens is not None:
            self.tokens = _str_list(self.tokens, "tokens")
        self.thinking = _str_list(self.thinking, "thinking")
        if not isinstance(self.text, str):
            raise TypeError("text must be a string")
        if not isinstance(self.status, int) or not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        for name in ("token_delay", "first_token_delay"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("malformed_after", "hang_after", "disconnect_after"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    @classmethod
    def from_dict(cls, data: Any) -> Reply:
        """Build a Reply from JSON (HTTP control, script files); reject unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(f"a reply must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Reply field(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def content_tokens(self) -> list[str]:
        return list(self.tokens) if self.tokens is not None else split_words(self.text)


def _str_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise TypeError(f"{name} must be a list of strings")
    return list(value)


def _as_reply(behaviour: Reply | dict[str, Any]) -> Reply:
    return behaviour if isinstance(behaviour, Reply) else Reply.from_dict(behaviour)


def echo_reply(body: dict[str, Any]) -> Reply:
    """The unscripted behaviour: deterministic output derived from the request.

    ``[[tokens=N]]`` in the last user message asks for N tokens "t0 t1 ..."
    (handy for load tests), ``[[delay=S]]`` sets the per-token delay.
    """
    last = _last_user_content(body)
    delay_match = _DELAY_MARKER.search(last)
    delay = float(delay_match.group(1)) if delay_match else None
    tokens_match = _TOKENS_MARKER.search(last)
    if tokens_match:
        count = int(tokens_match.group(1))
        tokens = [f"t{i}" if i == 0 else f" t{i}" for i in range(count)]
        return Reply(tokens=tokens, token_delay=delay)
    return Reply(text=f"You said: {last}", token_delay=delay)


def _last_user_content(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


# --------------------------------------------------------------------------- #
# Shared state (touched from the test thread and the server thread)
# --------------------------------------------------------------------------- #


def canonical_model(name: str) -> str:
    """Ollama treats "qwen3" and "qwen3:latest" as the same model."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class _State:
    """Everything scriptable, behind one lock so Python and HTTP control agree."""

    def __init__(self, models: Iterable[str], loaded: Iterable[str], token_delay: float) -> None:
        self._lock = threading.Lock()
        self._initial_models = [canonical_model(m) for m in models]
        self._initial_loaded = [canonical_model(m) for m in loaded]
        self._initial_token_delay = token_delay
        self.stopping: anyio.Event | None = None  # created inside the server's event loop
        self.active = 0
        self._restore()

    def _restore(self) -> None:
        """Back to construction-time settings (caller holds the lock or is __init__)."""
        self.token_delay = self._initial_token_delay
        self.models = list(self._initial_models)
        self.loaded = [m for m in self._initial_loaded if m in self.models]
        self.queue: deque[Reply] = deque()
        self.default: Reply | None = None
        self.requests: list[dict[str, Any]] = []
        self.max_active = self.active  # streams still in flight keep counting
        self.cancelled = 0

    def reset(self) -> None:
        with self._lock:
            self._restore()

    def script(self, replies: Iterable[Reply]) -> None:
        with self._lock:
            self.queue.extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        with self._lock:
            self.default = reply

    def set_models(self, names: Iterable[str]) -> None:
        with self._lock:
            self.models = [canonical_model(n) for n in names]
            self.loaded = [m for m in self.loaded if m in self.models]

    def set_loaded(self, names: Iterable[str]) -> None:
        with self._lock:
            self.loaded = [canonical_model(n) for n in names]

    def record_request(self, body: Any) -> None:
        with self._lock:
            self.requests.append(copy.deepcopy(body))

    def has_model(self, name: str) -> bool:
        with self._lock:
            return canonical_model(name) in self.models

    def mark_loaded(self, name: str) -> None:
        with self._lock:
            if canonical_model(name) not in self.loaded:
                self.loaded.append(canonical_model(name))

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
            if self.default is not None:
                return copy.deepcopy(self.default)
        return echo_reply(body)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1

    def count_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": copy.deepcopy(self.requests),
                "active": self.active,
                "max_active": self.max_active,
                "cancelled": self.cancelled,
                "queued": len(self.queue),
                "models": list(self.models),
                "loaded": list(self.loaded),
            }


# --------------------------------------------------------------------------- #
# /api/chat
# --------------------------------------------------------------------------- #


class _AbruptDisconnect(Exception):
    """Raised after the response started: uvicorn then drops the connection.

    ASGI has no "close the socket" message; an exception after the headers is
    the portable way to make the server cut the stream mid-body.
    """


class _QuietAbruptDisconnect(logging.Filter):
    """Keep the deliberate disconnects out of the logs (they are not bugs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _AbruptDisconnect)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietAbruptDisconnect) for f in logger.filters):
        logger.addFilter(_QuietAbruptDisconnect())


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class _Outcome:
    done_sent: bool = False
    client_gone: bool = False
    abort: bool = False


class _ChatResponse:
    """ASGI response for one chat: plays a Reply while watching for disconnects.

    Starlette's StreamingResponse only notices a vanished client when a write
    fails, which never happens while a reply is deliberately hanging.  So the
    reply runs next to a task that waits for ``http.disconnect`` and cancels it.
    """

    def __init__(self, state: _State, body: dict[str, Any], reply: Reply) -> None:
        self.state = state
        self.body = body
        self.reply = reply
        self.model = body["model"]
        self.stream = body.get("stream", True) is not False
        self.delay = reply.token_delay if reply.token_delay is not None else state.token_delay
        self.chunks, self.done_reason = self._plan()
        self.started = time.perf_counter_ns()

    def _plan(self) -> tuple[list[tuple[str, str]], str]:
        """Chunks to send as (field, token), honouring ``think`` and ``num_predict``."""
        thinking = [] if self.body.get("think") is False else self.reply.thinking
        chunks = [("thinking", t) for t in thinking]
        chunks += [("content", t) for t in self.reply.content_tokens()]
        options = self.body.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
        if isinstance(limit, int) and 0 <= limit < len(chunks):
            return chunks[:limit], "length"
        return chunks, self.reply.done_reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = _Outcome()
        with self.state.in_flight():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, receive, tg.cancel_scope, outcome)
                await self._respond(send, outcome)
                tg.cancel_scope.cancel()
            if outcome.client_gone and not outcome.done_sent:
                self.state.count_cancelled()
        if outcome.abort:
            raise _AbruptDisconnect()

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope, outcome: _Outcome) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        outcome.client_gone = True
        scope.cancel()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up early when the server is stopping."""
        if seconds > 0 and self.state.stopping is not None:
            with anyio.move_on_after(seconds):
                await self.state.stopping.wait()

    async def _hang(self) -> None:
        """Go silent until the server stops (a client disconnect cancels us first)."""
        if self.state.stopping is not None:
            await self.state.stopping.wait()

    async def _respond(self, send: Send, outcome: _Outcome) -> None:
        await self._pause(self.reply.first_token_delay)
        if self.reply.status != 200:
            error = self.reply.error or f"scripted error (HTTP {self.reply.status})"
            await _send_whole(send, self.reply.status, {"error": error})
            outcome.done_sent = True
            return
        self.state.mark_loaded(self.model)
        if self.stream:
            await self._stream(send, outcome)
        else:
            await self._whole(send, outcome)

    async def _stream(self, send: Send, outcome: _Outcome) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _headers(_NDJSON)})
        for index, (kind, token) in enumerate(self.chunks):
            if await self._fault(index, send, outcome):
                return
            await self._pause(self.delay if index else 0)
            await _send_line(send, self._chunk(kind, token))
        if await self._fault(len(self.chunks), send, outcome):
            return
        await self._pause(self.delay if self.chunks else 0)
        await _send_line(send, self._final({"role": "assistant", "content": ""}))
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        outcome.done_sent = True

    async def _fault(self, sent: int, send: Send, outcome: _Outcome) -> bool:
        """Apply a scripted fault due after ``sent`` chunks; True ends the stream."""
        reply = self.reply
        if reply.malformed_after == sent:
            await send({"type": "http.response.body", "body": _MALFORMED_LINE, "more_body": False})
            return True
        if reply.disconnect_after == sent:
            outcome.abort = True
            return True
        if reply.hang_after == sent:
            await self._hang()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        return False

    async def _whole(self, send: Send, outcome: _Outcome) -> None:
        """stream=false: one JSON object; faults apply to the response as a whole."""
        reply = self.reply
        if reply.hang_after is not None:
            await self._hang()
            await _send_whole(send, 503, {"error": "fake ollama is shutting down"})
            return
        if reply.disconnect_after is not None:
            await send({"type": "http.response.start", "status": 200, "headers": _headers("application/json")})
            outcome.abort = True
            return
        if reply.malformed_after is not None:
            await _send_raw(send, 200, "application/json", _MALFORMED_LINE.strip())
            return
        await self._pause(self.delay * len(self.chunks))
        message = {"role": "assistant", "content": "".join(t for k, t in self.chunks if k == "content")}
        thinking = "".join(t for k, t in self.chunks if k == "thinking")
        if thinking:
            message["thinking"] = thinking
        await _send_whole(send, 200, self._final(message))
        outcome.done_sent = True

    def _chunk(self, kind: str, token: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": token if kind == "content" else ""}
        if kind == "thinking":
            message["thinking"] = token
        return {"model": self.model, "created_at": _now_iso(), "message": message, "done": False}

    def _final(self, message: dict[str, Any]) -> dict[str, Any]:
        """The done object, with plausible timings in nanoseconds like real Ollama."""
        total = max(time.perf_counter_ns() - self.started, 1)
        load = min(total // 10, 1_000_000)
        prompt_eval = min(total // 10, 2_000_000)
        messages = self.body.get("messages") or []
        prompt_tokens = sum(
            len(split_words(m.get("content") or "")) for m in messages if isinstance(m, dict)
        )
        return {
            "model": self.model,
            "created_at": _now_iso(),
            "message": message,
            "done": True,
            "done_reason": self.done_reason,
            "total_duration": total,
            "load_duration": load,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_eval,
            "eval_count": len(self.chunks),
            "eval_duration": max(total - load - prompt_eval, 1),
        }


def _headers(content_type: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type.encode())]


async def _send_line(send: Send, obj: dict[str, Any]) -> None:
    await send({"type": "http.response.body", "body": json.dumps(obj).encode() + b"\n", "more_body": True})


async def _send_raw(send: Send, status: int, content_type: str, body: bytes) -> None:
    headers = _headers(content_type) + [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_whole(send: Send, status: int, obj: dict[str, Any]) -> None:
    await _send_raw(send, status, "application/json; charset=utf-8", json.dumps(obj).encode())


# --------------------------------------------------------------------------- #
# The Starlette app
# --------------------------------------------------------------------------- #


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _model_info(name: str) -> dict[str, Any]:
    """A deterministic /api/tags entry; only the shape matters to clients."""
    family = re.sub(r"[\d.]+$", "", name.split(":")[0].rsplit("/", 1)[-1]) or name
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 2_000_000_000,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": "7B",
            "quantization_level": "Q4_K_M",
        },
    }


def _loaded_info(name: str) -> dict[str, Any]:
    info = _model_info(name)
    del info["modified_at"]
    expires = datetime.now(timezone.utc) + timedelta(minutes=5)
    info.update(expires_at=expires.isoformat().replace("+00:00", "Z"), size_vram=info["size"])
    return info


def _json_errors(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Turn bad control input into a 400 instead of a 500 with a traceback."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))

    return wrapper


def _name_list(data: Any) -> list[str]:
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise ValueError("expected a JSON list of model names")
    return data


def build_app(state: _State) -> Starlette:
    """The fake's HTTP surface: Ollama's API plus ``/_fake/*`` control."""

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": FAKE_VERSION})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [_model_info(m) for m in state.snapshot()["models"]]})

    async def ps(request: Request) -> Response:
        return JSONResponse({"models": [_loaded_info(m) for m in state.snapshot()["loaded"]]})

    async def chat(request: Request) -> Response | _ChatResponse:
        try:
            body = await request.json()
        except ValueError as exc:
            return _error(400, f"invalid JSON body: {exc}")
        state.record_request(body)
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "model is required")
        if not state.has_model(model):
            return _error(404, f'model "{model}" not found, try pulling it first')
        return _ChatResponse(state, body, state.next_reply(body))

    @_json_errors
    async def control_script(request: Request) -> Response:
        data = await request.json()
        state.script([Reply.from_dict(d) for d in (data if isinstance(data, list) else [data])])
        return JSONResponse({"queued": state.snapshot()["queued"]})

    async def control_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    @_json_errors
    async def control_default(request: Request) -> Response:
        data = await request.json()
        state.set_default(None if data is None else Reply.from_dict(data))
        return JSONResponse({"ok": True})

    async def control_state(request: Request) -> Response:
        return JSONResponse(state.snapshot())

    @_json_errors
    async def control_models(request: Request) -> Response:
        state.set_models(_name_list(await request.json()))
        return JSONResponse({"ok": True})

    @_json_errors
    async def control_loaded(request: Request) -> Response:
        state.set_loaded(_name_list(await request.json()))
        return JSONResponse({"ok": True})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        state.stopping = anyio.Event()
        yield

    return Starlette(
        routes=[
            Route("/", root, methods=["GET", "HEAD"]),
            Route("/api/version", version),
            Route("/api/tags", tags),
            Route("/api/ps", ps),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/_fake/script", control_script, methods=["POST"]),
            Route("/_fake/reset", control_reset, methods=["POST"]),
            Route("/_fake/default", control_default, methods=["POST"]),
            Route("/_fake/state", control_state),
            Route("/_fake/models", control_models, methods=["POST"]),
            Route("/_fake/loaded", control_loaded, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


# --------------------------------------------------------------------------- #
# Server lifecycle
# --------------------------------------------------------------------------- #


class _Server(uvicorn.Server):
    """uvicorn waits for in-flight responses on shutdown; wake hanging ones first."""

    def __init__(self, config: uvicorn.Config, state: _State) -> None:
        super().__init__(config)
        self.fake_state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.fake_state.stopping is not None:
            self.fake_state.stopping.set()
        await super().shutdown(sockets=sockets)


class FakeOllama:
    """A fake Ollama on a real socket, scriptable from Python or over HTTP."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_delay: float = 0.0,
        models: Iterable[str] = DEFAULT_MODELS,
        loaded: Iterable[str] = (),
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._state = _State(models, loaded, token_delay)
        self.app = build_app(self._state)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------- #

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeOllama is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeOllama is not started")
        return self._port

    def _bind(self, *, log_level: str, quiet: bool) -> socket.socket:
        """Bind the socket ourselves: no free-port race, and the port is known at once.

        The explicit IPPROTO_TCP matters: asyncio only disables Nagle on
        accepted sockets whose proto says TCP, and without that every
        keep-alive response stalls ~40 ms on delayed ACKs.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._requested_port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            loop="asyncio",
            lifespan="on",
            log_level=log_level,
            access_log=not quiet,
            # Embedded: don't reconfigure the host process's logging.
            log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
            timeout_graceful_shutdown=3,
        )
        self._server = _Server(config, self._state)
        _install_log_filter()
        return sock

    def start(self, timeout: float = 10.0) -> FakeOllama:
        """Serve in a background thread; return once the server answers HTTP."""
        if self._thread is not None:
            raise RuntimeError("FakeOllama is already started")
        sock = self._bind(log_level="warning", quiet=True)
        server = self._server
        assert server is not None
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"fake-ollama:{self._port}", daemon=True
        )
        self._thread.start()
        try:
            self._wait_until_answering(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._thread is not None and not self._thread.is_alive():
                raise RuntimeError("fake Ollama server thread died during startup")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.01)
        raise TimeoutError(f"fake Ollama did not answer on {self.url} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down; hanging streams are released so this does not block."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None

    def serve_forever(self) -> None:
        """Run in the foreground (standalone mode); Ctrl-C / SIGTERM stops it."""
        sock = self._bind(log_level="info", quiet=False)
        assert self._server is not None
        self._server.run(sockets=[sock])

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- scripting ---------------------------------------------------------- #

    def script(self, *behaviours: Reply | dict[str, Any]) -> None:
        """Queue behaviours, consumed one per /api/chat request (FIFO)."""
        self._state.script([_as_reply(b) for b in behaviours])

    def set_default(self, behaviour: Reply | dict[str, Any] | None) -> None:
        """Behaviour when nothing is queued; None restores the echo default."""
        self._state.set_default(None if behaviour is None else _as_reply(behaviour))

    def reset(self) -> None:
        """Clear scripts, recorded requests and counters; restore constructor settings."""
        self._state.reset()

    def set_models(self, names: Iterable[str]) -> None:
        """Models that exist (/api/tags); chats with any other model get a 404."""
        self._state.set_models(names)

    def set_loaded(self, names: Iterable[str]) -> None:
        """Models reported by /api/ps (chatting with a model also loads it)."""
        self._state.set_loaded(names)

    # -- observation -------------------------------------------------------- #

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of the /api/chat bodies received so far, in arrival order."""
        return self._state.snapshot()["requests"]

    @property
    def active(self) -> int:
        return self._state.snapshot()["active"]

    @property
    def max_active(self) -> int:
        return self._state.snapshot()["max_active"]

    @property
    def cancelled(self) -> int:
        return self._state.snapshot()["cancelled"]

    @property
    def queued(self) -> int:
        return self._state.snapshot()["queued"]

    @property
    def loaded(self) -> list[str]:
        return self._state.snapshot()["loaded"]

    def state(self) -> dict[str, Any]:
        """Same document as ``GET /_fake/state``."""
        return self._state.snapshot()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``condition``; server-side effects (e.g. noticing a disconnect) are async."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no /api/chat response is in flight."""
        return self.wait_until(lambda: self.active == 0, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` /api/chat requests have arrived."""
        return self.wait_until(lambda: len(self.requests) >= count, timeout)


# --------------------------------------------------------------------------- #
# Standalone entry point
# --------------------------------------------------------------------------- #


def load_script_file(fake: FakeOllama, path: str) -> None:
    """Apply a JSON script file.

    Either a list of Reply objects (queued), or an object with any of
    ``"script"`` (list), ``"default"`` (Reply) and ``"models"`` (names).
    """
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, list):
        data = {"script": data}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON list or object")
    if "models" in data:
        fake.set_models(_name_list(data["models"]))
    if data.get("default") is not None:
        fake.set_default(Reply.from_dict(data["default"]))
    fake.script(*(Reply.from_dict(d) for d in data.get("script", [])))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a scriptable fake Ollama server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--token-delay", type=float, default=0.0, help="default seconds between chunks")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="available model names")
    parser.add_argument("--script-file", help="JSON file with replies to queue (see load_script_file)")
    args = parser.parse_args(argv)
    fake = FakeOllama(args.host, args.port, token_delay=args.token_delay, models=args.models)
    if args.script_file:
        load_script_file(fake, args.script_file)
    # uvicorn re-raises the captured Ctrl-C after its graceful shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        fake.serve_forever()


if __name__ == "__main__":
    main()
