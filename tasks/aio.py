"""asyncio helpers that the worker and the app share."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("queuechat.aio")

AGAIN_SECONDS = 0.25  # how long a cancelled task may take to end before it is cancelled again


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
