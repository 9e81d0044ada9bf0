"""The LLM client (Ollama's HTTP API over httpx) and the two kinds of failure the queue cares about.

Every failure becomes either a :class:`TransientLLMError` (worth a retry: the server is down, busy, slow or
cut the stream) or a :class:`PermanentLLMError` (retrying can't help: unknown model, a refused request),
each with a message a person can act on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx

from tasks.settings import settings


class LLMError(Exception):
    """Base of LLM failures; ``str(error)`` is meant for the person who asked, ``code`` for translations."""

    def __init__(self, message: str, code: str = "llm_error") -> None:
        super().__init__(message)
        self.code = code


class TransientLLMError(LLMError):
    """The call may succeed if tried again later."""


class PermanentLLMError(LLMError):
    """The call will fail the same way again."""


@dataclass
class Chunk:
    """One piece of a streamed answer: ``kind`` is 'token', 'think' or 'done' (with the server's stats)."""

    kind: str
    text: str = ""
    stats: dict = field(default_factory=dict)


class OllamaClient:
    """Talks to one Ollama server. Cheap to create: the HTTP connection pool is shared per event loop and host
    (building an ``httpx.AsyncClient`` costs tens of milliseconds, mostly its SSL context, and would otherwise
    be paid on every job's time to first token)."""

    LOADED_CACHE_SECONDS = 5.0

    def __init__(self, host: str | None = None) -> None:
        self.host = (host or settings.ollama_host).rstrip("/")
        self.http = _shared_http(self.host)

    async def __aenter__(self) -> OllamaClient:
        return self

    async def __aexit__(self, *exc) -> None:
        """Nothing to close: the pool outlives this client (it ends with its event loop)."""

    async def chat(self, model: str, messages: list[dict], *, num_predict: int | None = None,
                   ) -> AsyncIterator[Chunk]:
        """Stream ``/api/chat``: thinking and answer tokens apart, then a 'done' chunk with the stats."""
        body: dict = {"model": model, "messages": messages, "stream": True}
        if num_predict:
            body["options"] = {"num_predict": num_predict}
        splitter = ThinkSplitter()
        try:
            async with self.http.stream("POST", "/api/chat", json=body) as response:
                await raise_for_answer(response, model, self.host)
                async for payload in self._lines(response):
                    message = payload.get("message") or {}
                    if message.get("thinking"):
                        yield Chunk("think", message["thinking"])
                    for kind, text in splitter.feed(message.get("content") or ""):
                        yield Chunk(kind, text)
                    if payload.get("done"):
                        for kind, text in splitter.flush():
                            yield Chunk(kind, text)
                        yield Chunk("done", stats=payload)
                        return
        except httpx.ConnectError as error:
            raise TransientLLMError(f"Ollama is not reachable at {self.host}: start `ollama serve` "
                                    "or set OLLAMA_HOST.", "llm_unreachable") from error
        except httpx.ReadTimeout as error:
            raise TransientLLMError(f"Ollama sent nothing for {settings.llm_first_token_timeout:g} s.",
                                    "llm_timeout") from error
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as error:
            raise TransientLLMError(f"Ollama closed the connection mid-answer ({type(error).__name__}).",
                                    "llm_disconnected") from error
        raise TransientLLMError("Ollama ended the answer without finishing it.", "llm_disconnected")

    async def _lines(self, response: httpx.Response) -> AsyncIterator[dict]:
        """Parsed NDJSON lines, with the first-token and idle timeouts applied."""
        lines = response.aiter_lines()
        wait = settings.llm_first_token_timeout
        while True:
            try:
                line = await asyncio.wait_for(anext(lines), wait)
            except StopAsyncIteration:
                return
            except TimeoutError as error:
                raise TransientLLMError(f"Ollama sent nothing for {wait:g} s.", "llm_timeout") from error
            wait = settings.llm_idle_timeout
            if not line.strip():
                continue
            try:
                payload = json.loads(line)
            except ValueError as error:
                raise TransientLLMError(f"Ollama sent a malformed line: {line[:80]!r}.", "llm_malformed") from error
            if not isinstance(payload, dict):
                raise TransientLLMError(f"Ollama sent a malformed line: {line[:80]!r}.", "llm_malformed")
            if payload.get("error"):
                raise PermanentLLMError(f"Ollama stopped with an error: {payload['error']}", "llm_refused")
            yield payload

    async def list_models(self) -> list[str]:
        """Names of the installed models (``/api/tags``)."""
        return [m["name"] for m in (await self._get_json("/api/tags")).get("models", [])]

    async def loaded_models(self) -> list[str]:
        """Names of the models in memory now (``/api/ps``), cached a few seconds per host."""
        checked, names = _loaded.get(self.host, (0.0, []))
        if time.monotonic() - checked > self.LOADED_CACHE_SECONDS:
            names = [m["name"] for m in (await self._get_json("/api/ps")).get("models", [])]
            _loaded[self.host] = (time.monotonic(), names)
        return names

    async def is_up(self) -> bool:
        try:
            await self._get_json("/api/version")
        except LLMError:
            return False
        return True

    async def _get_json(self, path: str) -> dict:
        try:
            response = await self.http.get(path, timeout=5.0)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise TransientLLMError(f"Ollama is not reachable at {self.host}: start `ollama serve` "
                                    "or set OLLAMA_HOST.", "llm_unreachable") from error


_pools: dict[tuple[int, str], httpx.AsyncClient] = {}
_loaded: dict[str, tuple[float, list[str]]] = {}


def _shared_http(host: str) -> httpx.AsyncClient:
    """One connection pool per (running event loop, host)."""
    key = (id(asyncio.get_running_loop()), host)
    client = _pools.get(key)
    if client is None or client.is_closed:
        # The read timeout covers the wait for the response headers (some servers send them with the first
        # token); between lines, _lines applies the first-token and idle timeouts itself.
        timeout = httpx.Timeout(connect=settings.llm_connect_timeout, read=settings.llm_first_token_timeout,
                                write=30.0, pool=30.0)
        client = _pools[key] = httpx.AsyncClient(base_url=host, timeout=timeout)
    return client


async def raise_for_answer(response: httpx.Response, model: str, host: str) -> None:
    """Turn an HTTP error status into the right kind of LLMError, with Ollama's own words."""
    if response.status_code < 400:
        return
    await response.aread()
    try:
        reason = response.json().get("error") or response.text
    except ValueError:
        reason = response.text
    reason = str(reason)[:300]
    status = response.status_code
    if status == 404 and "not found" in reason:
        raise PermanentLLMError(f"The model {model!r} is not installed on {host}: run `ollama pull {model}`.",
                                "model_missing")
    if status == 503:
        raise TransientLLMError(f"Ollama is busy (HTTP 503): {reason}", "llm_busy")
    if status >= 500 or status == 429:
        raise TransientLLMError(f"Ollama answered HTTP {status}: {reason}", "llm_refused")
    raise PermanentLLMError(f"Ollama refused the request (HTTP {status}): {reason}", "llm_refused")


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
