"""The HTTP API beside the pages: JSON under /api, Server-Sent Events under /stream, /health and /metrics.

Handlers read and write through the job store's asyncio face (:mod:`tasks.store`), so the NiceGUI event loop
never waits on Redis; SSE clients follow their job through the app's one shared reader (:mod:`ui.bus`) and hold
no Redis connection of their own. Every refusal is a 4xx with ``{"detail", "code"}``: ``detail`` is for a
person, ``code`` is what the UI translates.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Literal

import redis
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from sse_starlette import EventSourceResponse

from tasks import backends, metrics
from tasks.fold import JobState
from tasks.connection import get_async_redis
from tasks.settings import settings
from tasks.identities import Identity
from tasks.store import JobError, Submitted, async_store
from ui import bus, fastpath, identity, limits

router = APIRouter()
EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
MAX_ID_PART = 2**64 - 1


def is_event_id(value: str) -> bool:
    """Whether ``value`` could be an id of a stream entry: two numbers of at most 64 bits. (Twenty digits may be
    more than that, and Redis refuses such an id: the stream would end, silent, after its 200.)"""
    return bool(EVENT_ID.match(value)) and all(int(part) <= MAX_ID_PART for part in value.split("-"))


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for a person")
    code: str = Field(description="Stable error code (the UI translates it)")


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 429)}


class SamplingOptions(BaseModel):
    """How the model samples its answer; anything unset is the server's default."""

    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    num_ctx: int | None = Field(None, ge=256, le=1_048_576, description="Context length (Ollama servers)")
    max_tokens: int | None = Field(None, ge=1, le=131_072, description="Longest answer, in tokens")


def sampling(values: dict) -> dict:
    """Sampling options given under other names (the doors'): checked like the API's own, the unset left out."""
    try:
        return SamplingOptions(**{k: v for k, v in values.items() if v is not None}).model_dump(exclude_none=True)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise JobError("invalid_request", f"Invalid options: {problems}.") from None


class ChatRequest(BaseModel):
    message: str = Field(description="The question; non-blank, at most MAX_PROMPT_CHARS characters",
                         json_schema_extra={"minLength": 1, "maxLength": settings.max_prompt_chars, "pattern": r"\S"})
    priority: Literal["high", "normal", "low"] = "normal"
    model: str | None = Field(None, max_length=200, description="A model (or alias) some server offers; "
                              "default OLLAMA_MODEL")
    conversation_id: str | None = Field(None, max_length=64, description="Continue this conversation")
    options: SamplingOptions | None = None


class ChatAccepted(BaseModel):
    job_id: str
    conversation_id: str | None
    status: Literal["queued"]
    position: int


async def api_identity(request: Request) -> Identity:
    """FastAPI dependency: who is calling (401 when nobody may be), counted against their request budget."""
    who = await identity.for_api(request)
    await limits.check_identity(who)
    return who


@router.post("/api/chat", status_code=202, response_model=ChatAccepted, responses=ERRORS)
async def post_chat(body: ChatRequest, who: Identity = Depends(api_identity),
                    idempotency_key: str | None = Header(None, max_length=200)) -> dict:
    """Queue a message. The answer streams from ``/stream/status/{job_id}``.

    With an ``Idempotency-Key`` header, repeating the same request (e.g. after a lost answer) within 24 h
    returns the job the first one made instead of making another."""
    submitted = await submit(who, body.message, priority=body.priority, model=body.model,
                             conversation_id=body.conversation_id, idempotency_key=idempotency_key,
                             options=body.options.model_dump(exclude_none=True) if body.options else None)
    job = await async_store().job(submitted.job_id, user=who.id) if submitted.repeated else None
    return {"job_id": submitted.job_id,
            "conversation_id": job.conversation_id if job else submitted.conversation_id,
            "status": "queued", "position": (job.position or 0) if job else submitted.position}


