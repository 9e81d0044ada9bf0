"""Any OpenAI-compatible server (vLLM, llama.cpp's server, LM Studio, a hosted API): ``/v1/chat/completions``
streamed as Server-Sent Events, ``/v1/models``, and llama.cpp's ``/props`` for the number of slots."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
from httpx_sse import SSEError, aconnect_sse

from tasks.llm.base import (HTTP_ERRORS, Chunk, Options, ServerClient, ThinkSplitter, TransientLLMError, classify,
                            endpoint, finished, malformed, probe_timeout, read_to_end, shared_http, with_timeouts,
                            without_credentials)
from tasks.llm.ollama import raise_for_status


class OpenAIClient(ServerClient):
    """One OpenAI-compatible server (``kind = "openai"``); ``api_key`` from the environment, if any."""

    HEALTH_PATH = "/v1/models"

    def __init__(self, name: str, url: str, api_key: str | None = None) -> None:
        self.name = name
        self.url, credentials = without_credentials(url.rstrip("/"))
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.http = shared_http(self.url, {"Authorization": f"Bearer {api_key}"} if api_key else None,
                                credentials=None if api_key else credentials)  # one Authorization: the key's

    async def chat(self, model: str, messages: list[dict], options: Options) -> AsyncIterator[Chunk]:
        body: dict = {"model": model, "messages": messages, "stream": True,
                      "stream_options": {"include_usage": True}}
        for name in ("temperature", "top_p", "seed", "max_tokens"):
            if getattr(options, name) is not None:
                body[name] = getattr(options, name)
        splitter, reason, usage = ThinkSplitter(), None, {}
        try:
            async with aconnect_sse(self.http, "POST", endpoint(self.url, "/v1/chat/completions"), json=body) as source:
                await raise_for_status(source.response, model, self.name)
                events = with_timeouts(source.aiter_sse(), self.name)
                async for event in events:
                    if event.data.strip() == "[DONE]":
                        done = finished(self.name, reason or "stop", usage)
                        await read_to_end(events)  # the connection goes back to the pool
                        for kind, text in splitter.flush():
                            yield Chunk(kind, text)
                        yield done
                        return
                    try:
                        payload = json.loads(event.data)
                    except ValueError as error:
                        raise malformed(self.name, event.data) from error
                    if not isinstance(payload, dict):
                        raise malformed(self.name, payload)
                    if payload.get("usage"):
                        usage = {"prompt_tokens": payload["usage"].get("prompt_tokens"),
                                 "completion_tokens": payload["usage"].get("completion_tokens")}
                    for choice in payload.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if not isinstance(delta, dict):
                            raise malformed(self.name, payload)
                        thinking = delta.get("reasoning_content") or delta.get("reasoning")
                        if thinking:
                            yield Chunk("think", str(thinking))
                        for kind, text in splitter.feed(delta.get("content") or ""):
                            yield Chunk(kind, text)
                        reason = choice.get("finish_reason") or reason
        except (*HTTP_ERRORS, SSEError) as error:
            raise classify(error if isinstance(error, HTTP_ERRORS) else ValueError(str(error)),
                           self.name) from error
        raise TransientLLMError(f"The LLM server {self.name!r} ended the answer without finishing it.",
                                "llm_disconnected")

    async def models(self) -> list[str]:
        body = await self._get_json("/v1/models")
        return [m["id"] for m in body.get("data") or [] if isinstance(m, dict) and m.get("id")]

    async def loaded(self, max_age: float = 0.0) -> list[str]:
        """An OpenAI-compatible server answers with the models it has loaded."""
        return await self.models()

    async def slots(self) -> int | None:
        """llama.cpp's server says how many requests it runs at once (``/props``: ``total_slots``)."""
        try:
            response = await self.http.get("/props", timeout=probe_timeout())
            if response.status_code == 200:
                slots = response.json().get("total_slots")
                return int(slots) if isinstance(slots, int) and slots > 0 else None
        except (*HTTP_ERRORS, ValueError, AttributeError):
            pass
        return None
