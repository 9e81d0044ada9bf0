"""The asyncio helpers: a cancellation that is lost is given again; a last step outlives its caller's cancel."""

from __future__ import annotations

import asyncio

import anyio

from tasks import aio


def test_stop_cancels_again_a_task_that_lost_its_cancellation() -> None:
    async def test() -> None:
        cancels: list[int] = []

        async def deaf() -> None:  # drops the first cancellation, as asyncio.wait_for on Python 3.11 can
            while True:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    cancels.append(1)
                    if len(cancels) > 1:
                        raise

        task = asyncio.create_task(deaf())
        await asyncio.sleep(0)
        await asyncio.wait_for(aio.stop(task), 5)
        assert task.cancelled() and len(cancels) == 2
    asyncio.run(test())


def test_finish_runs_to_its_end_inside_a_cancelled_scope() -> None:
    """Starlette cancels a streaming response's scope when its client leaves; the door's last step (cancel the
    job) runs in that scope, where a plain await is cancelled before it does anything."""
    async def test() -> None:
        done: list[str] = []

        async def last_step(name: str) -> str:
            await asyncio.sleep(0.05)
            done.append(name)
            return name

        for step in (lambda: last_step("plain"), lambda: aio.finish(last_step("finished"))):
            with anyio.CancelScope() as scope:
                scope.cancel()
                try:
                    await asyncio.sleep(1)
                finally:
                    await step()
        await asyncio.sleep(0.2)
        assert done == ["finished"]
        assert await aio.finish(last_step("awaited")) == "awaited"  # and, not cancelled, it answers
    asyncio.run(test())


def test_a_detached_task_is_kept_until_it_ends_and_its_failure_is_logged(caplog) -> None:
    async def test() -> None:
        async def fails() -> None:
            await asyncio.sleep(0.01)
            raise ConnectionError("Redis went away")

        task = aio.detach(fails(), "after submit")
        assert task in aio._finishing  # nobody else holds it: the garbage collector must not take it
        await asyncio.wait([task])
        await asyncio.sleep(0)
        assert task not in aio._finishing
    asyncio.run(test())
    assert "after submit failed: ConnectionError('Redis went away')" in caplog.text
