"""Per-client request limits (API_RATE_PER_MIN), shared by the API and the chat box, and the body-size limit.

Requests per minute are counted in a sliding window by the ``limits`` package, in the same Redis (under its own
key prefix), so every app replica shares one budget per client. Its asyncio face (``limits.aio``) on the app's
asyncio pool: a request is counted on the event loop, without a thread.
"""

from __future__ import annotations

import time

from collections import Counter
from collections.abc import Callable

from limits import RateLimitItemPerDay, RateLimitItemPerMinute
from limits import storage as sync_storage
from limits import strategies as sync_strategies
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from tasks.connection import get_async_redis, get_redis, redis_url
from tasks.identities import Identity
from tasks.queue import PRIORITY_LEVELS
from tasks.settings import settings
from tasks.store import JobError, Submitted, async_store

KEY_PREFIX = "qc-limits"
_limiters: dict[int, tuple[object, SlidingWindowCounterRateLimiter]] = {}
_page_limiter: tuple[object, sync_strategies.SlidingWindowCounterRateLimiter] | None = None


def limiter() -> SlidingWindowCounterRateLimiter:
    """The limiter on the running event loop's Redis pool (rebuilt when the pool changes, e.g. between tests)."""
    client = get_async_redis()
    made = _limiters.get(id(client))
    if made is None or made[0] is not client.connection_pool:
        storage = RedisStorage("async+" + _storage_url(), implementation="redispy",
                               connection_pool=client.connection_pool, key_prefix=KEY_PREFIX)
        made = _limiters[id(client)] = (client.connection_pool, SlidingWindowCounterRateLimiter(storage))
    return made[1]


def _storage_url() -> str:
    """Our Redis URL as ``limits`` names it: main.py's embedded Redis is a unix socket (``unix://``), which limits'
    asyncio storage calls ``redis+unix://`` (and takes anything else for Valkey)."""
    url = redis_url()
    return "redis+" + url if url.startswith("unix://") else url


def _page_budget() -> sync_strategies.SlidingWindowCounterRateLimiter:
    """The same limiter over this process's synchronous pool, for :func:`open_page` alone."""
    global _page_limiter
    pool = get_redis().connection_pool
    if _page_limiter is None or _page_limiter[0] is not pool:
        storage = sync_storage.RedisStorage(_storage_url(), connection_pool=pool, key_prefix=KEY_PREFIX)
        _page_limiter = (pool, sync_strategies.SlidingWindowCounterRateLimiter(storage))
    return _page_limiter[1]


def _per_minute(per_minute: int | None) -> RateLimitItemPerMinute | None:
    """The request budget: ``per_minute`` (an API key's own), else API_RATE_PER_MIN; None when it is off."""
    per_minute = per_minute or settings.api_rate_per_min
    return RateLimitItemPerMinute(per_minute) if per_minute else None


async def check(client_key: str, per_minute: int | None = None) -> None:
    """Count one request of ``client_key``; raise a 429 JobError when it is over the limit."""
    item = _per_minute(per_minute)
    if item is not None and not await limiter().hit(item, client_key):
        stats = await limiter().get_window_stats(item, client_key)
        raise _rate_limited(item, stats.reset_time)


async def check_identity(who: Identity) -> None:
    """One request of ``who``: its own per-minute limit (an API key's), else API_RATE_PER_MIN."""
    await check("id:" + who.id, who.rate_per_min or None)


async def check_quota(who: Identity) -> None:
    """One job of ``who`` against its daily quota (an API key's ``--quota``), if it has one."""
    if who.quota_per_day:
        item = RateLimitItemPerDay(who.quota_per_day)
        if not await limiter().hit(item, "quota:" + who.id):
            stats = await limiter().get_window_stats(item, "quota:" + who.id)
            raise _refused(item, stats.reset_time, "quota_exceeded",
                           f"Your daily quota of {who.quota_per_day} messages is used up.")


def _rate_limited(item: RateLimitItemPerMinute, reset_time: float) -> JobError:
    return _refused(item, reset_time, "rate_limited", f"Too many requests: at most {item.amount} a minute.")


def _refused(item, reset_time: float, code: str, message: str) -> JobError:
    wait = max(1, int(reset_time - time.time()) + 1)
    return JobError(code, f"{message} Try again in {wait} s.", status=429, limit=item.amount, retry_after=wait)


async def allow(who: Identity, priority: object) -> None:
    """What ``who`` may submit: a priority within their ceiling (403, not a silent downgrade), one more job of
    their daily quota."""
    if isinstance(priority, str) and priority in PRIORITY_LEVELS and not who.may_use(priority):
        raise JobError("priority_not_allowed", f"Priority {priority!r} is above what you may use "
                       f"({who.max_priority}).", status=403, allowed=who.max_priority)
    await check_quota(who)


async def submit_as(who: Identity, message: str, **options) -> Submitted:
    """The store's submit for the chat box on behalf of ``who``: their request budget, ceiling, quota and
    waiting limit."""
    await check_identity(who)
    await allow(who, options.get("priority", "normal"))
    return await async_store().submit(message, user=who.id, max_waiting=who.waiting_limit, **options)


class StreamSlot:
    """One of the open streams an identity may hold in this app process (MAX_STREAMS_PER_CLIENT); released
    when the stream ends. Refused with 429 beyond the limit."""

    open: Counter[str] = Counter()

    def __init__(self, who: Identity) -> None:
        if self.open[who.id] >= settings.max_streams_per_client:
            raise JobError("too_many_streams", f"At most {settings.max_streams_per_client} open streams per "
                           "client: close one first.", status=429, limit=settings.max_streams_per_client)
        self.who, self.held = who, True
        self.open[who.id] += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self.open[self.who.id] -= 1
            if self.open[self.who.id] <= 0:
                del self.open[self.who.id]


def stream_slot(who: Identity) -> StreamSlot:
    return StreamSlot(who)


def open_page(who: Identity, client_id: str) -> Callable[[], None]:
    """A page of ``who`` opens: counted against their request budget and their open streams (a page holds a
    websocket as an SSE client holds a stream); returns what to call when it closes. JobError 429 beyond.

    Synchronous, on the synchronous client, with the same budget: a page's builder stays synchronous, since NiceGUI
    runs an async one as a task it waits on for at most 3 s, and under 200 page loads at once a third of them
    were served that timeout's error page instead (the fan-out benchmark)."""
    item, key = _per_minute(who.rate_per_min or None), "id:" + who.id
    if item is not None and not _page_budget().hit(item, key):
        raise _rate_limited(item, _page_budget().get_window_stats(item, key).reset_time)
    slot = StreamSlot(who)
    return slot.release


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
    """Room for the longest chat a door's client may send (32 messages' worth, 4 bytes per character in UTF-8)
    and the other fields; each field's own limit is checked after."""
    return settings.max_prompt_chars * 32 * 4 + 65536
