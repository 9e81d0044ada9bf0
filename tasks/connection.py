"""Redis connections, one pool per process and per kind (sync for the API, asyncio for actors and the bus).

Connections are made lazily so that `main.py` and the tests can decide the URL before first use. Every socket
has a timeout (redis-py has none by default): a worker whose link to Redis went silent must notice within a
fraction of its lease, so that it stops its LLM call before the job is handed to someone else.
"""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry

from tasks.settings import settings

_sync: redis.Redis | None = None
_async: dict[int, aioredis.Redis] = {}


def redis_url() -> str:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set: start queuechat with `uv run main.py`, which embeds Redis")
    return settings.redis_url


def socket_timeout() -> float:
    """Seconds a Redis read may take: a third of a lease (at least 1 s, at most 5 s). Blocking commands wait
    at most half of it (:func:`block_seconds`)."""
    return max(1.0, min(5.0, settings.lease_ttl_ms / 3000))


def block_seconds() -> float:
    """The longest a blocking read (BLPOP, XREAD BLOCK) may ask Redis to wait."""
    return socket_timeout() / 2


def _options(retry_class=Retry) -> dict:
    """Short timeouts and a few quick retries: a restarting Redis is waited for, a dead one is reported."""
    return dict(decode_responses=True, socket_connect_timeout=2, socket_timeout=socket_timeout(),
                health_check_interval=10, retry=retry_class(ExponentialBackoff(cap=1.0, base=0.05), 3),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def get_redis() -> redis.Redis:
    """The process-wide synchronous client (thread-safe pool)."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(redis_url(), **_options())
    return _sync


def get_async_redis() -> aioredis.Redis:
    """An asyncio client for the running event loop (pools cannot cross loops)."""
    loop_id = id(asyncio.get_running_loop())
    client = _async.get(loop_id)
    if client is None:
        client = _async[loop_id] = aioredis.Redis.from_url(redis_url(), **_options(AsyncRetry))
    return client


def reset_connections() -> None:
    """Forget pools (after the URL changed, e.g. between test sessions)."""
    global _sync
    _sync = None
    _async.clear()


IDLE_KEPT = 4  # idle connections a pool keeps open: the most recently used, enough for an app at rest


async def close_idle(keep: int = IDLE_KEPT) -> int:
    """Close the idle connections of this process's pools beyond the ``keep`` most recently used; returns how
    many. redis-py pools only grow: a burst (a thousand SSE clients asking at once) would leave its connections
    open for ever. Called every few seconds; a connection closed here that is needed again is reopened on use.

    redis-py has no idle timeout, so this reaches into its pools (pinned below 7): a pool takes from the end of
    its list of idle connections and puts back there, so the front holds the least recently used."""
    closed = 0
    if _sync is not None:
        pool = _sync.connection_pool
        with pool._lock:  # the threads' pool: kept in it but disconnected, under its lock (none is taken meanwhile)
            for conn in pool._available_connections[:-keep or None]:
                if conn._sock is not None:
                    conn.disconnect()
                    closed += 1
    client = _async.get(id(asyncio.get_running_loop()))
    if client is not None:
        pool = client.connection_pool
        idle = pool._available_connections
        surplus, idle[:] = idle[:-keep or None], idle[-keep:] if keep else []  # no await in between: atomic here
        for conn in surplus:  # out of the pool (it counts only those in use), then closed
            closed += conn.is_connected
            await conn.disconnect()
    return closed