async def submit(who: Identity, message: object, **fields) -> Submitted:
    """The store's submit on behalf of ``who``: within their priority ceiling, waiting limit and daily quota.
    Also used by the OpenAI and Ollama doors."""
    await limits.allow(who, fields.get("priority", "normal"))
    return await async_store().submit(message, user=who.id, max_waiting=who.waiting_limit, **fields)


@router.get("/api/jobs/{job_id}", responses=ERRORS)
async def get_job(job_id: str, who: Identity = Depends(api_identity)) -> dict:
    """A job's status, live position and ETA, progress and answer so far."""
    return await public(await find_job(job_id, who))


@router.delete("/api/jobs/{job_id}", responses=ERRORS)
async def delete_job(job_id: str, who: Identity = Depends(api_identity)) -> dict:
    """Cancel: a waiting job leaves the queue at once; a running one stops within a second."""
    outcome = await async_store().cancel(job_id, user=who.id)
    if outcome == "missing":
        raise JobError("job_not_found", "No such job.", status=404)
    if outcome == "final":
        raise JobError("already_finished", "The job has already finished.", status=409)
    return {**await public(await find_job(job_id, who)), "cancel": outcome}


@router.get("/stream/status/{job_id}", responses=ERRORS,
            response_description="text/event-stream: status, token, thinking, reset, done")
async def stream_status(job_id: str, request: Request, last_event_id: str | None = Header(None, max_length=50),
                        who: Identity = Depends(api_identity)):
    """Server-Sent Events for one job; reconnect with ``Last-Event-ID`` to resume without loss or repeats."""
    await find_job(job_id, who)
    if last_event_id is not None and not is_event_id(last_event_id):
        raise JobError("bad_event_id", "Last-Event-ID must be an event id this stream sent (like 1700000000000-0).",
                       status=400)
    slot = limits.stream_slot(who)
    return EventSourceResponse(job_events(job_id, last_event_id or "0-0", request, slot), ping=15,
                               background=BackgroundTask(slot.release))  # also if the stream never started


@router.get("/api/history", responses=ERRORS)
async def get_history(who: Identity = Depends(api_identity)) -> dict:
    """The caller's latest jobs (HISTORY_SIZE at most), newest first, without their answers (``GET
    /api/jobs/{id}`` has each one's). The same from every app instance: it is read from Redis."""
    return {"jobs": [job.public(with_answer=False) for job in await async_store().history(who.id)]}


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
    """Every model some LLM server offers, where each can run, and the default (from the servers' last check,
    not a call to them per request)."""
    views = await models_by_server()
    where: dict[str, list[str]] = {}
    for view in views:
        for model in view["models"] or []:
            where.setdefault(model, []).append(view["name"])
    aliases = {alias: list(members) for alias, members in backends.fleet().aliases.items()}
    return {"models": sorted(where) + sorted(aliases), "default": settings.ollama_model, "servers": where,
            "aliases": aliases}


