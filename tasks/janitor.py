"""Worker-side housekeeping as Dramatiq middleware: reap dead leases and say "this worker is alive".

Each worker process runs one janitor thread. Once a second it runs the BEAT step: the REAP (see
:mod:`tasks.queue`), this process's heartbeat, and how many tickets are missing; then it sends a ticket for every
job put back and tops the rest up. One round trip a second per idle worker. Several janitors may run at once;
REAP is atomic, so each job is put back once. The janitor keeps running while its
process drains on shutdown (until ``after_worker_shutdown``): a process finishing its last answer still
recovers the jobs of a dead sibling.

Topping up keeps invariant 6 (at least one ticket per waiting job) whatever happened to a ticket: a message
Dramatiq gave up on while Redis was down, a send that never happened because the submitting process died.
Dramatiq keeps every message it has not acked in ``<queue>.msgs`` (and delayed ones in ``<queue>.DQ.msgs``), so
the count of live tickets is exact. A surplus ticket finds nothing and ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import threading

import redis
from dramatiq import Middleware
from dramatiq.asyncio import get_event_loop_thread

from tasks import backends, keys
from tasks.broker import NAMESPACE, QUEUE_NAME, send_tickets
from tasks.connection import get_redis
from tasks.supervisor import die_with_parent

log = logging.getLogger("queuechat.janitor")

INTERVAL_SECONDS = 1.0
TICKETS = f"{NAMESPACE}:{QUEUE_NAME}.msgs"
DELAYED_TICKETS = f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs"
#: Who holds a lease: main.py finds its own frozen workers by it (host, pid).
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
#: Set when this process begins to shut down: a ticket waiting for work ends instead of holding the drain up.
STOPPING = threading.Event()


class Janitor(Middleware):
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.discovery: concurrent.futures.Future | None = None

    def after_process_boot(self, broker) -> None:
        # The dramatiq CLI forks this process; when the CLI dies (kill -9), so must we, and at once.
        die_with_parent(signal.SIGKILL)

    def before_worker_shutdown(self, broker, worker) -> None:
        STOPPING.set()

    def after_worker_boot(self, broker, worker) -> None:
        self.thread = threading.Thread(target=self._loop, name="queuechat-janitor", daemon=True)
        self.thread.start()
        try:
            send_tickets(1)  # the process's first standby (tasks/actors.py): the first job need not wait for a ticket
        except redis.RedisError:
            pass  # Redis is not there yet: the first job's own ticket does

    def after_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        try:
            get_redis().zrem(keys.WORKERS, WORKER_ID)
        except redis.RedisError:
            pass

    def _loop(self) -> None:
        while not self.stopping.wait(INTERVAL_SECONDS):
            try:
                self.sweep()
            except redis.RedisError:
                continue  # Redis is restarting: try again next round
            except Exception:  # the janitor must outlive any surprise
                log.exception("janitor sweep failed")

    def sweep(self) -> None:
        from tasks.store import sync_store

        back, _, missing = sync_store().scripts.beat(WORKER_ID, TICKETS, DELAYED_TICKETS)
        # A ticket for every job put back, whatever the count says: a killed worker's ticket still counts in
        # ``<queue>.msgs`` until Dramatiq's maintenance (a random 1 in 10 broker commands) hands it back, which can
        # take many seconds; the job must run again within the recovery window. The old ticket, once back, is a
        # surplus one. The jobs put back are among the missing when no such ticket counts for them.
        if (count := max(len(back), missing)) > 0:
            send_tickets(count)
        self.discover()

    def discover(self) -> None:
        """Check the LLM servers (at most every ``LLM_CHECK_SECONDS``, shared by every process), on the worker's event
        loop and without waiting for it: a slow server must not hold up the reaping."""
        if self.discovery is not None and not self.discovery.done():
            return
        loop = get_event_loop_thread()
        if loop is not None:
            self.discovery = asyncio.run_coroutine_threadsafe(_discover(), loop.loop)


async def _discover() -> None:
    from tasks.store import async_store

    try:
        await backends.discover(async_store())
    except Exception:  # Redis away, a server answering nonsense: next round
        log.debug("discovery failed", exc_info=True)
