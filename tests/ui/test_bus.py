"""The UI's bus against a real Redis: news fanned out, followed jobs folded once and shared, health, outages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
from nicegui import core

from tasks import connection, keys
from tasks.fold import newer
from tasks.redis_server import RedisServer
from tasks.settings import settings
from tasks.store import sync_store
from ui.bus import Bus

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def running_bus(**speeds: float) -> AsyncIterator[Bus]:
    core.loop = asyncio.get_running_loop()
    bus = Bus()
    for name, value in {'POLL_SECONDS': 0.2, **speeds}.items():
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


def token(client: redis.Redis, job_id: str, text: str) -> str:
    return client.xadd(keys.stream(job_id), {'k': 'token', 'd': text, 'a': 1})


async def news(bus: Bus, r: redis.Redis) -> tuple[list[str], list[str], list[None]]:
    """What the bus tells its listeners, once it is subscribed: users, conversations, queue changes."""
    users, conversations, queue_changes = [], [], []
    bus.user_changed.subscribe(users.append)
    bus.conversation_changed.subscribe(conversations.append)
    bus.queue_changed.subscribe(lambda: queue_changes.append(None))
    await until(lambda: r.pubsub_numsub(keys.EVENTS)[0][1] == 1, what='the subscription')
    return users, conversations, queue_changes


def test_news_is_fanned_out_and_queue_changes_are_coalesced(redis_server, r: redis.Redis) -> None:
    async def test() -> None:
        async with running_bus() as bus:
            users, conversations, queue_changes = await news(bus, r)
            r.publish(keys.EVENTS, keys.USER_CHANGED + 'alice')
            for _ in range(20):
                r.publish(keys.EVENTS, keys.QUEUE_CHANGED)
            r.publish(keys.EVENTS, keys.CONVERSATION_CHANGED + 'c1')
            await until(lambda: users == ['alice'] and conversations == ['c1'], what='user and conversation news')
            await until(lambda: queue_changes, what='a queue change')
            await asyncio.sleep(0.3)
            assert 1 <= len(queue_changes) <= 3  # a burst is one or two refreshes, not twenty
    run(test)


def test_one_step_tells_every_topic_it_changed_in_one_message(redis_server, r: redis.Redis) -> None:
    # A submission moves the line, adds to its owner's history and to its conversation: one message says all
    # three (every app process reads every message; prelude.lua's `changed`).
    async def test() -> None:
        async with running_bus() as bus:
            users, conversations, queue_changes = await news(bus, r)
            with r.pubsub(ignore_subscribe_messages=True) as watcher:
                watcher.subscribe(keys.EVENTS)
                conversation = (await asyncio.to_thread(sync_store().submit, 'hello', user='dora')).conversation_id
                await until(lambda: users == ['dora'] and conversations == [conversation] and queue_changes,
                            what='the news of the submission')
                messages = [m for m in (watcher.get_message(timeout=0.2) for _ in range(5)) if m]
            assert [m['data'] for m in messages] == [f'{keys.QUEUE_CHANGED}\nc:{conversation}\nu:dora']
    run(test)


def test_a_followed_job_is_folded_once_and_shared_until_unfollowed(redis_server, r: redis.Redis) -> None:
    job_id = sync_store().submit('hello', user='alice').job_id

    async def test() -> None:
        async with running_bus() as bus:
            first: list[list] = []
            second: list[list] = []
            early = token(r, job_id, 'before ')
            job = await bus.follow(job_id, first.append)
            assert job is not None and job.answer == 'before ' and job.status == 'queued'
            await until(lambda: job.position == 0, what='the position of the waiting job')
            token(r, job_id, 'A ')
            await until(lambda: job.answer == 'before A ', what='A')
            same = await bus.follow(job_id, second.append, after=early)  # replays what came after its id
            assert same is job
            assert [fields['d'] for batch in second for _, fields in batch] == ['A ']
            token(r, job_id, 'B')
            await until(lambda: job.answer == 'before A B', what='B')
            await until(lambda: ['B'] in [[f['d'] for _, f in batch] for batch in second], what='B for both')
            assert bus.followed == {job_id: 2}
            bus.unfollow(job_id, first.append)
            bus.unfollow(job_id, second.append)
            assert bus.followed == {}
            r.xadd(keys.stream(job_id), {'k': 'status', 'd': json.dumps({'status': 'running', 'cancel': True}),
                                         'a': 1})
            await asyncio.sleep(0.3)
            assert not job.cancelling  # nobody follows it: nothing is read any more
            assert await bus.follow('f' * 32, first.append) is None
    run(test)


def test_a_job_followed_while_the_tail_blocks_is_read_at_once(redis_server, r: redis.Redis, monkeypatch) -> None:
    """The tail blocks on the streams it follows; a job followed meanwhile must not wait for that read to time out
    (it would add seconds to a first token)."""
    monkeypatch.setattr(settings, 'queue_recovery_seconds', 30.0)  # reads block for 2.5 s
    connection.reset_connections()
    quiet = sync_store().submit('nobody answers this', user='alice').job_id
    fresh = sync_store().submit('this one streams', user='alice').job_id

    async def test() -> None:
        async with running_bus() as bus:
            await bus.follow(quiet, lambda entries: None)
            await asyncio.sleep(0.3)
            await asyncio.sleep(0.1)
            seen: list[str] = []
            await bus.follow(fresh, lambda entries: seen.extend(f['d'] for _, f in entries if f['k'] == 'token'))
            token(r, fresh, 'now')
            assert connection.block_seconds() == 2.5
            await until(lambda: seen == ['now'], timeout=1.0, what='the fresh token')
    run(test)


def test_a_resumed_follower_gets_every_entry_once_in_order_while_the_job_streams(redis_server, r) -> None:
    """Last-Event-ID resumes race the tail: each follower joins while tokens are written, and must get exactly
    the entries after its id, in order (not the backlog after what the tail already told it, nor twice)."""
    job_id = sync_store().submit('stream fast', user='alice').job_id

    async def test() -> None:
        async with running_bus() as bus:
            await bus.follow(job_id, lambda entries: None)

            async def writer() -> None:
                client = connection.get_async_redis()
                for i in range(400):
                    await client.xadd(keys.stream(job_id), {'k': 'token', 'd': str(i), 'a': 1})
                    if i % 7 == 0:
                        await asyncio.sleep(0)
            task = asyncio.create_task(writer())
            followers: list[tuple[str, list[str]]] = []
            while not task.done():
                ids = [entry_id for entry_id, _ in r.xrange(keys.stream(job_id))]
                after = ids[len(ids) // 2] if ids else '0-0'
                got: list[str] = []
                await bus.follow(job_id, lambda entries, got=got: got.extend(f['d'] for _, f in entries), after=after)
                followers.append((after, got))
                await asyncio.sleep(0.005)
            await task
            everything = r.xrange(keys.stream(job_id))
            await until(lambda: all(len(got) == sum(newer(i, after) for i, _ in everything)
                                    for after, got in followers), what='every follower to catch up')
            for after, got in followers:
                assert got == [f['d'] for i, f in everything if newer(i, after)], after
            assert len(followers) >= 5
    run(test)


def test_a_follower_cancelled_while_the_job_is_read_leaves_nothing_behind(redis_server, r: redis.Redis) -> None:
    """The first follower reads the job for everyone; if it is cancelled meanwhile (a door's client that left),
    those waiting for that read must read it themselves (not wait for ever), and a job nobody follows any more
    must not be tailed."""
    job_id, other = (sync_store().submit(text, user='alice').job_id for text in ('hello', 'bye'))

    async def test() -> None:
        async with running_bus() as bus:
            r.client_pause(800)  # the read is under way when the first follower is cancelled
            first = asyncio.create_task(bus.follow(job_id, lambda entries: None))
            second = asyncio.create_task(bus.follow(job_id, lambda entries: None))
            await asyncio.sleep(0.2)
            first.cancel()
            job = await asyncio.wait_for(second, 5)
            assert first.cancelled() and job is not None and job.job_id == job_id
            assert bus.followed == {job_id: 1}

            r.client_pause(800)
            alone = asyncio.create_task(bus.follow(other, lambda entries: None))
            await asyncio.sleep(0.2)
            alone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alone
            assert bus.followed == {job_id: 1}
    run(test)


def test_health_reports_redis_llm_and_workers(redis_server, fake_llm, r: redis.Redis) -> None:
    async def test() -> None:
        seconds, micros = r.time()
        r.zadd(keys.WORKERS, {'w1': seconds * 1000 + micros // 1000, 'w2': seconds * 1000 + micros // 1000})
        async with running_bus() as bus:
            await until(lambda: bus.health.checked, what='the first poll')
            assert (bus.health.redis, bus.health.llm, bus.health.workers) == (True, True, 2)
            assert 'qwen3:latest' in bus.health.models
            bus.figures_changed.subscribe(lambda: None)  # a page shows the figures
            await until(lambda: bus.figures.read, what='the figures')
            assert bus.figures.stats['workers'] == 2 and len(bus.figures.series) == 30
    run(test)


async def clear_of_a_new_minute(seconds: float) -> None:
    """When a new minute would begin within ``seconds``, wait until it has: the figures' series (per minute) moves
    on at each one, which is a change worth telling (the test below met it at xx:59, once in a few dozen runs)."""
    left = 60 - time.time() % 60
    if left < seconds:
        await asyncio.sleep(left + 0.1)


def test_figures_are_read_while_a_page_shows_them_and_told_only_when_they_change(redis_server, fake_llm,
                                                                                  r: redis.Redis) -> None:
    async def test() -> None:
        async with running_bus(STATS_SECONDS=0.05, SERIES_SECONDS=0.05) as bus:
            await until(lambda: bus.health.llm, what='the LLM server up')  # a server down counts down every second
            await asyncio.sleep(0.3)
            assert not bus.figures.read, 'read with no page to show them'
            await clear_of_a_new_minute(3.0)
            told: list[int] = []
            bus.figures_changed.subscribe(lambda: told.append(bus.figures.stats['submitted']))
            await until(lambda: told, what='the first figures')
            await asyncio.sleep(0.5)  # ten reads that find nothing new
            assert len(told) == 1
            sync_store().submit('hello', user='bob')
            await until(lambda: len(told) == 2, what='the figures after a submission')
            assert told[1] == told[0] + 1
    run(test)


def test_the_servers_slots_in_use_move_with_the_running_figure(redis_server, fake_llm, r: redis.Redis) -> None:
    """The drawer shows both: 'Running now 1 / 1' beside a server's '0/1 slots' until its next check (seconds)."""
    async def test() -> None:
        async with running_bus(POLL_SECONDS=60, STATS_SECONDS=0.05) as bus:
            await until(lambda: bus.health.checked, what='the first poll')  # the next one is a minute away
            bus.figures_changed.subscribe(lambda: None)
            await until(lambda: bus.figures.read, what='the figures')
            sync_store().submit('hello', user='bob')
            assert sync_store().scripts.admit('w1')[0] == 'ok'
            await until(lambda: bus.figures.stats['running'] == 1, what='the figures to show it running')
            assert [view['running'] for view in bus.health.backends] == [1]
            # a health poll that read the servers before the admission ends after it: its view is mended
            bus._set_health(backends=[{**view, 'running': 0} for view in bus.health.backends])
            await until(lambda: [view['running'] for view in bus.health.backends] == [1], timeout=2,
                        what='the servers read again')
    run(test)

@pytest.mark.redis  # a Redis of its own, to kill
def test_the_bus_survives_redis_going_away_and_coming_back(tmp_path) -> None:
    server = RedisServer(tmp_path / 'redis').start()
    settings.redis_url = server.url
    connection.reset_connections()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    job_id = sync_store().submit('hello', user='bob').job_id

    async def test() -> None:
        async with running_bus() as bus:
            reconnections: list[None] = []
            users: list[str] = []
            bus.reconnected.subscribe(lambda: reconnections.append(None))
            bus.user_changed.subscribe(users.append)
            job = await bus.follow(job_id, lambda entries: None)
            await until(lambda: bus.health.checked and bus.health.redis, what='Redis up')
            token(client, job_id, 'before ')
            await until(lambda: job.answer == 'before ', what='the first token')

            server.kill()
            await until(lambda: not bus.health.redis, what='Redis reported down')

            server.start()
            await until(lambda: bus.health.redis, timeout=20, what='Redis reported up again')
            await until(lambda: reconnections, timeout=20, what='the reconnected event')
            await until(lambda: client.pubsub_numsub(keys.EVENTS)[0][1] == 1, what='the new subscription')
            client.publish(keys.EVENTS, keys.USER_CHANGED + 'bob')
            token(client, job_id, 'after')
            await until(lambda: users == ['bob'] and job.answer == 'before after', what='news again')
    try:
        run(test)
    finally:
        server.stop()


def test_entry_ids_compare_numerically() -> None:
    assert newer('10-0', '9-5')
    assert newer('5-10', '5-9')
    assert not newer('5-1', '5-1')
    assert newer('1-0', None)
