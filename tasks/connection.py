"""Redis connections, one pool per process and per kind (sync for the API, asyncio for actors and the bus).

Connections are made lazily so that `main.py` and the tests can decide the URL before first use.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.asyncio.retry import Retry as AsyncRetry
from redis.retry import Retry

from tasks.settings import settings

KEY_PREFIX = "qc:"

_sync: redis.Redis | None = None
_async: dict[int, aioredis.Redis] = {}


def redis_url() -> str:
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set: start queuechat with `uv run main.py`, which embeds Redis")
    return settings.redis_url


def _options(retry_class=Retry) -> dict:
    """Short timeouts and a few quick retries: a restarting Redis is waited for, a dead one is reported."""
    return dict(decode_responses=True, socket_connect_timeout=2, health_check_interval=10,
                retry=retry_class(ExponentialBackoff(cap=1.0, base=0.05), 3),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def get_redis() -> redis.Redis:
    """The process-wide synchronous client (thread-safe pool)."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(redis_url(), **_options())
    return _sync


def get_async_redis() -> aioredis.Redis:
    """An asyncio client for the running event loop (pools cannot cross loops)."""
    import asyncio

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
