"""Ollama's HTTP API: ``/api/version``, ``/api/tags``, ``/api/ps``, ``/api/chat`` and ``/api/generate``.

Streams are NDJSON; the last line has ``done: true``, a ``done_reason`` and Ollama's counts and durations (in
nanoseconds). ``options.num_predict`` cuts an answer with done_reason "length"; ``think: false`` leaves the
thinking out. Errors are ``{"error": "…"}``, an unknown model a 404 worded like Ollama's.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devtools.fake_llm.answer import Answer, Format, generation_of

if TYPE_CHECKING:
    from devtools.fake_llm.server import FakeLLM

VERSION = "0.0.0-fake"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Chat(Format):
    wrong_shape = {"message": "text"}

    def message(self, kind: str, text: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text if kind == "content" else ""}
        if kind == "thinking":
            message["thinking"] = text
        return {"message": message}

    def chunk(self, kind: str, text: str) -> bytes:
        return self.line({"model": self.model, "created_at": _now(), **self.message(kind, text), "done": False})

    def end(self) -> bytes:
        return self.line(self.final(self.message("content", "")))

    def whole(self) -> dict[str, Any]:
        whole = self.message("content", self.text("content"))
        if self.text("thinking"):
            whole["message"]["thinking"] = self.text("thinking")
        return self.final(whole)

    def final(self, content: dict[str, Any]) -> dict[str, Any]:
        """The done object, with plausible durations in nanoseconds."""
        total = max(time.perf_counter_ns() - self.started_ns, 3)
        load, prompt = total // 3, total // 3
        return {"model": self.model, "created_at": _now(), **content, "done": True,
                "done_reason": self.done_reason, "total_duration": total, "load_duration": load,
                "prompt_eval_count": self.prompt_tokens(), "prompt_eval_duration": prompt,
                "eval_count": len(self.chunks), "eval_duration": total - load - prompt}

    @staticmethod
    def error(status: int, message: str) -> dict[str, Any]:
        return {"error": message}


class Generate(Chat):
    """``/api/generate``: a prompt in, ``response`` (and ``thinking``) fields out."""

    wrong_shape = {"response": ["text"]}

    def message(self, kind: str, text: str) -> dict[str, Any]:
        message = {"response": text if kind == "content" else ""}
        if kind == "thinking":
            message["thinking"] = text
        return message

    def whole(self) -> dict[str, Any]:
        whole = self.message("content", self.text("content"))
        if self.text("thinking"):
            whole["thinking"] = self.text("thinking")
        return self.final(whole)


def _model_info(name: str) -> dict[str, Any]:
    """A /api/tags entry; clients read the name, the rest is there for its shape."""
    family = name.split(":")[0].rsplit("/", 1)[-1].rstrip("0123456789.") or name
    return {"name": name, "model": name, "modified_at": "2025-01-01T00:00:00Z", "size": 2_000_000_000,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"format": "gguf", "family": family, "parameter_size": "7B", "quantization_level": "Q4_K_M"}}


def routes(fake: FakeLLM) -> list[Route]:
    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [_model_info(name) for name in fake.models]})

    async def ps(request: Request) -> Response:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        return JSONResponse({"models": [{**_model_info(name), "expires_at": expires, "size_vram": 2_000_000_000}
                                        for name in fake.loaded]})

    def answering(format_class: type[Chat]):
        async def handler(request: Request) -> Response | Answer:
            try:
                body = await request.json()
            except ValueError as error:
                return JSONResponse({"error": f"invalid JSON body: {error}"}, status_code=400)
            fake.record(body, generation_of(request.scope))
            if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
                return JSONResponse({"error": "model is required"}, status_code=400)
            model = body["model"]
            if not fake.has_model(model):
                return JSONResponse({"error": f'model "{model}" not found, try pulling it first'}, status_code=404)
            options = body.get("options") if isinstance(body.get("options"), dict) else {}
            reply = fake.next_reply(body, generation_of(request.scope))
            fmt = format_class(body, model, reply, limit=options.get("num_predict"),
                               think=body.get("think") is not False)
            return Answer(fake, fmt, reply, stream=body.get("stream", True) is not False)
        return handler

    return [Route("/api/version", version), Route("/api/tags", tags), Route("/api/ps", ps),
            Route("/api/chat", answering(Chat), methods=["POST"]),
            Route("/api/generate", answering(Generate), methods=["POST"])]
