"""Shared worker pools: a pool given back sleeps (only the pool in use takes jobs) and wakes up healthy after the
FLUSHALL of the next test; a pool still busy is not kept."""

from __future__ import annotations

import psutil

from devtools.pools import WorkerPools


def asleep(pool) -> bool:
    return all(psutil.Process(pid).status() == psutil.STATUS_STOPPED for pid in [pool.pid, *pool.children()])


def test_a_pool_sleeps_between_tests_and_wakes_up_after_a_flush(stack_env, tmp_path, r):
    pools = WorkerPools(stack_env, tmp_path)
    try:
        pool = pools.take(1, 2)
        pools.give_back(pool, quiet=lambda: True)
        assert asleep(pool)
        r.flushall()
        assert pools.take(1, 2) is pool and not asleep(pool)
        other = pools.take(1, 2, QUEUE_CONCURRENCY="1")
        assert other is not pool
        pools.give_back(other, quiet=lambda: False, timeout=0.5)  # its jobs never end
        assert not other.alive
    finally:
        pools.close()
    assert not pool.alive
