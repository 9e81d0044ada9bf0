"""The fake LLM server: both protocols on one real socket, scripted from Python.

Why a real server and not mocks: the code under test talks to its LLM over HTTP with streaming, timeouts,
cancellation and retries, and those paths are only exercised honestly over real sockets. The server runs
under uvicorn in a thread of the process that scripts it (or in the foreground: ``python -m devtools.fake_llm``).

Requests are answered in arrival order from the scripted replies, then the default reply, then the echo. With
``slots=N`` at most N answers are served at once and the others wait inside the server, as on a real
llama.cpp or Ollama server that runs on a CPU. What the tests observe: ``requests`` (the bodies received),
``hits`` (requests per path), ``active``, ``max_active``, ``waiting``, ``held`` (answers hanging until
:meth:`release`) and ``cancelled`` (clients that left before the end of an answer). :meth:`stop` lets the
answers in flight end (the rest of their tokens at once); :meth:`kill` drops them mid-way, as a server that
crashed or lost power does.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from devtools.fake_llm import ollama, openai
from devtools.fake_llm.answer import GENERATION, QuietAbruptDisconnects
from devtools.fake_llm.reply import DEFAULT_MODELS, Reply, canonical_model, echo

logging.getLogger("uvicorn.error").addFilter(QuietAbruptDisconnects())


class FakeLLM:
    """``with FakeLLM() as fake: fake.script(Reply(text="Hello")); …`` — point the app at ``fake.url``."""

    def __init__(self, *, models: Iterable[str] = DEFAULT_MODELS, loaded: Iterable[str] = (),
                 slots: int | None = None, token_delay: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.slots, self.token_delay, self.host, self._port = slots, token_delay, host, port
        self._initial_models = [canonical_model(name) for name in models]
        self._initial_loaded = [canonical_model(name) for name in loaded]
        self._lock = threading.Lock()
        self.active = self.waiting = self.held = 0
        self.generation = 0  # reset() counts up: a request taken up before the last reset is not the test's
        self._restore()
        self.app = Starlette(routes=self.routes(), lifespan=self._lifespan)
        self.app.add_middleware(_CountHits, fake=self)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.crashed = False

    def _restore(self) -> None:
        self.models, self.loaded = list(self._initial_models), list(self._initial_loaded)
        self._queue: deque[Reply] = deque()
        self._default: Reply | None = None
        self._requests: list[Any] = []
        self.max_active = self._answering = 0  # the most answers at once, of this generation (see slot)
        self.cancelled = 0
        self.hits: Counter[str] = Counter()
        self.peers: defaultdict[str, set[tuple[str, int]]] = defaultdict(set)  # path -> client addresses seen

    def routes(self) -> list[Route]:
        """The HTTP surface; an extension (the demo's LLM) adds its own routes here."""
        return [*ollama.routes(self), *openai.routes(self)]

    # --- lifecycle ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the fake LLM is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeLLM:
        """Serve in a background thread (on the same port as before, after a stop); return once it answers."""
        self.crashed = False
        sock = self._bind(quiet=True)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"fake-llm:{self._port}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the fake LLM did not come up on {self.url}")
            time.sleep(0.01)
        return self

    def _answers(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        return False

    def _bind(self, quiet: bool) -> socket.socket:
        """Bind the socket here, so the port is known at once and no other process can take it meanwhile.

        IPPROTO_TCP explicitly: asyncio disables Nagle only on sockets whose proto says TCP, and without that
        every keep-alive response waits ~40 ms for a delayed ACK.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, loop="asyncio", lifespan="on", log_level="warning" if quiet else "info",
                                access_log=not quiet, log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
                                timeout_graceful_shutdown=3)
        self._server = _Server(config, self)
        return sock

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down; held, hanging and waiting answers end at once, so this does not block."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        self._server = self._thread = None

    def kill(self, timeout: float = 10.0) -> None:
        """Crash, as a killed process does: at once the port refuses connections and every open one is dropped
        (an answer in flight is cut off where it is, without an end). :meth:`start` brings it back."""
        if self._server is None:
            return
        self.crashed = True
        dropped = threading.Event()

        def crash() -> None:
            for server in self._server.servers:
                server.close()
            for connection in list(self._server.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.abort()
            dropped.set()

        self._loop.call_soon_threadsafe(crash)
        dropped.wait(timeout)
        self.stop(timeout)

    def serve_forever(self) -> None:
        """In the foreground (``python -m devtools.fake_llm``); Ctrl-C or SIGTERM stops it."""
        sock = self._bind(quiet=False)
        self._server.run(sockets=[sock])

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._stopping, self._release = asyncio.Event(), asyncio.Event()
        self._slots = asyncio.Semaphore(self.slots) if self.slots else None
        yield

    def _on_shutdown(self) -> None:
        """In the server's loop, before uvicorn waits for open responses: let every one of them end."""
        self._stopping.set()
        for _ in range(self.waiting if self._slots else 0):
            self._slots.release()

    # --- scripting ---------------------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Replies for the next requests, one each, in order."""
        with self._lock:
            self._queue.extend(replies)

    def set_default(self, reply: Reply | None) -> None:
        """The reply once the script is used up; None: the echo."""
        with self._lock:
            self._default = reply

    def reset(self) -> None:
        """Forget scripts, requests and counters; back to the models given to the constructor.

        What was sent before belongs to the past, also when it is read after: a worker killed by the last test's
        teardown may have sent a request the server had not yet taken up, and its handler would take this test's
        script (and count among its requests). So the server first takes up what its sockets hold, each request
        marked with the generation it came in (``_CountHits``), and then the generation counts up."""
        self._take_up_what_was_sent()
        with self._lock:
            self.generation += 1
            self._restore()

    def _take_up_what_was_sent(self) -> None:
        """A few turns of the server's loop: what its sockets hold is read and its handlers are entered."""
        loop = getattr(self, "_loop", None)
        if loop is None or self._thread is None or not loop.is_running():
            return

        async def turns() -> None:
            for _ in range(5):
                await asyncio.sleep(0)
        with contextlib.suppress(Exception):  # a server stopping meanwhile: nothing left to take up
            asyncio.run_coroutine_threadsafe(turns(), loop).result(timeout=5)

    def set_models(self, names: Iterable[str]) -> None:
        """The models that exist; a request for another one is refused (404)."""
        with self._lock:
            self.models = [canonical_model(name) for name in names]
            self.loaded = [name for name in self.loaded if name in self.models]

    def set_loaded(self, names: Iterable[str]) -> None:
        """The models in memory (``/api/ps``); answering with a model loads it."""
        with self._lock:
            self.loaded = [canonical_model(name) for name in names]

    def release(self) -> None:
        """End the hang of every answer held at its ``hang_after`` now: they go on streaming."""
        self._loop.call_soon_threadsafe(self._release_now)

    def _release_now(self) -> None:
        released, self._release = self._release, asyncio.Event()  # a later hang waits for the next release
        released.set()

    # --- what the handlers use ---------------------------------------------------------------------------

    def next_reply(self, body: dict[str, Any], generation: int | None = None) -> Reply:
        """The next scripted reply, else the default, else the echo; the echo for a request of a past generation."""
        with self._lock:
            if not self._current(generation):
                return self.unscripted(body)
            if self._queue:
                return self._queue.popleft()
            if self._default is not None:
                return copy.deepcopy(self._default)
        return self.unscripted(body)

    def unscripted(self, body: dict[str, Any]) -> Reply:
        """The answer when nothing is scripted: the echo (an extension may answer otherwise)."""
        return echo(body)

    def record(self, body: Any, generation: int | None = None) -> None:
        with self._lock:
            if self._current(generation):
                self._requests.append(copy.deepcopy(body))

    def _current(self, generation: int | None) -> bool:
        """Whether a request of ``generation`` (None: not known) belongs to the test since the last reset."""
        return generation is None or generation == self.generation

    def has_model(self, name: str) -> bool:
        return canonical_model(name) in self.models

    def mark_loaded(self, name: str) -> None:
        with self._lock:
            if canonical_model(name) not in self.loaded:
                self.loaded.append(canonical_model(name))

    def count_cancelled(self, generation: int | None = None) -> None:
        with self._lock:
            if self._current(generation):
                self.cancelled += 1

    @contextlib.asynccontextmanager
    async def slot(self, generation: int | None = None) -> AsyncIterator[bool]:
        """Wait for a free slot (first come, first served); yields False when the server is stopping.
        ``max_active`` counts the answers of the request's generation only: one of the last test's, still in
        flight to a client that is gone, is not this test's."""
        self._count("waiting", 1)
        try:
            if self._slots:
                await self._slots.acquire()
        finally:
            self._count("waiting", -1)
        with self._lock:
            self.active += 1
            counted = self.generation if self._current(generation) else None  # in this generation's answers
            if counted is not None:
                self._answering += 1
                self.max_active = max(self.max_active, self._answering)
        try:
            yield not self._stopping.is_set()
        finally:
            with self._lock:
                self.active -= 1
                if counted == self.generation:  # not reset since: a reset starts the count again
                    self._answering -= 1
            if self._slots:
                self._slots.release()

    def _count(self, name: str, change: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + change)

    async def pause(self, seconds: float) -> None:
        """Sleep, but not past the server's stop."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def hold(self) -> bool:
        """Stay silent until :meth:`release` (True) or the server's stop (False)."""
        released = self._release
        waits = [asyncio.ensure_future(released.wait()), asyncio.ensure_future(self._stopping.wait())]
        self.held += 1  # a release frees only the answers held by then: a test waits for this before it releases
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.held -= 1
            for wait in waits:
                wait.cancel()
        return released.is_set() and not self._stopping.is_set()

    # --- observing ---------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Any]:
        """Copies of the request bodies received (chat, generate, completions), in arrival order."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def wait_until(self, condition: Callable[[], object], timeout: float = 5.0) -> bool:
        """Poll ``condition`` (what the server does, e.g. noticing a disconnect, happens in its own thread)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no answer is being served or waits for a slot."""
        return self.wait_until(lambda: self.active == 0 and self.waiting == 0, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: len(self._requests) >= count, timeout)


class _Server(uvicorn.Server):
    """uvicorn waits for open responses when it stops: release the held and waiting ones first."""

    def __init__(self, config: uvicorn.Config, fake: FakeLLM) -> None:
        super().__init__(config)
        self.fake = fake

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.fake._on_shutdown()
        await super().shutdown(sockets=sockets)


class _CountHits:
    """ASGI middleware: count every HTTP request by path (``fake.hits``), e.g. how often the app asks for /api/tags,
    and the client addresses it came from (``fake.peers``: one per connection)."""

    def __init__(self, app, fake: FakeLLM) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[GENERATION] = self.fake.generation
            with self.fake._lock:
                self.fake.hits[scope["path"]] += 1
                self.fake.peers[scope["path"]].add(tuple(scope.get("client") or ("", 0)))
        await self.app(scope, receive, send)
