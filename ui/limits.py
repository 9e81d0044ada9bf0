"""Per-client request limits (API_RATE_PER_MIN), shared by the API and the chat box.

A one-minute fixed window per client in Redis: simple, shared by every app replica, and bounded in memory
(each counter expires with its window).
"""

from __future__ import annotations

from fastapi import Request

from tasks.connection import KEY_PREFIX, get_redis
from tasks import jobs
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


def submit_for_user(message: str, *, user: str, **options):
    """``tasks.jobs.submit`` for the chat box, counted against this browser user's request budget."""
    check("user:" + user)
    return jobs.submit(message, user=user, **options)


def per_client(request: Request) -> None:
    """FastAPI dependency: limit by the caller's address."""
    check("ip:" + (request.client.host if request.client else "unknown"))


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, never reading more than that.

    Checks Content-Length when given. A chunked body is counted as it arrives: past the limit the app gets
    an end of body (so it stops reading) and its answer is replaced by the 413.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        received, too_large = 0, False

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                too_large = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message):
            if not too_large:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send) -> None:
        body = (b'{"detail": "The request body is larger than %d bytes.", "code": "body_too_large"}'
                % self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def max_body_bytes() -> int:
    """Room for the longest message (4 bytes per character in UTF-8) and the other fields."""
    return settings.max_prompt_chars * 4 + 4096
