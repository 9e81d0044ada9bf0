"""The Ollama-compatible door, under ``/ollama``: ``/api/chat`` and ``/api/generate`` (NDJSON streamed, or
whole), ``/api/tags``, ``/api/ps`` and ``/api/version`` — so that an Ollama client pointed at
``http://host:8080/ollama`` (with ``Authorization: Bearer <key>`` in its headers) works through the queue.

NDJSON has no comments to keep a connection alive with, so the headers go out at once (with the position in
``X-Queue-Position``) and the lines follow when the answer does. Errors are Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tasks.fold import JobState
from tasks.identities import Identity
from tasks.settings import settings
from ui import api
from ui.doors import follow

router = APIRouter(prefix="/ollama/api", tags=["Ollama-compatible"])
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "num_ctx": "num_ctx",
           "num_predict": "max_tokens"}


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200)
    messages: list = Field(min_length=1, max_length=1000)
    stream: bool = True
    options: dict | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(max_length=1_000_000)
    system: str | None = Field(None, max_length=1_000_000)
    stream: bool = True
    options: dict | None = None


@router.get("/version")
async def version() -> dict:
    return {"version": "0.0.0-queuechat"}


@router.get("/tags")
async def tags(who: Identity = Depends(api.api_identity)) -> dict:
    names = (await api.models())["models"]
    return {"models": [{"name": name, "model": name, "modified_at": "1970-01-01T00:00:00Z", "size": 0,
                        "digest": "", "details": {"format": "", "family": "", "parameter_size": "",
                                                  "quantization_level": ""}} for name in names]}


@router.get("/ps")
async def ps(who: Identity = Depends(api.api_identity)) -> dict:
    loaded = sorted({m for view in (await api.models_by_server()) for m in view["loaded"]})
    return {"models": [{"name": name, "model": name, "size": 0, "digest": "", "expires_at": "1970-01-01T00:00:00Z",
                        "size_vram": 0} for name in loaded]}


STREAMED = {200: {"description": "NDJSON lines (``stream``: true) or one JSON object",
                  "content": {"application/x-ndjson": {}, "application/json": {}}}}


@router.post("/chat", responses=STREAMED)
async def chat(body: ChatRequest, request: Request, who: Identity = Depends(api.api_identity)):
    messages, prompt = follow.DoorMessages.parse(body.messages, settings.max_prompt_chars * 32)
    return await answer(who, request, body.model, messages, prompt, body.options, body.stream, chat=True)


@router.post("/generate", responses=STREAMED)
async def generate(body: GenerateRequest, request: Request, who: Identity = Depends(api.api_identity)):
    messages = ([{"role": "system", "content": body.system}] if body.system else []) + \
        [{"role": "user", "content": body.prompt}]
    messages, prompt = follow.DoorMessages.parse(messages, settings.max_prompt_chars * 32)
    return await answer(who, request, body.model, messages, prompt, body.options, body.stream, chat=False)


async def answer(who: Identity, request: Request, model: str, messages: list[dict], prompt: str,
                 options: dict | None, streamed: bool, chat: bool):
    given = options if isinstance(options, dict) else {}
    sampling = api.sampling({ours: given.get(theirs) for theirs, ours in OPTIONS.items()})
    submitted = await follow.submit(who, request, messages, prompt, model, sampling)
    headers = {"X-Queue-Position": str(submitted.position), "X-Queue-Job": submitted.job_id}
    if streamed:
        return StreamingResponse(lines(submitted.job_id, model, request, chat), media_type="application/x-ndjson",
                                 headers=headers)
    job = await follow.outcome(submitted.job_id, request)
    if job is None:
        return JSONResponse({"error": "the client went away"}, status_code=499)
    if job.status != "completed":
        return JSONResponse({"error": job.error or f"the answer was {job.status}"}, status_code=502, headers=headers)
    return JSONResponse(final(job, model, chat, job.answer, job.thinking), headers=headers)


async def lines(job_id: str, model: str, request: Request, chat: bool):
    # An empty first chunk sends the headers (and the position in them) now: the app's gzip middleware holds a
    # response's start until its first body chunk, and a job that waits has no line to send for minutes.
    yield ""
    async for event in follow.events(job_id, request):
        if event.kind in ("token", "think"):
            yield line(part(model, chat, event.text if event.kind == "token" else "",
                            event.text if event.kind == "think" else ""))
        elif event.kind == "restart":
            yield line({"error": "the LLM server failed mid-answer and the answer started over: send the request "
                                 "again"})
            return
        elif event.kind == "done":
            job = event.job
            if job is None or job.status != "completed":
                yield line({"error": (job.error if job and job.error else "the answer was not completed")})
                return
            yield line(final(job, model, chat, "", ""))
            return


def part(model: str, chat: bool, text: str, thinking: str) -> dict:
    body = {"model": model, "created_at": now(), "done": False}
    if chat:
        body["message"] = {"role": "assistant", "content": text, **({"thinking": thinking} if thinking else {})}
    else:
        body["response"] = text
        if thinking:
            body["thinking"] = thinking
    return body


def final(job: JobState, model: str, chat: bool, text: str, thinking: str) -> dict:
    body = part(model, chat, text, thinking)
    elapsed = max(0, (job.finished_at or 0) - (job.created_at or 0)) * 1_000_000
    body.update(done=True, done_reason=job.done_reason or "stop", total_duration=elapsed,
                prompt_eval_count=int(job.record.get("prompt_tokens") or 0),
                eval_count=int(job.record.get("completion_tokens") or 0))
    return body


def line(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False) + "\n"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