async def models_by_server() -> list[dict]:
    """The servers as last checked (the bus's copy, refreshed every ~2 s; read from Redis before its first)."""
    return bus.health.backends if bus.health.checked else await async_store().backends()


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
    """Install the routes (with the OpenAI and Ollama doors) and the error handlers on the NiceGUI app."""
    from ui.doors import ollama, openai

    app.include_router(router)
    app.include_router(openai.router)
    app.include_router(ollama.router)
    app.add_middleware(limits.BodySizeLimit, max_bytes=limits.max_body_bytes())
    app.add_exception_handler(JobError, job_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(redis.RedisError, redis_error)
    fastpath.install(app)  # these routes skip NiceGUI's page middlewares


# --- helpers ------------------------------------------------------------------------------------------

async def find_job(job_id: str, who: Identity) -> JobState:
    job = await async_store().job(job_id, user=who.id)
    if job is None:
        raise JobError("job_not_found", "No such job.", status=404)
    return job


async def public(job: JobState) -> dict:
    """The job as the API shows it; a waiting job's ETA counts the servers that serve its model (none while
    every one of them is down: then ``blocked`` says why, and no time can be promised)."""
    body = job.public()
    if job.waiting:
        body["eta_seconds"] = None if job.blocked else await async_store().eta(job.position, job.model)
    return body


async def job_events(job_id: str, after: str, request: Request, slot: limits.StreamSlot):
    """The job's stream from ``after`` on, as SSE events; between entries, position and ETA changes."""
    changes: asyncio.Queue[list] = asyncio.Queue()
    job = await bus.follow(job_id, changes.put_nowait, after=after)
    try:
        if job is None:
            return
        last_id, shown = after, None
        while not job.finished or not changes.empty():
            try:
                entries = await asyncio.wait_for(changes.get(), timeout=1.0)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            for entry_id, entry in entries:
                last_id = entry_id
                event = entry_event(entry)
                if event:
                    yield {"id": entry_id, **event}
                if entry.get("k") == "done":
                    yield {"id": entry_id, "event": "done", "data": json.dumps(await final(job_id))}
                    return
            if job.waiting and (job.position, job.eta_seconds, job.blocked) != shown:
                shown = (job.position, job.eta_seconds, job.blocked)
                yield {"id": last_id, "event": "status", "data": json.dumps(job.public(with_answer=False))}
        # ended before (or while) we looked, its 'done' entry before ``after`` or expired with the stream
        yield {"id": last_id, "event": "done", "data": json.dumps(await final(job_id))}
    finally:
        bus.unfollow(job_id, changes.put_nowait)
        slot.release()


async def final(job_id: str) -> dict:
    """The ended job as the API shows it (its stored answer, which may differ from the streamed tokens: a
    suggestion is trimmed)."""
    job = await async_store().job(job_id)
    return job.public() if job else {"job_id": job_id, "status": "cancelled"}


def entry_event(entry: dict) -> dict | None:
    """A stream entry as an SSE event (``done`` is sent with the final job instead)."""
    kind, data = entry.get("k"), entry.get("d", "")
    if kind == "token":
        return {"event": "token", "data": json.dumps({"text": data})}
    if kind == "think":
        return {"event": "thinking", "data": json.dumps({"text": data})}
    if kind == "reset":
        return {"event": "reset", "data": json.dumps({"attempt": int(entry.get("a") or 0)})}
    if kind == "status":
        return {"event": "status", "data": data}
    return None


async def probe_health() -> dict:
    """Redis now; the workers and LLM servers as the bus last saw them (every ~2 s)."""
    try:
        workers = await metrics.workers_online(get_async_redis())
        redis_ok = True
    except redis.RedisError:
        redis_ok, workers = False, 0
    health = bus.health
    servers = {view["name"]: view["state"] for view in health.backends}
    default_ok = settings.ollama_model in health.models or not health.models
    ok = redis_ok and health.llm and workers > 0 and default_ok
    return {"status": "ok" if ok else "degraded", "redis": redis_ok, "ollama": health.llm, "llm": health.llm,
            "workers": workers, "backends": servers,
            "default_model": settings.ollama_model, "default_model_available": default_ok}


async def job_error(request: Request, error: JobError) -> JSONResponse:
    """A refusal, shaped as the caller's protocol expects it: OpenAI's and Ollama's doors have their own."""
    from ui.doors import openai

    headers = {"Retry-After": str(error.params.get("retry_after", 30))} if error.status == 429 else None
    path = request.url.path
    if path.startswith("/v1/"):
        body = openai.error_body(error)
    elif path.startswith("/ollama/"):
        body = {"error": error.message, "code": error.code}
    else:
        body = {"detail": error.message, "code": error.code, **error.params}
    return JSONResponse(body, status_code=error.status, headers=headers)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """One readable sentence per problem instead of FastAPI's nested list."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        if item.get("type") == "json_invalid":
            problems.append("The request body is not valid JSON.")
        else:
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}.")
    return await job_error(request, JobError("invalid_request", " ".join(problems)))


async def redis_error(request: Request, error: redis.RedisError) -> JSONResponse:
    return JSONResponse({"detail": "Redis is unavailable; try again shortly.", "code": "redis_unavailable"},
                        status_code=503, headers={"Retry-After": "5"})
