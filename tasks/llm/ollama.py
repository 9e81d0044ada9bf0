"""Ollama's native API: ``/api/chat`` streamed as NDJSON, ``/api/tags``, ``/api/ps``, ``/api/version``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx

from tasks.llm.base import (HTTP_ERRORS, Chunk, Options, PermanentLLMError, ServerClient, ThinkSplitter,
                            TransientLLMError, classify, endpoint, finished, malformed, read_to_end, server_words,
                            shared_http, with_timeouts, without_credentials)


class OllamaClient(ServerClient):
    """One Ollama server (``kind = "ollama"``)."""

    HEALTH_PATH = "/api/version"
    LOADED_CACHE_SECONDS = 5.0

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url, credentials = without_credentials(url.rstrip("/"))
        self.http = shared_http(self.url, credentials=credentials)

    async def chat(self, model: str, messages: list[dict], options: Options) -> AsyncIterator[Chunk]:
        """Stream ``/api/chat``: thinking and answer tokens apart, then a 'done' chunk with reason and usage."""
        body: dict = {"model": model, "messages": messages, "stream": True}
        sampling = {"temperature": options.temperature, "top_p": options.top_p, "seed": options.seed,
                    "num_ctx": options.num_ctx, "num_predict": options.max_tokens}
        if any(value is not None for value in sampling.values()):
            body["options"] = {name: value for name, value in sampling.items() if value is not None}
        splitter = ThinkSplitter()
        try:
            async with self.http.stream("POST", endpoint(self.url, "/api/chat"), json=body) as response:
                await raise_for_status(response, model, self.name)
                lines = with_timeouts(self._lines(response), self.name)
                async for payload in lines:
                    message = payload.get("message") or {}
                    if not isinstance(message, dict) or not all(
                            isinstance(message.get(part) or "", str) for part in ("content", "thinking")):
                        raise malformed(self.name, payload)
                    if message.get("thinking"):
                        yield Chunk("think", message["thinking"])
                    for kind, text in splitter.feed(message.get("content") or ""):
                        yield Chunk(kind, text)
                    if payload.get("done"):
                        done = finished(self.name, payload.get("done_reason") or "stop",
                                        {"prompt_tokens": payload.get("prompt_eval_count"),
                                         "completion_tokens": payload.get("eval_count")})
                        await read_to_end(lines)  # the connection goes back to the pool
                        for kind, text in splitter.flush():
                            yield Chunk(kind, text)
                        yield done
                        return
        except HTTP_ERRORS as error:
            raise classify(error, self.name) from error
        raise TransientLLMError(f"The LLM server {self.name!r} ended the answer without finishing it.",
                                "llm_disconnected")

    async def _lines(self, response: httpx.Response) -> AsyncIterator[dict]:
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                payload = json.loads(line)
            except ValueError as error:
                raise malformed(self.name, line) from error
            if not isinstance(payload, dict):
                raise malformed(self.name, line)
            if payload.get("error"):
                raise PermanentLLMError(f"The LLM server {self.name!r} stopped with an error: "
                                        f"{server_words(self.name, payload['error'])}",
                                        "llm_refused")
            yield payload

    async def models(self) -> list[str]:
        """Names of the installed models (``/api/tags``)."""
        return [m["name"] for m in (await self._get_json("/api/tags")).get("models", []) if m.get("name")]

    async def loaded(self, max_age: float = LOADED_CACHE_SECONDS) -> list[str]:
        """Names of the models in memory now (``/api/ps``), cached ``max_age`` seconds per server (each job asks;
        the health check asks with 0: what it writes to Redis steers admission for the next seconds)."""
        checked, names = _loaded.get(self.url, (0.0, []))
        if time.monotonic() - checked >= max_age:
            names = [m["name"] for m in (await self._get_json("/api/ps")).get("models", []) if m.get("name")]
            _loaded[self.url] = (time.monotonic(), names)
        return names

    async def slots(self) -> int | None:
        """Ollama does not say how many requests it runs at once (OLLAMA_NUM_PARALLEL): configure it."""
        return None



_loaded: dict[str, tuple[float, list[str]]] = {}


async def raise_for_status(response: httpx.Response, model: str, name: str) -> None:
    """Turn an HTTP error status into the right kind of LLMError, with the server's own words."""
    if response.status_code < 400:
        return
    await response.aread()
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else body
        reason = (error.get("message") if isinstance(error, dict) else error) or response.text
    except ValueError:
        reason = response.text
    reason = server_words(name, reason)
    status = response.status_code
    if status == 404 and ("not found" in reason or "does not exist" in reason):
        raise PermanentLLMError(f"The model {model!r} is not installed on the LLM server {name!r}: install it "
                                f"there (ollama pull {model}) or pick another model.", "model_missing")
    if status == 503:
        raise TransientLLMError(f"The LLM server {name!r} is busy (HTTP 503): {reason}", "llm_busy")
    if status >= 500 or status == 429:
        raise TransientLLMError(f"The LLM server {name!r} answered HTTP {status}: {reason}", "llm_refused")
    raise PermanentLLMError(f"The LLM server {name!r} refused the request (HTTP {status}): {reason}", "llm_refused")
