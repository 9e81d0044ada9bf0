"""The app process's one live connection to the queue: pages and SSE clients follow jobs here, never in Redis.

One pub/sub subscription, one XREAD loop over the streams of every job that someone follows, one health poll —
for the whole process, however many pages and SSE clients are open (an idle follower holds no connection).

Setup (main.py, before ``ui.run``)::

    from ui import bus
    bus.create()        # registers bus.start / bus.stop with app.on_startup / app.on_shutdown

Following a job (a page's message, an SSE client)::

    job = await bus.follow(job_id, on_change)   # the job's shared JobState (tasks.fold), folded from its stream
    # on_change(entries) is called with the entries that each change folded in (in order, once each; an empty
    # list when only job.position / job.eta_seconds moved), until:
    bus.unfollow(job_id, on_change)
    job = await bus.follow(job_id, on_change, after=last_event_id)  # first replays the entries after that id

Every follower of a job shares one :class:`~tasks.fold.JobState`: it is read and folded once, then kept up to date
from the stream; positions and ETAs of the waiting ones are refreshed in one round trip whenever the queue moves
(and every couple of seconds, for the ETAs to count down).

Other news::

    bus.queue_changed.subscribe(cb)          # cb(): positions may have moved (coalesced to <= 10 per second)
    bus.user_changed.subscribe(cb)           # cb(user): that user's history or conversations changed
    bus.conversation_changed.subscribe(cb)   # cb(conversation_id): it got a new job
    bus.reconnected.subscribe(cb)            # cb(): Redis is back after an outage; re-read what you show
    bus.health                               # bindable: .redis (bool), .llm (bool), .workers (int), .models, .checked
    bus.health_changed.subscribe(cb)         # cb(): after a poll (every ~2 s) that changed something
    bus.figures                              # .stats, .series: metrics.stats() / metrics.series(), for all pages
    bus.figures_changed.subscribe(cb)        # cb(): they changed (read once a second while anyone subscribes)

Redis going away is survived: every loop reconnects with backoff, ``health.redis`` is False meanwhile, and
``reconnected`` fires once the pub/sub subscription is back (messages published meanwhile are lost, stream
entries are not: the stream cursors resume where they were).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nicegui import Event, app, background_tasks, run
from nicegui.binding import bindable_dataclass
from redis.exceptions import RedisError

from tasks import aio, backends, keys, metrics
from tasks.connection import block_seconds, close_idle, get_async_redis
from tasks.eta import eta_seconds
from tasks.fold import JobState, newer
from tasks.llm.base import close_shared_http
from tasks.settings import settings
from tasks.store import async_store

log = logging.getLogger('queuechat.ui.bus')

REDIS_ERRORS = (RedisError, OSError, RuntimeError, asyncio.TimeoutError)
Callback = Callable[[list], Any]


@bindable_dataclass
class Health:
    """What the header shows; every field is bindable (``ui.label().bind_text_from(bus.health, 'workers')``)."""

    redis: bool = False
    llm: bool = False      # at least one LLM server is up
    workers: int = 0
    models: list[str] = field(default_factory=list)   # every model (and alias) some server offers
    backends: list[dict] = field(default_factory=list)  # tasks.store.JobStore.backends()
    checked: bool = False  # False until the first poll finished


@dataclass
class Figures:
    """What the metrics drawers show, read once for all of them."""

    stats: dict | None = None         # metrics.stats(); None until read, and while Redis is down
    series: list[dict] | None = None  # metrics.series(): the last 30 minutes
    read: bool = False                # a read was tried: until then a drawer says neither 'Live' nor 'Offline'


@dataclass(eq=False)
class Followed:
    """A job someone follows: its shared state, where the tail has read its stream to, and who to tell."""

    job: JobState | None = None
    cursor: str = '0-0'
    callbacks: list[Callback] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once ``job`` is read (or could not be)
    cancelled: bool = False  # its first follower was cancelled before the job was read: the next one reads it
    # followers that resumed from an entry the tail had not read yet: what they have seen, not to be told again
    seen: dict[Callback, str] = field(default_factory=dict)


class Bus:
    POLL_SECONDS = 2.0
    QUEUE_COALESCE_SECONDS = 0.1
    POSITIONS_SECONDS = 2.0
    STATS_SECONDS = 1.0
    SERIES_SECONDS = 3.0
    FIGURES_AT_LEAST_SECONDS = 15.0  # relative times ('2 minutes ago') move on even when no figure does

    def __init__(self) -> None:
        self.queue_changed: Event[[]] = Event()
        self.user_changed: Event[str] = Event()
        self.conversation_changed: Event[str] = Event()
        self.reconnected: Event[[]] = Event()
        self.health_changed: Event[[]] = Event()
        self.health = Health()
        self.figures_changed: Event[[]] = Event()
        self.figures = Figures()
        self._jobs: dict[str, Followed] = {}
        self._tailing = asyncio.Event()
        self._queue_moved = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._warned: set[str] = set()
        self._wake, self._wake_cursor, self._blocking = keys.tail_wake(uuid.uuid4().hex), '0-0', False

    # --- following jobs -----------------------------------------------------------------------------------

    async def follow(self, job_id: str, callback: Callback, after: str | None = None) -> JobState | None:
        """Start telling ``callback`` about ``job_id``; returns the job's shared state (None: no such job).

        With ``after`` (a stream entry id), the entries after it are given to ``callback`` first, so that an SSE
        client resuming from its Last-Event-ID misses nothing and repeats nothing. Ownership is the caller's to
        check (``async_store().job(job_id, user=...)``) before following.
        """
        followed = self._jobs.get(job_id)
        first = followed is None
        if first:
            followed = self._jobs[job_id] = Followed(cancelled=True)
            try:
                followed.job = await self._load(job_id)
                followed.cancelled = False
            finally:  # also when this follower is cancelled meanwhile: the others waiting for it must go on
                followed.ready.set()
                if followed.job is None:
                    self._drop_if_unfollowed(job_id, followed)
            if followed.job is None:
                return None
            followed.cursor = followed.job.cursor or '0-0'
            self._tailing.set()
            self._queue_moved.set()  # its position and ETA
        else:
            await followed.ready.wait()
            if followed.job is None:  # no such job, or its first follower was cancelled while reading it
                return await self.follow(job_id, callback, after) if followed.cancelled else None
        try:
            if first:
                await self._wake_tail()
            entries = await self._backlog(job_id, followed, after) if after is not None else []
        except BaseException:  # cancelled: a job nobody follows is not tailed for ever
            self._drop_if_unfollowed(job_id, followed)
            raise
        if self._jobs.get(job_id) is not followed:  # the others following it all left meanwhile: begin anew
            return await self.follow(job_id, callback, after)
        # No await from the backlog's end to here: the tail tells this callback every entry after the cursor.
        if entries:
            callback(entries)
        elif after is not None and not followed.job.finished and newer(after, followed.cursor):
            followed.seen[callback] = after  # resumed ahead of the tail (it lags, or this is another instance)
        followed.callbacks.append(callback)
        return followed.job

    async def _load(self, job_id: str) -> JobState | None:
        """The job's state for its first follower, with its first ETA if it waits; None if there is no such job
        or Redis could not say."""
        try:
            job = await async_store().job(job_id)
            if job is not None and job.waiting and not job.blocked:  # its first figures come with its ETA
                job.eta_seconds = await async_store().eta(job.position, job.model)
            return job
        except REDIS_ERRORS:
            return None

    async def _backlog(self, job_id: str, followed: Followed, after: str) -> list:
        """The entries after ``after`` up to the shared state's cursor (all of them for a finished job, read from its
        record), read until the cursor, which the tail moves on meanwhile, is reached."""
        entries: list = []
        while followed.job.finished or newer(followed.cursor, entries[-1][0] if entries else after):
            more = await async_store().stream(job_id, entries[-1][0] if entries else after)
            entries += more
            if not more or followed.job.finished:
                break
        return [entry for entry in entries if followed.job.finished or not newer(entry[0], followed.cursor)]

    async def _wake_tail(self) -> None:
        """End the tail's blocking read, so that it reads the streams followed since it began."""
        if self._blocking:
            with contextlib.suppress(*REDIS_ERRORS):
                async with get_async_redis().pipeline(transaction=False) as pipe:
                    pipe.xadd(self._wake, {'w': '1'}, maxlen=10, approximate=False)
                    pipe.expire(self._wake, 3600)  # a process that died leaves nothing for long
                    await pipe.execute()

    def _drop_if_unfollowed(self, job_id: str, followed: Followed) -> None:
        """Stop tailing the job if nobody follows it (and it is still this entry, not one begun anew)."""
        if not followed.callbacks and self._jobs.get(job_id) is followed:
            del self._jobs[job_id]

    def unfollow(self, job_id: str, callback: Callback) -> None:
        followed = self._jobs.get(job_id)
        if followed is None:
            return
        with contextlib.suppress(ValueError):
            followed.callbacks.remove(callback)
        followed.seen.pop(callback, None)
        self._drop_if_unfollowed(job_id, followed)

    @property
    def followed(self) -> dict[str, int]:
        """Job id -> number of followers (a copy, for diagnostics and tests)."""
        return {job_id: len(f.callbacks) for job_id, f in self._jobs.items()}

    def _tell(self, followed: Followed, entries: list) -> None:
        for callback in list(followed.callbacks):
            told = entries
            if entries and callback in followed.seen:
                told = [entry for entry in entries if newer(entry[0], followed.seen[callback])]
                if not newer(entries[-1][0], followed.seen[callback]):
                    continue
                del followed.seen[callback]
            try:
                callback(told)
            except Exception:  # one broken follower must not starve the others
                log.exception('a follower failed')

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loops in the running event loop (idempotent)."""
        if self._tasks:
            return
        self._tailing, self._queue_moved = asyncio.Event(), asyncio.Event()
        if self._jobs:
            self._tailing.set()
        for name, loop in (('listen', self._listen), ('tail', self._tail), ('health', self._poll_health),
                           ('queue', self._emit_queue_changes), ('positions', self._refresh_positions),
                           ('figures', self._read_figures)):
            self._tasks.append(background_tasks.create(loop(), name=f'bus-{name}'))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await aio.stop(*tasks)  # a cancellation lost in a Redis call must not hold the app's shutdown up
        await close_shared_http()  # the health checks' connections to the LLM servers

    # --- the loops --------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe to the change channel and fan out; resubscribe after any failure."""
        delay, failed = 0.2, False
        while True:
            pubsub = None
            try:
                pubsub = get_async_redis().pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(keys.EVENTS)
                delay = 0.2
                if failed:
                    failed = False
                    log.info('Redis pub/sub is back')
                    self._set_health(redis=True)
                    await self._reload()
                    self.reconnected.emit()
                    self._queue_moved.set()
                while True:
                    message = await pubsub.get_message(timeout=block_seconds())
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
        for topic in data.split('\n'):  # a step's topics, one per line (prelude.lua)
            if topic == keys.QUEUE_CHANGED:
                self._queue_moved.set()
            elif topic.startswith(keys.USER_CHANGED):
                self.user_changed.emit(topic[len(keys.USER_CHANGED):])
            elif topic.startswith(keys.CONVERSATION_CHANGED):
                self.conversation_changed.emit(topic[len(keys.CONVERSATION_CHANGED):])

    async def _emit_queue_changes(self) -> None:
        """At most one queue_changed per 100 ms: a burst of submissions is one refresh for every page."""
        while True:
            await self._queue_moved.wait()
            self._queue_moved.clear()
            self.queue_changed.emit()
            await self._update_positions()
            await asyncio.sleep(self.QUEUE_COALESCE_SECONDS)

    async def _refresh_positions(self) -> None:
        """ETAs count down with time: refresh the waiting jobs' figures every couple of seconds."""
        while True:
            await asyncio.sleep(self.POSITIONS_SECONDS)
            if any(f.job is not None and f.job.waiting for f in self._jobs.values()):
                await self._update_positions()

    async def _update_positions(self) -> None:
        """Positions, ETAs and why a job can't start, of every followed waiting job: one round trip for the
        positions, and one per line (model) for its clock — a line's ETA counts the slots of the servers that
        serve it, not the whole fleet's. Followers are told of changes."""
        waiting = {job_id: f for job_id, f in self._jobs.items() if f.job is not None and f.job.waiting}
        if not waiting:
            return
        store = async_store()
        try:
            places = await store.places(list(waiting))
            clocks = {line: await store.clock(line) for line in {f.job.model for f in waiting.values()}}
        except REDIS_ERRORS as error:
            log.debug('positions failed: %s', error)
            return
        for job_id, followed in waiting.items():
            job = followed.job
            position, why = places.get(job_id, (None, None))
            if not job.waiting:
                continue
            eta = None if why else eta_seconds(position, clocks[job.model])
            if (position, eta, why) != (job.position, job.eta_seconds, job.blocked):
                job.position, job.eta_seconds, job.blocked = position, eta, why
                self._tell(followed, [])

    async def _tail(self) -> None:
        """One XREAD over every followed stream; entries folded into the shared state, then told, per job."""
        delay = 0.2
        while True:
            streams = {keys.stream(job_id): f.cursor for job_id, f in self._jobs.items()
                       if f.job is not None and not f.job.finished}
            if not streams:
                self._tailing.clear()
                await self._tailing.wait()
                continue
            streams[self._wake] = self._wake_cursor
            self._blocking = True
            try:
                reply = await get_async_redis().xread(streams, count=1000, block=int(block_seconds() * 1000))
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as error:
                log.debug('XREAD failed: %s', error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
                continue
            finally:
                self._blocking = False
            prefix = len(keys.stream(''))
            for key, items in (reply.items() if isinstance(reply, dict) else reply or []):
                if key == self._wake:
                    self._wake_cursor = items[-1][0]
                    continue
                followed = self._jobs.get(key[prefix:])
                if followed is None or followed.job is None:
                    continue
                items = [item for item in items if newer(item[0], followed.cursor)]
                if items:
                    followed.cursor = items[-1][0]
                    followed.job.apply(items)
                    self._tell(followed, items)

    async def _read_figures(self) -> None:
        """While some page shows the figures (a subscriber of ``figures_changed``), read them once a second for all
        pages together, and tell the pages only when something changed: an open page that nothing happens to costs
        nothing (a timer per page used to redraw each one every second). A server that is down counts down."""
        series_at = told_at = float('-inf')
        while True:
            await asyncio.sleep(self.STATS_SECONDS)
            if not self.figures_changed.callbacks:
                series_at = float('-inf')
                continue
            now, figures = time.monotonic(), self.figures
            stats, series = await self._read(metrics.stats), figures.series
            if now - series_at >= self.SERIES_SECONDS:
                series, series_at = await self._read(metrics.series), now
            if stats and stats['running'] != sum(view.get('running') or 0 for view in self.health.backends):
                # the servers' slots in use move with 'Running now', not seconds later — also when a health poll
                # that read them before the change ends after it (seen in the real-model tour: '1 / 1' beside
                # '0/1 slots')
                await self._read_servers()
            counting_down = any(view['state'] == 'down' for view in self.health.backends)
            if (stats, series) != (figures.stats, figures.series) or not figures.read or counting_down \
                    or now - told_at >= self.FIGURES_AT_LEAST_SECONDS:
                figures.stats, figures.series, figures.read, told_at = stats, series, True, now
                self.figures_changed.emit()

    async def _read_servers(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            self._set_health(backends=await async_store().backends())

    @staticmethod
    async def _read(function: Callable[[], Any]) -> Any:
        try:
            return await run.io_bound(function)
        except REDIS_ERRORS as error:
            log.debug('%s failed: %s', function.__name__, error)
            return None

    async def _reload(self) -> None:
        """After an outage: entries are read from the cursors on, but positions may be stale."""
        for followed in self._jobs.values():
            if followed.job is not None and followed.job.waiting:
                followed.job.position = None

    async def _poll_health(self) -> None:
        while True:
            try:
                await self._check_health()
            except asyncio.CancelledError:
                raise
            except Exception:  # the poller must outlive any surprise
                log.exception('health poll failed')
            with contextlib.suppress(Exception):
                await close_idle()  # what a burst of requests opened does not stay open
            await asyncio.sleep(self.POLL_SECONDS)

    async def _check_health(self) -> None:
        """Redis, the workers and the LLM servers, once. The servers are checked by whichever process's turn it
        is (tasks.backends.discover); what they found is read from Redis, so every app instance agrees."""
        redis_ok = await self._ping()
        workers, views = 0, self.health.backends
        if redis_ok:
            with contextlib.suppress(*REDIS_ERRORS):
                store = async_store()
                await backends.discover(store)
                views = await store.backends()
                workers = await metrics.workers_online(get_async_redis())
        models = sorted({m for view in views for m in view['models'] or []} | set(backends.fleet().aliases))
        llm = any(view['state'] == 'up' for view in views)
        self._warn(redis_ok, llm, models, views)
        self._set_health(redis=redis_ok, llm=llm, workers=int(workers or 0), models=models, backends=views,
                         checked=True)

    def _warn(self, redis_ok: bool, llm: bool, models: list[str], views: list[dict]) -> None:
        """Say on the console what keeps answers from coming — once each time it becomes true."""
        problems = set()
        if redis_ok and views and all(view['state'] != 'unknown' for view in views):
            if not llm:
                problems.add('No LLM server can be reached: ' + ', '.join(view['name'] for view in views) +
                             ' (see /health; set OLLAMA_HOST or LLM_BACKENDS)')
            elif models and settings.ollama_model not in models:
                problems.add(f'No LLM server offers the default model {settings.ollama_model!r} (OLLAMA_MODEL): pull '
                             f'it, or pick one of {", ".join(models[:8])}')
        for problem in problems - self._warned:
            log.warning(problem)
        self._warned = problems

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


bus = Bus()
queue_changed = bus.queue_changed
user_changed = bus.user_changed
conversation_changed = bus.conversation_changed
reconnected = bus.reconnected
health_changed = bus.health_changed
health = bus.health
follow = bus.follow
unfollow = bus.unfollow
figures = bus.figures
figures_changed = bus.figures_changed
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
