"""The OpenAI-compatible door: ``POST /v1/chat/completions`` (streamed as SSE chunks ending in ``[DONE]``, or
whole) and ``GET /v1/models``, with OpenAI-shaped errors. Point any OpenAI client at ``http://host:8080/v1``
with an API key of queuechat's.

While a streamed request waits in line, SSE comments (``: queued, position 3``) keep the connection alive;
the position at submission is also in the ``X-Queue-Position`` header. An answer that restarts after text was
sent (its LLM server failed mid-answer, and the job moved to another) can't be taken back in this protocol: the
stream ends with an error the client may retry.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tasks.fold import JobState
from tasks.identities import Identity
from tasks.settings import settings
from tasks.store import JobError
from ui import api
from ui.doors import follow

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])
FINISH_REASONS = {"stop": "stop", "length": "length"}
FAILED_STATUS = {"time_limit": 504}


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200)
    messages: list = Field(min_length=1, max_length=1000)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    max_tokens: int | None = Field(None, ge=1, le=131_072)
    max_completion_tokens: int | None = Field(None, ge=1, le=131_072)
    stream_options: dict | None = None


@router.get("/models")
async def list_models(who: Identity = Depends(api.api_identity)) -> dict:
    """The models (and aliases) the queue can run, as OpenAI lists models."""
    names = (await api.models())["models"]
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "queuechat"}
                                       for name in names]}


@router.post("/chat/completions", responses={
    200: {"description": "Server-sent events (``stream``: true) or one JSON object",
          "content": {"text/event-stream": {}, "application/json": {}}}})
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           who: Identity = Depends(api.api_identity)):
    messages, prompt = follow.DoorMessages.parse(body.messages, settings.max_prompt_chars * 32)
    options = api.sampling({"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
                            "max_tokens": body.max_completion_tokens or body.max_tokens})
    submitted = await follow.submit(who, request, messages, prompt, body.model, options)
    headers = {"X-Queue-Position": str(submitted.position), "X-Queue-Job": submitted.job_id}
    completion = f"chatcmpl-{submitted.job_id}"
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(stream(submitted.job_id, completion, body.model, request, usage),
                                 media_type="text/event-stream", headers=headers)
    job = await follow.outcome(submitted.job_id, request)
    if job is None:  # the client left: nobody to answer
        return JSONResponse({}, status_code=499)
    if job.status != "completed":
        return failed(job, headers)
    message = {"role": "assistant", "content": job.answer}
    if job.thinking:
        message["reasoning_content"] = job.thinking
    return JSONResponse({
        "id": completion, "object": "chat.completion", "created": int(time.time()), "model": body.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(job)}],
        "usage": usage_of(job)}, headers=headers)


async def stream(job_id: str, completion: str, model: str, request: Request, include_usage: bool):
    def chunk(delta: dict, reason: str | None = None) -> str:
        body = {"id": completion, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in follow.events(job_id, request):
        if event.kind == "waiting":
            position = event.job.position
            yield f": queued, position {position}\n\n" if position is not None else ": queued\n\n"
        elif event.kind == "token":
            yield chunk({"content": event.text})
        elif event.kind == "think":
            yield chunk({"reasoning_content": event.text})
        elif event.kind == "restart":
            yield error_event("The LLM server failed mid-answer and the answer started over: send the request "
                              "again.", "answer_restarted")
            return
        elif event.kind == "done":
            job = event.job
            if job is None or job.status != "completed":
                yield error_event(job.error if job and job.error else "The answer was not completed.",
                                  job.error_code if job else "cancelled")
                return
            yield chunk({}, finish_reason(job))
            if include_usage:
                yield "data: " + json.dumps({"id": completion, "object": "chat.completion.chunk",
                                             "created": int(time.time()), "model": model, "choices": [],
                                             "usage": usage_of(job)}) + "\n\n"
            yield "data: [DONE]\n\n"
            return


def error_event(message: str, code: str | None) -> str:
    return "data: " + json.dumps({"error": {"message": message, "type": "server_error", "code": code}}) + "\n\n"


def failed(job: JobState, headers: dict) -> JSONResponse:
    status = 499 if job.status == "cancelled" else FAILED_STATUS.get(job.error_code or "", 502)
    return JSONResponse({"error": {"message": job.error or f"The answer was {job.status}.", "type": "server_error",
                                   "code": job.error_code or job.status}}, status_code=status, headers=headers)


def finish_reason(job: JobState) -> str:
    return FINISH_REASONS.get(job.done_reason or "stop", "stop")


def usage_of(job: JobState) -> dict:
    prompt = int(job.record.get("prompt_tokens") or 0)
    completion = int(job.record.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def error_body(error: JobError) -> dict:
    """A refusal as OpenAI shapes errors (the app's handler uses it for /v1 paths)."""
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_exceeded"}.get(error.status, "invalid_request_error")
    return {"error": {"message": error.message, "type": kind, "code": error.code, "param": None}}

