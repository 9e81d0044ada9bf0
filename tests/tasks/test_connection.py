"""The process's Redis pools: what a burst opened is closed again, and the pools still work afterwards."""

from __future__ import annotations

import asyncio

import redis

from tasks import connection


def test_a_burst_of_connections_is_closed_once_idle(redis_server, r: redis.Redis) -> None:
    def open_connections() -> int:
        return len(r.client_list()) - 1  # not this test's own

    before = open_connections()  # earlier tests' pools, forgotten but maybe not yet collected

    async def test() -> None:
        client = connection.get_async_redis()  # a burst: 30 connections in use at once, then all idle
        taken = [await client.connection_pool.get_connection() for _ in range(30)]
        for conn in taken:
            await client.connection_pool.release(conn)
        sync = connection.get_redis()  # and 20 of the threads' pool
        taken = [sync.connection_pool.get_connection() for _ in range(20)]
        for conn in taken:
            sync.connection_pool.release(conn)
        assert open_connections() >= 50
        assert await connection.close_idle(keep=2) >= 46
        await until(lambda: open_connections() <= before + 4)  # Redis sees each close a moment later
        assert await connection.close_idle(keep=2) == 0
        await client.set("still", "works")  # a closed connection is reopened when it is needed
        assert sync.get("still") == "works" and open_connections() <= before + 4
    asyncio.run(test())


async def until(predicate, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "Redis still counts the closed connections"
        await asyncio.sleep(0.02)
