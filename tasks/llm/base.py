"""What every LLM client shares: one stream of events, two kinds of failure, and the HTTP pool.

A client streams a chat as :class:`Chunk` events — ``token`` and ``think`` text, then one ``done`` with why it
ended (``stop`` or ``length``) and the token counts — whatever the protocol underneath. Every failure becomes a
:class:`TransientLLMError` (worth a retry: the server is down, busy, slow, or cut the stream) or a
:class:`PermanentLLMError` (retrying can't help: an unknown model, a refused request), with a message a person
can act on and a ``code`` the UI translates. Messages never name the server's address (users see them); the
log does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cache
from typing import Protocol

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

from tasks.settings import settings

log = logging.getLogger("queuechat.llm")

#: What names a place: a URL, a bracketed IPv6 or an IPv4 address (with a port or not), a host:port.
ADDRESS = re.compile(r"""[a-z][a-z0-9+.-]*://[^\s"'<>]+|\[[0-9a-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"""
                     r"|\b[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)*:\d{2,5}\b", re.IGNORECASE)


class LLMError(Exception):
    """Base of LLM failures; ``str(error)`` is meant for the person who asked, ``code`` for translations."""

    expected = True  # False: classified from an exception nobody anticipated (logged with its traceback)

    def __init__(self, message: str, code: str = "llm_error") -> None:
        super().__init__(message)
        self.code = code


class TransientLLMError(LLMError):
    """The call may succeed if tried again later (or on another server)."""


class PermanentLLMError(LLMError):
    """The call will fail the same way again."""


@dataclass
class Chunk:
    """One event of a streamed answer: ``kind`` is 'token', 'think' or 'done'.

    A 'done' chunk carries ``reason`` ('stop', or 'length' when the answer hit its length limit) and ``usage``
    (``prompt_tokens``, ``completion_tokens``) as far as the server told them."""

    kind: str
    text: str = ""
    reason: str = "stop"
    usage: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Options:
    """Sampling options a request may set; None = the server's default."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    num_ctx: int | None = None       # context length (Ollama only; OpenAI-compatible servers fix it at start)
    max_tokens: int | None = None    # the answer's length limit

    @classmethod
    def of(cls, data: dict | None) -> Options:
        data = data or {}
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


class Client(Protocol):
    """One LLM server. Cheap to create: the connection pool is shared per event loop and server."""

    name: str

    def chat(self, model: str, messages: list[dict], options: Options) -> AsyncIterator[Chunk]: ...
    async def models(self) -> list[str]: ...
    async def loaded(self, max_age: float = ...) -> list[str]: ...
    async def slots(self) -> int | None: ...
    async def is_up(self) -> bool: ...


class ServerClient:
    """What both clients do alike: a JSON GET from the server, and whether it answers at its ``HEALTH_PATH``."""

    HEALTH_PATH = "/"
    name: str
    http: httpx.AsyncClient

    async def is_up(self) -> bool:
        """Whether it answers; raises :func:`busy` when it took the request but is busy with another's answer
        (a server that answers one request at a time holds even its health page): neither up nor down is news."""
        try:
            await self._get_json(self.HEALTH_PATH)
        except TransientLLMError as error:
            if error.code == "llm_busy":
                raise
            return False
        return True

    async def _get_json(self, path: str) -> dict:
        try:
            response = await self.http.get(path, timeout=probe_timeout())
            response.raise_for_status()
            body = response.json()
        except httpx.ReadTimeout as error:
            raise busy(self.name) from error
        except (*HTTP_ERRORS, ValueError) as error:
            raise unreachable(self.name) from error
        if not isinstance(body, dict):
            raise malformed(self.name, body)
        return body


def unreachable(name: str) -> TransientLLMError:
    return TransientLLMError(f"The LLM server {name!r} is not reachable.", "llm_unreachable")


def busy(name: str) -> TransientLLMError:
    """A server that took the request but did not answer in time: one that runs one request at a time (llama-cpp-
    python's holds even ``/v1/models`` until its running answer ends) is busy, not down."""
    return TransientLLMError(f"The LLM server {name!r} is busy.", "llm_busy")


def classify(error: BaseException, name: str = "") -> LLMError:
    """Any failure of an LLM call as one of the two kinds the queue acts on.

    What nobody expected (a bug, a library's new exception) is transient: it may pass, and the job's attempts
    bound the retries either way. Its ``expected`` is False, so that the log shows its traceback."""
    if isinstance(error, LLMError):
        return error
    server = f"The LLM server {name!r}" if name else "The LLM server"
    if dropped(error):
        return TransientLLMError(f"{server} closed the connection mid-answer ({type(error.__cause__).__name__}).",
                                 "llm_disconnected")
    if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
        return unreachable(name) if name else TransientLLMError("The LLM server is not reachable.",
                                                                "llm_unreachable")
    if isinstance(error, httpx.TimeoutException):  # the wait for the response's headers (see shared_http)
        return TransientLLMError(f"{server} sent nothing for {settings.llm_first_token_timeout:g} s.", "llm_timeout")
    if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        return TransientLLMError(f"{server} closed the connection mid-answer ({type(error).__name__}).",
                                 "llm_disconnected")
    if isinstance(error, aiohttp.ClientError):  # not HTTP, or past aiohttp's limits (see HTTP_ERRORS)
        return TransientLLMError(f"{server} sent a reply that is not valid HTTP ({type(error).__name__}).",
                                 "llm_disconnected")
    if isinstance(error, (httpx.DecodingError, UnicodeError, ValueError, KeyError, TypeError, AttributeError)):
        return TransientLLMError(f"{server} sent something unreadable ({type(error).__name__}).", "llm_malformed")
    surprise = TransientLLMError(f"The LLM call failed unexpectedly ({type(error).__name__}).", "llm_error")
    surprise.expected = False
    return surprise


#: What the HTTP pool raises: httpx's errors, and aiohttp's where httpx-aiohttp names none of httpx's (a reply that
#: is not HTTP, a header line past aiohttp's limit): without these a broken server's reply was an "unexpected"
#: failure with a traceback, and its health check raised instead of finding it down.
HTTP_ERRORS = (httpx.HTTPError, aiohttp.ClientError)


def dropped(error: BaseException) -> bool:
    """Whether the server dropped a connection it had accepted (before or during the answer). httpx-aiohttp (see
    :func:`shared_http`) calls that a ConnectTimeout, as it does a connection never made: aiohttp's
    ClientConnectionError covers both. The queue must tell them apart: a server that can't be reached is skipped
    at once (its circuit opens), one that cut an answer is asked whether it is still up (``runner.server_gone``)."""
    cause = error.__cause__
    return isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) \
        and not isinstance(cause, aiohttp.ClientConnectorError)


