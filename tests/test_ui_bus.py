"""The UI's Redis bus against a real Redis: fan-out of pub/sub, tailing watched Streams, health, and outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
from nicegui import core

from tasks import connection, queue
from tasks.redis_server import RedisServer
from tasks.settings import settings
from ui.bus import Bus, newer

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def running_bus(**speeds: float) -> AsyncIterator[Bus]:
    core.loop = asyncio.get_running_loop()
    bus = Bus()
    for name, value in {'POLL_SECONDS': 0.2, 'BLOCK_MS': 100, **speeds}.items():
        setattr(bus, name, value)
    bus.start()
    try:
        yield bus
    finally:
        await bus.stop()
        connection.reset_connections()


async def until(predicate: Callable[[], object], timeout: float = 10, what: str = '') -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f'timed out waiting for {what or predicate}'
        await asyncio.sleep(0.02)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_pubsub_is_fanned_out_and_queue_changes_are_coalesced(redis_server, r: redis.Redis) -> None:
    async def test() -> None:
        async with running_bus() as bus:
            jobs_seen: list[str] = []
            queue_changes: list[None] = []
            bus.job_changed.subscribe(jobs_seen.append)
            bus.queue_changed.subscribe(lambda: queue_changes.append(None))
            await until(lambda: r.pubsub_numsub(queue.EVENTS)[0][1] == 1, what='the subscription')
            r.publish(queue.EVENTS, 'job-a')
            for _ in range(20):
                r.publish(queue.EVENTS, queue.QUEUE_CHANGED)
            r.publish(queue.EVENTS, 'job-b')
            await until(lambda: jobs_seen == ['job-a', 'job-b'], what='job events')
            await until(lambda: queue_changes, what='a queue change')
            await asyncio.sleep(0.3)
            assert 1 <= len(queue_changes) <= 3  # a burst is one or two refreshes, not twenty
    run(test)


def test_watched_streams_are_tailed_from_the_cursor_until_unwatched(redis_server, r: redis.Redis) -> None:
    async def test() -> None:
        async with running_bus() as bus:
            received: dict[str, list[str]] = {'one': [], 'two': []}
            bus.entries.subscribe(lambda job_id, items: received.setdefault(job_id, []).extend(
                fields['d'] for _, fields in items))
            early = r.xadd(queue.stream_key('one'), {'k': 'token', 'd': 'before', 'a': 1})
            bus.watch('one', after=early)
            bus.watch('two')
            r.xadd(queue.stream_key('one'), {'k': 'token', 'd': 'A', 'a': 1})
            r.xadd(queue.stream_key('two'), {'k': 'token', 'd': 'x', 'a': 1})
            r.xadd(queue.stream_key('one'), {'k': 'token', 'd': 'B', 'a': 1})
            await until(lambda: received['one'] == ['A', 'B'] and received['two'] == ['x'], what='tokens')
            bus.watch('one')  # a second watcher shares the cursor: nothing is replayed
            bus.unwatch('one')
            r.xadd(queue.stream_key('one'), {'k': 'token', 'd': 'C', 'a': 1})
            await until(lambda: received['one'] == ['A', 'B', 'C'], what='C')
            bus.unwatch('one')
            assert 'one' not in bus.watched
            r.xadd(queue.stream_key('one'), {'k': 'token', 'd': 'D', 'a': 1})
            r.xadd(queue.stream_key('two'), {'k': 'done', 'd': '{}', 'a': 1})
            await until(lambda: received['two'] == ['x', '{}'], what='the done entry')
            assert received['one'] == ['A', 'B', 'C']
    run(test)


def test_health_reports_redis_llm_and_workers(redis_server, fake_llm, r: redis.Redis) -> None:
    async def test() -> None:
        seconds, micros = r.time()
        r.zadd('qc:workers', {'w1': seconds * 1000 + micros // 1000, 'w2': seconds * 1000 + micros // 1000})
        async with running_bus() as bus:
            await until(lambda: bus.health.checked, what='the first poll')
            assert (bus.health.redis, bus.health.llm, bus.health.workers) == (True, True, 2)
            assert 'qwen3:latest' in bus.health.models
            stats = await bus.stats()
            assert stats is not None and stats['workers'] == 2
            assert len(await bus.series()) == 30
            assert await bus.eta(None) is None and isinstance(await bus.eta(3), int)
    run(test)


def test_the_bus_survives_redis_going_away_and_coming_back(tmp_path) -> None:
    server = RedisServer(tmp_path / 'redis').start()
    settings.redis_url = server.url
    connection.reset_connections()
    client = redis.Redis.from_url(server.url)

    async def test() -> None:
        async with running_bus() as bus:
            reconnections: list[None] = []
            jobs_seen: list[str] = []
            bus.reconnected.subscribe(lambda: reconnections.append(None))
            bus.job_changed.subscribe(jobs_seen.append)
            received: list[str] = []
            bus.entries.subscribe(lambda job_id, items: received.extend(fields['d'] for _, fields in items))
            bus.watch('job')
            await until(lambda: bus.health.checked and bus.health.redis, what='Redis up')
            client.xadd(queue.stream_key('job'), {'k': 'token', 'd': 'before', 'a': 1})
            await until(lambda: received == ['before'], what='the first token')

            server.kill()
            await until(lambda: not bus.health.redis, what='Redis reported down')
            assert await bus.stats() is None or bus.health.redis is False

            server.start()
            await until(lambda: bus.health.redis, timeout=20, what='Redis reported up again')
            await until(lambda: reconnections, timeout=20, what='the reconnected event')
            await until(lambda: client.pubsub_numsub(queue.EVENTS)[0][1] == 1, what='the new subscription')
            client.publish(queue.EVENTS, 'after')
            client.xadd(queue.stream_key('job'), {'k': 'token', 'd': 'after', 'a': 1})
            await until(lambda: jobs_seen == ['after'] and received == ['before', 'after'], what='events again')
    try:
        run(test)
    finally:
        server.stop()


def test_entry_ids_compare_numerically() -> None:
    assert newer('10-0', '9-5')
    assert newer('5-10', '5-9')
    assert not newer('5-1', '5-1')
    assert newer('1-0', None)
