"""The Dramatiq actor: run one execution ticket. ``dramatiq tasks.actors`` starts workers for it.

A ticket asks the admission step for the best waiting job — waiting on the wake list while every slot is busy,
the rate window is full or the jobs ahead are backing off — and runs that one attempt (:mod:`tasks.runner`).
After HANDOFF_SECONDS of waiting it sends a fresh ticket and ends, so that no Dramatiq time limit is hit while
it waits.

One ticket per process that finds nothing to do stays as a *standby*: it waits on the wake list, which every
submission pushes to, so a new job is admitted the moment it is written, without waiting for Dramatiq to hand
out its ticket (idle consumers then need not poll Dramatiq often: see ``worker_environment``).

A process keeps a standby ready: it sends itself a ticket when it boots, when its standby admits a job, when a
ticket that ran a job ends while no standby waits, and before its standby hands off. Without that, jobs one after
another would each wait for their own ticket (the standby runs the first; the next ticket finds nothing only if it
comes before the next job).
"""

from __future__ import annotations

import asyncio
import logging
import time

import dramatiq

from tasks import keys, queue
from tasks.broker import QUEUE_NAME, TICKET_ACTOR, get_broker, send_tickets
from tasks.connection import block_seconds
from tasks.janitor import STOPPING, WORKER_ID, Janitor
from tasks.runner import JobRun
from tasks.settings import settings
from tasks.store import async_store

broker = get_broker()
broker.add_middleware(Janitor())
logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per LLM call is noise; failures are logged by us

HANDOFF_SECONDS = 30.0
SENT_FOR_SECONDS = 2.0  # a standby ticket sent that long ago went to another process (or was lost)
# This process's standby (the actor's threads share one event loop): whether one waits, and when one was sent.
_standby = {"waiting": False, "sent_at": float("-inf")}
_background: set[asyncio.Task] = set()  # tasks nobody awaits, kept from the garbage collector


@dramatiq.actor(actor_name=TICKET_ACTOR, queue_name=QUEUE_NAME,
                time_limit=int((settings.job_time_limit + HANDOFF_SECONDS + 30) * 1000))
async def run_ticket() -> None:
    store = async_store()
    admission = await admit_or_wait(store)
    if admission is not None:
        try:
            await JobRun(store, admission).run()
        finally:
            await keep_standby()


async def keep_standby() -> None:
    """Send a ticket to be this process's standby, unless one waits or is on its way."""
    if not _standby["waiting"] and not STOPPING.is_set() \
            and time.monotonic() - _standby["sent_at"] > SENT_FOR_SECONDS:
        _standby["sent_at"] = time.monotonic()
        await asyncio.to_thread(send_tickets, 1)


async def admit_or_wait(store) -> queue.Admission | None:
    deadline = time.monotonic() + HANDOFF_SECONDS
    standby = False
    try:
        while not STOPPING.is_set():
            admission = queue.Admission.parse(await store.scripts.admit(WORKER_ID))
            if admission.outcome == "ok":
                if standby:  # the process's next standby is sent now, beside this job, not after it
                    standby = _standby["waiting"] = False
                    _background.add(task := asyncio.create_task(keep_standby()))
                    task.add_done_callback(_background.discard)
                return admission
            if admission.outcome == "empty":
                if not standby and _standby["waiting"]:
                    return None  # a surplus ticket: this process has its standby already
                standby = _standby["waiting"] = True
                _standby["sent_at"] = float("-inf")
            if time.monotonic() > deadline:  # a fresh ticket takes over
                if standby:  # the process's standby: its next one
                    _standby["waiting"], standby = False, False
                    await keep_standby()
                else:  # waiting for a slot (or a pause) for its own job: not the standby's one-per-process rule
                    await asyncio.to_thread(send_tickets, 1)
                return None
            wait = block_seconds()
            if admission.outcome == "wait":
                wait = min(wait, max(0.01, admission.wait_ms / 1000))
            await store.client.blpop([keys.WAKE], timeout=wait)
        return None
    finally:
        if standby:
            _standby["waiting"] = False
