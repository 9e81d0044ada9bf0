"""Worker-side housekeeping as Dramatiq middleware: reap dead leases and say "this worker is alive".

Each worker process runs one janitor thread. Once a second it runs the REAP step (see :mod:`tasks.queue`),
sends a ticket for every job it put back, counts the jobs it ended, tops up the tickets, and refreshes this
process's heartbeat. Several janitors may run at once; REAP is atomic, so each job is put back once.

Topping up keeps invariant 6 (at least one ticket per waiting or parked job) whatever happened to a ticket:
a message Dramatiq gave up on while Redis was down, a send that never happened because the submitting
process died. Dramatiq keeps every message it has not acked in ``<queue>.msgs`` (and delayed ones in
``<queue>.DQ.msgs``), so the count of live tickets is exact. A surplus ticket finds nothing and ends.
"""

from __future__ import annotations

import os
import socket
import threading

import redis
from dramatiq import Middleware

from tasks import metrics, queue
from tasks.broker import NAMESPACE, QUEUE_NAME, send_tickets
from tasks.connection import get_redis
from tasks.settings import settings

INTERVAL_SECONDS = 1.0
TICKETS = f"{NAMESPACE}:{QUEUE_NAME}.msgs"
DELAYED_TICKETS = f"{NAMESPACE}:{QUEUE_NAME}.DQ.msgs"


class Janitor(Middleware):
    def __init__(self) -> None:
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker) -> None:
        self.thread = threading.Thread(target=self._loop, name="queuechat-janitor", daemon=True)
        self.thread.start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self.stopping.set()
        try:
            get_redis().zrem(metrics.WORKERS, self.worker_id)
        except redis.RedisError:
            pass

    def _loop(self) -> None:
        while not self.stopping.wait(INTERVAL_SECONDS):
            try:
                self.sweep()
            except redis.RedisError:
                continue  # Redis is restarting: try again next round

    def sweep(self) -> None:
        client = get_redis()
        seconds, micros = client.time()
        client.zadd(metrics.WORKERS, {self.worker_id: seconds * 1000 + micros // 1000})
        back, ended = queue.Scripts(client).reap(
            keys=[queue.LEASES, queue.WAITING, queue.DELAYED, queue.WAKE], args=[settings.stream_ttl_seconds])
        if back:
            # Not left to the top-up: a killed worker's ticket still counts in ``<queue>.msgs`` until Dramatiq's
            # maintenance (a random 1 in 10 broker commands) hands it back, which can take many seconds;
            # the job must run again within the recovery window. The old ticket, once back, is a surplus one.
            send_tickets(len(back))
        for job_id in ended:
            metrics.record_finish(client.hgetall(queue.job_key(job_id)))
        self.top_up_tickets(client)

    def top_up_tickets(self, client) -> None:
        pipe = client.pipeline(transaction=True)
        pipe.zcard(queue.WAITING).zcard(queue.DELAYED).hlen(TICKETS).hlen(DELAYED_TICKETS)
        waiting, parked, tickets, delayed_tickets = pipe.execute()
        missing = waiting + parked - tickets - delayed_tickets
        if missing > 0:
            send_tickets(missing)
