"""asyncio helpers that the worker and the app share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("queuechat.aio")

AGAIN_SECONDS = 0.25  # how long a cancelled task may take to end before it is cancelled again
_finishing: set[asyncio.Task] = set()  # tasks of `finish` whose caller left, and of `detach`: kept until they end


async def stop(*tasks: asyncio.Task) -> None:
    """Cancel the tasks and wait until every one of them is over, cancelling again any that is not, a poll later.

    One cancellation is not always enough: on Python 3.11, ``asyncio.wait_for`` returns the result of an operation
    that completed just as the cancellation came, and the cancellation is lost — and redis-py wraps the write of
    every command in it (``send_packed_command``). A lease keeper cancelled that way went on renewing the lease for
    ever, so the attempt never ended and its job stayed 'running' with all of its answer streamed.

    If the calling task is cancelled meanwhile, the tasks are still seen to their end (the HTTP stream to the LLM
    closed) before the cancellation goes on."""
    pending = {task for task in tasks if not task.done()}
    interrupted = None
    rounds = 0
    while pending:
        if rounds:
            log.warning("%s: still running %g s after its cancellation; cancelling it again",
                        ", ".join(task.get_name() for task in pending), AGAIN_SECONDS)
        for task in pending:
            task.cancel()
        rounds += 1
        try:
            _, pending = await asyncio.wait(pending, timeout=AGAIN_SECONDS)
        except asyncio.CancelledError as error:
            interrupted = error
            pending = {task for task in pending if not task.done()}
    await asyncio.gather(*tasks, return_exceptions=True)  # all over: this only collects their outcomes
    if interrupted is not None:
        raise interrupted


async def finish(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` in a task of its own, which runs to its end even if the caller is cancelled meanwhile.

    For the last step of a cancelled request (cancelling the job of a client that left). Under anyio, a task
    whose cancel scope was cancelled (Starlette's, when a streaming response's client goes away) has every await
    cancelled again, in ``finally`` blocks too: the Redis command would be cut off before it was sent. A new task
    is outside that scope. The caller still sees its own cancellation; the task's outcome is then only logged."""
    task = asyncio.ensure_future(awaitable)
    _finishing.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


def _finished(task: asyncio.Task) -> None:
    _finishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s failed: %r", task.get_name(), task.exception())


def detach(awaitable: Awaitable[object], name: str) -> asyncio.Task:
    """Run ``awaitable`` in a task nobody waits for (kept from the garbage collector until it ends); a failure is
    logged as a warning, since nobody else will see it."""
    task = asyncio.ensure_future(awaitable)
    task.set_name(name)
    _finishing.add(task)
    task.add_done_callback(_detached)
    return task


def _detached(task: asyncio.Task) -> None:
    _finishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s failed: %r", task.get_name(), task.exception())
