"""Per-client request limits (API_RATE_PER_MIN), shared by the API and the chat box.

A one-minute fixed window per client in Redis: simple, shared by every app replica, and bounded in memory
(each counter expires with its window).
"""

from __future__ import annotations

from fastapi import Request

from tasks.connection import KEY_PREFIX, get_redis
from tasks.jobs import JobError
from tasks.settings import settings


def check(client_key: str) -> None:
    """Count one request of ``client_key``; raise a 429 JobError when it is over the limit."""
    if not settings.api_rate_per_min:
        return
    client = get_redis()
    seconds, _ = client.time()
    window = int(seconds) // 60
    key = f"{KEY_PREFIX}rl:{client_key}:{window}"
    pipe = client.pipeline()
    pipe.incr(key)
    pipe.expire(key, 61)
    count, _ = pipe.execute()
    if count > settings.api_rate_per_min:
        raise JobError("rate_limited", f"Too many requests: at most {settings.api_rate_per_min} a minute. "
                       f"Try again in {60 - int(seconds) % 60} s.", status=429, limit=settings.api_rate_per_min)


def per_client(request: Request) -> None:
    """FastAPI dependency: limit by the caller's address."""
    check("ip:" + (request.client.host if request.client else "unknown"))
