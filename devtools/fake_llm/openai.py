"""The OpenAI-compatible API as llama.cpp's server and vLLM speak it: ``/v1/models``, ``/v1/chat/completions``,
plus llama.cpp's ``/props`` (``total_slots``) and ``/health``.

A stream is ``text/event-stream``: ``data: {chunk}`` events whose ``choices[0].delta`` holds ``content`` (or
``reasoning_content`` for thinking), a last chunk with ``finish_reason`` ("stop", or "length" when
``max_tokens`` cut the answer), a usage chunk when ``stream_options.include_usage`` is set, then
``data: [DONE]``. Errors are ``{"error": {"message", "type", "code"}}`` with llama.cpp's types.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.fake_llm.answer import Answer, Format, generation_of

if TYPE_CHECKING:
    from devtools.fake_llm.server import FakeLLM

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 501: "not_supported_error", 503: "unavailable_error"}


def error_body(status: int, message: str) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


class ChatCompletion(Format):
    media_type = "text/event-stream"
    wrong_shape = {"choices": "x"}

    def __init__(self, *args: Any, include_usage: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.include_usage = include_usage
        self.id, self.created, self.first = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), True

    def frame(self, payload: bytes) -> bytes:
        return b"data: " + payload + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.line({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                          "model": self.model, "choices": [{"index": 0, "delta": delta,
                                                            "finish_reason": finish_reason}]})

    def chunk(self, kind: str, text: str) -> bytes:
        delta = {"role": "assistant"} if self.first else {}
        self.first = False
        delta["content" if kind == "content" else "reasoning_content"] = text
        return self._chunk(delta)

    def usage(self) -> dict[str, int]:
        prompt = self.prompt_tokens()
        return {"prompt_tokens": prompt, "completion_tokens": len(self.chunks),
                "total_tokens": prompt + len(self.chunks)}

    def end(self) -> bytes:
        end = self._chunk({}, self.done_reason)
        if self.include_usage:
            end += self.line({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                              "model": self.model, "choices": [], "usage": self.usage()})
        return end + self.frame(b"[DONE]")

    def whole(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.text("content")}
        if self.text("thinking"):
            message["reasoning_content"] = self.text("thinking")
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.done_reason}],
                "usage": self.usage()}

    error = staticmethod(error_body)


def routes(fake: FakeLLM) -> list[Route]:
    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                         "owned_by": "fake"} for name in fake.models]})

    async def completions(request: Request) -> Response | Answer:
        try:
            body = await request.json()
        except ValueError as problem:
            return JSONResponse(error_body(400, f"invalid JSON body: {problem}"), status_code=400)
        fake.record(body, generation_of(request.scope))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return JSONResponse(error_body(400, "messages is required"), status_code=400)
        model = body.get("model") or fake.models[0]
        if not fake.has_model(model):
            return JSONResponse(error_body(404, f"The model `{model}` does not exist"), status_code=404)
        reply = fake.next_reply(body, generation_of(request.scope))
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        fmt = ChatCompletion(body, model, reply, limit=body.get("max_tokens", body.get("max_completion_tokens")),
                             include_usage=options.get("include_usage") is True and reply.usage)
        return Answer(fake, fmt, reply, stream=body.get("stream") is True)

    async def props(request: Request) -> Response:
        """``total_slots``: the answers served at once (0 when the fake has no limit; a real server has one)."""
        return JSONResponse({"total_slots": fake.slots or 0, "model_path": fake.models[0] if fake.models else "",
                             "build_info": "fake"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return [Route("/v1/models", models), Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/props", props), Route("/health", health)]