def server_words(name: str, text: object, limit: int = 300) -> str:
    """What an LLM server said, fit for the person who asked: its addresses hidden. A server's error often names
    hosts (Ollama's 'Post "http://127.0.0.1:39041/completion": EOF', a gateway's upstream); users need not learn
    where the servers are. The log keeps the words whole."""
    text = str(text)
    shown = ADDRESS.sub("[address]", text[:limit])
    if shown != text[:limit]:
        log.warning("LLM server %r said: %s", name, text[:2000])
    return shown


def malformed(name: str, what: object) -> TransientLLMError:
    return TransientLLMError(f"The LLM server {name!r} sent a malformed reply: {server_words(name, what, 80)!r}.",
                             "llm_malformed")


def finished(name: str, reason: object, usage: dict) -> Chunk:
    """The 'done' chunk of an answer. Its reason and counts are written to the job's record: a reason that is not
    text or a count that is not a whole number is a malformed reply (a retry), not an answer that can't be
    recorded (which would leave the job to the reaper, as if its worker had died)."""
    if not isinstance(reason, str) or not all(value is None or (isinstance(value, int) and not isinstance(value, bool))
                                              for value in usage.values()):
        raise malformed(name, {"done_reason": reason, **usage})
    return Chunk("done", reason=reason or "stop", usage=usage)


async def with_timeouts(lines: AsyncIterator, name: str) -> AsyncIterator:
    """Items of a streamed response, with the first-token and idle timeouts applied between them.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11, ``wait_for`` swallows a cancellation that arrives
    as its awaitable completes — and a streaming answer has its next line ready almost always — so a Stop went
    unheard and the answer streamed on until the lease ran out."""
    wait = settings.llm_first_token_timeout
    while True:
        try:
            async with asyncio.timeout(wait):
                item = await anext(lines)
        except StopAsyncIteration:
            return
        except TimeoutError as error:
            raise TransientLLMError(f"The LLM server {name!r} sent nothing for {wait:g} s.", "llm_timeout") \
                from error
        wait = settings.llm_idle_timeout
        yield item


END_OF_RESPONSE_SECONDS = 0.2


