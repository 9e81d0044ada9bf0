"""The HTTP API beside the pages: JSON under /api, Server-Sent Events under /stream, /health and /metrics.

Handlers that touch Redis synchronously are plain ``def`` so FastAPI runs them in its thread pool and the
NiceGUI event loop never waits on Redis. Every refusal is a 4xx with ``{"detail", "code"}``: ``detail`` is
for a person, ``code`` is what the UI translates.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Literal

import redis
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from tasks import jobs, metrics, queue
from tasks.connection import get_async_redis, get_redis
from tasks.llm import OllamaClient
from tasks.settings import settings
from ui import limits

router = APIRouter()
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
SSE_POLL_MS = 500


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for a person")
    code: str = Field(description="Stable error code (the UI translates it)")


ERRORS = {status: {"model": ErrorBody} for status in (404, 409, 413, 422, 429)}


class ChatRequest(BaseModel):
    message: str = Field(description="The question; non-blank, at most MAX_PROMPT_CHARS characters",
                         json_schema_extra={"minLength": 1, "maxLength": settings.max_prompt_chars, "pattern": r"\S"})
    priority: Literal["high", "normal", "low"] = "normal"
    model: str | None = Field(None, max_length=200, description="Ollama model; default OLLAMA_MODEL")
    conversation_id: str | None = Field(None, max_length=64, description="Continue this conversation")


class ChatAccepted(BaseModel):
    job_id: str
    conversation_id: str | None
    status: Literal["queued"]
    position: int


@router.post("/api/chat", status_code=202, response_model=ChatAccepted, responses=ERRORS,
             dependencies=[Depends(limits.per_client)])
def post_chat(body: ChatRequest, x_queuechat_user: str | None = Header(None, max_length=64)) -> dict:
    """Queue a message. The answer streams from ``/stream/status/{job_id}``."""
    submitted = jobs.submit(body.message, user=x_queuechat_user or "api", priority=body.priority,
                            model=body.model, conversation_id=body.conversation_id)
    return {"job_id": submitted.job_id, "conversation_id": submitted.conversation_id, "status": "queued",
            "position": submitted.position}


@router.get("/api/jobs/{job_id}", responses=ERRORS)
def get_job(job_id: str) -> dict:
    """A job's status, live position and ETA, progress and answer so far."""
    return with_eta(find_job(job_id))


@router.delete("/api/jobs/{job_id}", responses=ERRORS, dependencies=[Depends(limits.per_client)])
def delete_job(job_id: str) -> dict:
    """Cancel: a waiting job leaves the queue at once; a running one stops within a second."""
    find_job(job_id)
    outcome = jobs.cancel(job_id)
    if outcome == "final":
        raise jobs.JobError("already_finished", "The job has already finished.", status=409)
    return {**jobs.get_job(job_id), "cancel": outcome}


@router.get("/stream/status/{job_id}", responses=ERRORS,
            response_description="text/event-stream: status, token, thinking, reset, done")
async def stream_status(job_id: str, request: Request, last_event_id: str | None = Header(None)):
    """Server-Sent Events for one job; reconnect with ``Last-Event-ID`` to resume without loss or repeats."""
    raw = await get_async_redis().hgetall(queue.job_key(job_id)) if JOB_ID.match(job_id) else None
    if not raw:
        raise jobs.JobError("job_not_found", "No such job.", status=404)
    after = last_event_id if last_event_id and re.match(r"^\d+-\d+$", last_event_id) else "0-0"
    return EventSourceResponse(job_events(job_id, raw, after, request), ping=15)


@router.get("/api/queue/stats")
def queue_stats() -> dict:
    """Queue depth per priority, running jobs, totals, response times, success rate and throughput."""
    return metrics.stats()


@router.get("/api/queue/series")
def queue_series() -> list[dict]:
    """Per-minute throughput and latency over the last 30 minutes (the chart's data)."""
    return metrics.series()


@router.get("/api/models")
async def models() -> dict:
    """Models installed on the LLM server, and the default."""
    async with OllamaClient() as llm:
        names = await llm.list_models() if await llm.is_up() else []
    return {"models": names, "default": settings.ollama_model}


@router.get("/health", responses={503: {"description": "Redis is down"}})
async def health() -> JSONResponse:
    """ok when Redis, the LLM and at least one worker answer; degraded otherwise; 503 without Redis."""
    state = await probe_health()
    status = 200 if state["redis"] else 503
    return JSONResponse(state, status_code=status)


