"""The app process's one live connection to the queue: pages subscribe here and never talk to Redis pub/sub.

Setup (main.py, before ``ui.run``)::

    from ui import bus
    bus.create()        # registers bus.start / bus.stop with app.on_startup / app.on_shutdown
    # bus.start() does the same from inside a running event loop (idempotent)

In a page or component (inside a UI context; subscriptions end with their client, or call ``unsubscribe``)::

    bus.job_changed.subscribe(on_job)        # on_job(job_id): that job's hash changed (status, phase, cancel, ...)
    bus.queue_changed.subscribe(on_queue)    # on_queue(): positions may have moved (coalesced to <= 10 per second)
    bus.reconnected.subscribe(on_resync)     # on_resync(): Redis is back after an outage; re-read what you show
    bus.entries.subscribe(on_entries)        # on_entries(job_id, [(entry_id, {'k': ..., 'd': ..., 'a': ...}), ...])
    bus.watch(job_id, after=last_id)         # tail that job's token Stream from ``after`` (reference-counted) ...
    bus.unwatch(job_id)                      # ... until every watcher let go
    bus.health                               # bindable: .redis (bool), .llm (bool), .workers (int), .models, .checked
    bus.health_changed.subscribe(cb)         # cb(): after a poll (every ~2 s) that changed something
    await bus.stats(); await bus.series()    # metrics.stats() / metrics.series(), cached for all pages
    await bus.eta(position)                  # metrics.eta_seconds(position), cached briefly

Following a job without gaps: (1) subscribe to ``bus.entries`` and buffer, (2) read the Stream yourself
(``jobs.read_stream``) and fold it, (3) ``bus.watch(job_id, after=<last id read>)``, (4) apply entries whose id
is newer than the last one applied. The bus only emits entries it read after (2) began, so nothing is lost, and
comparing ids drops the duplicates.

Redis going away is survived: every loop reconnects with backoff, ``health.redis`` is False meanwhile, and
``reconnected`` fires once the pub/sub subscription is back (messages published meanwhile are lost, entries
are not: Stream cursors resume where they were).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import field
from typing import Any

from nicegui import Event, app, background_tasks, run
from nicegui.binding import bindable_dataclass
from redis.exceptions import RedisError

from tasks import metrics, queue
from tasks.connection import get_async_redis, get_redis
from tasks.llm import LLMError, OllamaClient

log = logging.getLogger('queuechat.ui.bus')

STREAM_PREFIX = queue.stream_key('')
REDIS_ERRORS = (RedisError, OSError, RuntimeError, asyncio.TimeoutError)


@bindable_dataclass
class Health:
    """What the header shows; every field is bindable (``ui.label().bind_text_from(bus.health, 'workers')``)."""

    redis: bool = False
    llm: bool = False
    workers: int = 0
    models: list[str] = field(default_factory=list)
    checked: bool = False  # False until the first poll finished


class Bus:
    """One pub/sub listener, one XREAD loop and one health poller for the whole app process."""

    POLL_SECONDS = 2.0
    MODELS_SECONDS = 15.0
    BLOCK_MS = 250
    QUEUE_COALESCE_SECONDS = 0.1
    STATS_SECONDS = 0.9
    SERIES_SECONDS = 3.0
    ETA_SECONDS = 2.0

    def __init__(self) -> None:
        self.job_changed: Event[str] = Event()
        self.queue_changed: Event[[]] = Event()
        self.entries: Event[str, list] = Event()
        self.reconnected: Event[[]] = Event()
        self.health_changed: Event[[]] = Event()
        self.health = Health()
        self._cursors: dict[str, str] = {}
        self._refs: Counter[str] = Counter()
        self._watch_added = asyncio.Event()
        self._queue_pending = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._llm: OllamaClient | None = None
        self._stats: dict | None = None
        self._stats_at = 0.0
        self._series: list[dict] | None = None
        self._series_at = 0.0
        self._eta: dict[int, tuple[float, int | None]] = {}
        self._lock = asyncio.Lock()

    # --- watching streams ---------------------------------------------------------------------------

    def watch(self, job_id: str, after: str = '0-0') -> None:
        """Tail ``job_id``'s Stream from the entry after ``after`` (kept if already tailed). Reference-counted."""
        self._refs[job_id] += 1
        if job_id not in self._cursors:
            self._cursors[job_id] = after if after not in ('', '-', '0') else '0-0'
            self._watch_added.set()

    def unwatch(self, job_id: str) -> None:
        if self._refs[job_id] <= 1:
            self._refs.pop(job_id, None)
            self._cursors.pop(job_id, None)
        else:
            self._refs[job_id] -= 1

    @property
    def watched(self) -> dict[str, str]:
        """Job id -> cursor of the Streams being tailed (a copy, for diagnostics and tests)."""
        return dict(self._cursors)

    # --- cached figures -------------------------------------------------------------------------------

    async def stats(self) -> dict | None:
        """``metrics.stats()``, at most once per ~second for all pages together; None while Redis is down."""
        if time.monotonic() - self._stats_at < self.STATS_SECONDS:
            return self._stats
        async with self._lock:
            if time.monotonic() - self._stats_at >= self.STATS_SECONDS:
                self._stats = await self._call(metrics.stats)
                self._stats_at = time.monotonic()
        return self._stats

    async def series(self) -> list[dict] | None:
        """``metrics.series()`` (last 30 minutes), refreshed every few seconds."""
        if time.monotonic() - self._series_at < self.SERIES_SECONDS:
            return self._series
        async with self._lock:
            if time.monotonic() - self._series_at >= self.SERIES_SECONDS:
                self._series = await self._call(metrics.series)
                self._series_at = time.monotonic()
        return self._series

    async def eta(self, position: int | None) -> int | None:
        """``metrics.eta_seconds(position)``, cached per position for a couple of seconds."""
        if position is None:
            return None
        cached = self._eta.get(position)
        if cached and time.monotonic() - cached[0] < self.ETA_SECONDS:
            return cached[1]
        value = await self._call(metrics.eta_seconds, position)
        if len(self._eta) > 1000:
            self._eta.clear()
        self._eta[position] = (time.monotonic(), value)
        return value

    @staticmethod
    async def _call(function: Any, *args: Any) -> Any:
        try:
            return await run.io_bound(function, *args)
        except REDIS_ERRORS as error:
            log.debug('%s failed: %s', getattr(function, '__name__', function), error)
            return None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loops in the running event loop (idempotent)."""
        if self._tasks:
            return
        self._watch_added = asyncio.Event()
        self._queue_pending = asyncio.Event()
        self._lock = asyncio.Lock()
        if self._cursors:
            self._watch_added.set()
        for name, loop in (('listen', self._listen), ('tail', self._tail), ('health', self._poll_health),
                           ('queue', self._emit_queue_changes)):
            self._tasks.append(background_tasks.create(loop(), name=f'bus-{name}'))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._llm is not None:
            with contextlib.suppress(Exception):
                await self._llm.http.aclose()
            self._llm = None

    # --- the loops --------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe to qc:events and fan out; resubscribe after any failure."""
        delay, failed = 0.2, False
        while True:
            pubsub = None
            try:
                pubsub = get_async_redis().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(queue.EVENTS)
                delay = 0.2
                if failed:
                    failed = False
                    log.info('Redis pub/sub is back')
                    self._set_health(redis=True)
                    self.reconnected.emit()
                    self._queue_pending.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message.get('type') == 'message':
                        self._dispatch(message['data'])
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as error:
                if not failed:
                    log.warning('Redis pub/sub lost: %s', error)
                failed = True
                self._set_health(redis=False, workers=0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    def _dispatch(self, data: str) -> None:
        if data == queue.QUEUE_CHANGED:
            self._queue_pending.set()
        else:
            self.job_changed.emit(data)

    async def _emit_queue_changes(self) -> None:
        """At most one queue_changed per 100 ms: a burst of submissions is one refresh for every page."""
        while True:
            await self._queue_pending.wait()
            self._queue_pending.clear()
            self.queue_changed.emit()
            await asyncio.sleep(self.QUEUE_COALESCE_SECONDS)

    async def _tail(self) -> None:
        """One XREAD over every watched Stream; entries go out per job, in order."""
        delay = 0.2
        while True:
            if not self._cursors:
                self._watch_added.clear()
                await self._watch_added.wait()
                continue
            streams = {STREAM_PREFIX + job_id: cursor for job_id, cursor in self._cursors.items()}
            try:
                reply = await get_async_redis().xread(streams, count=1000, block=self.BLOCK_MS)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as error:
                log.debug('XREAD failed: %s', error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            for key, items in (reply.items() if isinstance(reply, dict) else reply or []):
                job_id = key[len(STREAM_PREFIX):]
                if job_id not in self._cursors or not items:
                    continue
                items = [item for item in items if _newer(item[0], self._cursors[job_id])]
                if items:
                    self._cursors[job_id] = items[-1][0]
                    self.entries.emit(job_id, items)

    async def _poll_health(self) -> None:
        models_at = float('-inf')
        while True:
            try:
                if await self._check_health(models_due=time.monotonic() - models_at > self.MODELS_SECONDS):
                    models_at = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive any surprise
                log.exception('health poll failed')
            await asyncio.sleep(self.POLL_SECONDS)

    async def _check_health(self, models_due: bool) -> bool:
        """Poll Redis, workers and the LLM once; True when the model list was refreshed."""
        redis_ok = await self._ping()
        workers = await self._call(metrics.workers_online, get_redis()) if redis_ok else 0
        if self._llm is None:
            self._llm = OllamaClient()
        llm_ok = await self._llm.is_up()
        models, refreshed = self.health.models, False
        if llm_ok and models_due:
            with contextlib.suppress(LLMError):
                models, refreshed = sorted(await self._llm.list_models()), True
        self._set_health(redis=redis_ok, llm=llm_ok, workers=int(workers or 0), models=models, checked=True)
        return refreshed

    @staticmethod
    async def _ping() -> bool:
        try:
            return bool(await asyncio.wait_for(get_async_redis().ping(), 3.0))
        except REDIS_ERRORS:
            return False

    def _set_health(self, **values: Any) -> None:
        changed = False
        for name, value in values.items():
            if getattr(self.health, name) != value:
                setattr(self.health, name, value)
                changed = True
        if changed:
            self.health_changed.emit()


def _newer(entry_id: str, cursor: str) -> bool:
    return _id_key(entry_id) > _id_key(cursor)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition('-')
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def newer(entry_id: str, cursor: str | None) -> bool:
    """Whether Stream entry ``entry_id`` comes after ``cursor`` (None = before everything)."""
    return cursor is None or _newer(entry_id, cursor)


bus = Bus()
job_changed = bus.job_changed
queue_changed = bus.queue_changed
entries = bus.entries
reconnected = bus.reconnected
health_changed = bus.health_changed
health = bus.health
watch = bus.watch
unwatch = bus.unwatch
stats = bus.stats
series = bus.series
eta = bus.eta
_registered = False


def create() -> Bus:
    """Register the bus with the app: started on startup, stopped on shutdown. Call once before ``ui.run``."""
    global _registered  # noqa: PLW0603
    if not _registered:
        _registered = True
        app.on_startup(start)
        app.on_shutdown(bus.stop)
    return bus


def start() -> Bus:
    """Start the bus now when an event loop runs (e.g. in an on_startup handler), else on app startup."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        create()
        return bus
    bus.start()
    return bus