async def read_to_end(rest: AsyncIterator) -> None:
    """Read what follows an answer's last message (the end of its chunked body) before the answer is reported done.

    A response left unread to its end can't go back to the connection pool: httpx closes its connection, and the
    next answer pays a new TCP connection on its time to first token (and the server an accept). Whatever comes
    is ignored, and a server that holds the response open after its last message is not waited for beyond
    END_OF_RESPONSE_SECONDS: its connection is closed instead, as before."""
    try:
        async with asyncio.timeout(END_OF_RESPONSE_SECONDS):
            async for _ in rest:
                pass
    except Exception:  # noqa: BLE001 - a late error, or a timeout: the answer is complete either way
        log.debug("the end of an LLM response could not be read", exc_info=True)


def probe_timeout() -> httpx.Timeout:
    """For the short requests beside an answer (models, loaded models, slots, health): 5 s in all, and no longer to
    connect than LLM_CONNECT_TIMEOUT — a host that drops packets must not hold a job's slot 5 s per attempt."""
    return httpx.Timeout(5.0, connect=min(5.0, settings.llm_connect_timeout))


#: id(loop) -> (the loop, weakly; its clients by server). The loop is checked, not only its id: a loop that ended
#: (``asyncio.run`` in a script or a test) may leave its id to the next, and its clients are bound to it.
_pools: dict[int, tuple[weakref.ref, dict[tuple, httpx.AsyncClient]]] = {}


@cache
def without_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """A server's URL without its ``user:password@``, and those apart, for Basic auth (what httpx made of them):
    aiohttp refuses a URL that carries credentials beside an Authorization header, and logs need no password.
    Parsed once per URL: a client is made for every job."""
    parsed = httpx.URL(url)
    if not parsed.userinfo:
        return url, None
    return str(parsed.copy_with(userinfo=b"")), (parsed.username, parsed.password)


def shared_http(base_url: str, headers: dict[str, str] | None = None,
                credentials: tuple[str, str] | None = None) -> httpx.AsyncClient:
    """One connection pool per (running event loop, server): building an ``httpx.AsyncClient`` costs tens of
    milliseconds (mostly its SSL context), which would otherwise be paid on every job's time to first token.

    httpx's API on aiohttp's connections (``httpx-aiohttp``, the transport the OpenAI SDK offers for speed): httpx's
    own (httpcore on anyio) cost a worker 0.8–0.9 ms of CPU per LLM call here, aiohttp's 0.3–0.4 ms — with an
    instant LLM, more than a third of a job's whole cost in the worker (docs/benchmarks.md, section b).

    The read timeout covers the wait for the response headers (some servers send them with the first token);
    between lines, :func:`with_timeouts` applies the first-token and idle timeouts itself."""
    loop = asyncio.get_running_loop()
    owner, clients = _pools.get(id(loop), (None, None))
    if owner is None or owner() is not loop:
        clients = {}
        _pools[id(loop)] = (weakref.ref(loop), clients)
    key = (base_url, credentials)  # a pool per server and credentials
    client = clients.get(key)
    if client is None or client.is_closed:
        timeout = httpx.Timeout(connect=settings.llm_connect_timeout, read=settings.llm_first_token_timeout,
                                write=30.0, pool=30.0)
        client = clients[key] = HttpxAiohttpClient(base_url=base_url, timeout=timeout, headers=headers,
                                                   auth=httpx.BasicAuth(*credentials) if credentials else None)
    return client


@cache
def endpoint(base_url: str, path: str) -> httpx.URL:
    """``base_url + path``, parsed once: httpx parses a path against the client's base URL on every request, in
    Python (0.07–0.1 ms of a worker's CPU per LLM call here, a quarter of the call's own)."""
    return httpx.URL(base_url + path)


async def close_shared_http() -> None:
    """Close the running loop's pools: for a loop that ends while the process goes on (aiohttp names a pool left
    open when it is collected)."""
    owner, clients = _pools.pop(id(asyncio.get_running_loop()), (None, {}))
    for client in clients.values():
        await client.aclose()


class ThinkSplitter:
    """Splits content text into ('think', …) and ('token', …) around ``<think>…</think>`` tags.

    Tags may arrive cut across chunks, so a possible partial tag at the end is held back until the next feed.
    """

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.inside = False
        self.buffer = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buffer += text
        out: list[tuple[str, str]] = []
        while self.buffer:
            tag = self.CLOSE if self.inside else self.OPEN
            index = self.buffer.find(tag)
            if index < 0:
                keep = _partial_suffix(self.buffer, tag)
                self._emit(out, self.buffer[:len(self.buffer) - keep])
                self.buffer = self.buffer[len(self.buffer) - keep:]
                break
            self._emit(out, self.buffer[:index])
            self.buffer = self.buffer[index + len(tag):]
            self.inside = not self.inside
        return out

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        self._emit(out, self.buffer)
        self.buffer = ""
        return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if text:
            out.append(("think" if self.inside else "token", text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that begins ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