@router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    """Prometheus text exposition of the queue figures."""
    registry = CollectorRegistry()
    registry.register(metrics.PrometheusCollector())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create(app: FastAPI) -> None:
    """Install the routes and the error handlers on the NiceGUI (FastAPI) app."""
    app.include_router(router)
    app.add_middleware(limits.BodySizeLimit, max_bytes=limits.max_body_bytes())
    app.add_exception_handler(jobs.JobError, job_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(redis.RedisError, redis_error)


# --- helpers ------------------------------------------------------------------------------------------

def find_job(job_id: str) -> dict:
    job = jobs.get_job(job_id) if JOB_ID.match(job_id) else None
    if job is None:
        raise jobs.JobError("job_not_found", "No such job.", status=404)
    return job


def with_eta(job: dict) -> dict:
    return {**job, "eta_seconds": metrics.eta_seconds(job["position"])}


async def job_events(job_id: str, raw: dict, after: str, request: Request):
    """Tail the job's Stream from ``after``; between entries, push position changes while it waits."""
    client = get_async_redis()
    key = queue.stream_key(job_id)
    last_id, position, state = after, None, {}
    while not await request.is_disconnected():
        replies = await client.xread({key: last_id}, block=SSE_POLL_MS, count=500)
        for entry_id, entry in replies[0][1] if replies else []:
            last_id = entry_id
            event = await entry_event(job_id, raw, entry, state)
            if event:
                yield {"id": entry_id, **event}
            if entry["k"] == "done":
                return
        if state.get("status") == "queued":
            moved = await client.zrank(queue.WAITING, job_id)
            if moved != position:
                position = moved
                yield {"id": last_id, "event": "status", "data": status_json(raw, state, position)}
        if not replies and not await client.exists(key):
            final = await asyncio.to_thread(jobs.get_job, job_id)  # the stream expired long after the end
            yield {"id": last_id, "event": "done", "data": json.dumps(final)}
            return


async def entry_event(job_id: str, raw: dict, entry: dict, state: dict) -> dict | None:
    kind, data = entry["k"], entry.get("d", "")
    if kind == "token":
        return {"event": "token", "data": json.dumps({"text": data})}
    if kind == "think":
        return {"event": "thinking", "data": json.dumps({"text": data})}
    if kind == "reset":
        return {"event": "reset", "data": json.dumps({"attempt": int(entry.get("a", 0))})}
    state.update(json.loads(data))
    if kind == "done":
        final = await asyncio.to_thread(jobs.get_job, job_id)
        return {"event": "done", "data": json.dumps(final)}
    position = await get_async_redis().zrank(queue.WAITING, job_id) if state.get("status") == "queued" else None
    return {"event": "status", "data": status_json(raw, state, position)}


def status_json(raw: dict, state: dict, position: int | None) -> str:
    body = jobs.public_job(raw, snapshot=state, position=position)
    body["eta_seconds"] = metrics.eta_seconds(position) if position is not None else None
    return json.dumps(body)


_llm_health = {"checked": 0.0, "up": False}


async def probe_health() -> dict:
    try:
        await get_async_redis().ping()
        redis_ok = True
        workers = await asyncio.to_thread(metrics.workers_online, get_redis())
    except redis.RedisError:
        redis_ok, workers = False, 0
    if time.monotonic() - _llm_health["checked"] > 3:
        async with OllamaClient() as llm:
            _llm_health.update(up=await llm.is_up(), checked=time.monotonic())
    ok = redis_ok and _llm_health["up"] and workers > 0
    return {"status": "ok" if ok else "degraded", "redis": redis_ok, "ollama": _llm_health["up"],
            "workers": workers}


async def job_error(request: Request, error: jobs.JobError) -> JSONResponse:
    headers = {"Retry-After": "30"} if error.status == 429 else None
    return JSONResponse({"detail": error.message, "code": error.code, **error.params}, status_code=error.status,
                        headers=headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """One readable sentence per problem instead of FastAPI's nested list."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        if item.get("type") == "json_invalid":
            problems.append("The request body is not valid JSON.")
        else:
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}.")
    return JSONResponse({"detail": " ".join(problems), "code": "invalid_request"}, status_code=422)


async def redis_error(request: Request, error: redis.RedisError) -> JSONResponse:
    return JSONResponse({"detail": "Redis is unavailable; try again shortly.", "code": "redis_unavailable"},
                        status_code=503, headers={"Retry-After": "5"})
