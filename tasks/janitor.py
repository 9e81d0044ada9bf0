"""Worker-side housekeeping as Dramatiq middleware: reap dead leases and say "this worker is alive".

Each worker process runs one janitor thread. Once a second it runs the REAP step (see :mod:`tasks.queue`),
sends a ticket for every job it put back, counts jobs it ended, and refreshes this process's heartbeat.
Several janitors may run at once; REAP is atomic, so each job is put back once.
"""

from __future__ import annotations

import os
import socket
import threading

import redis
from dramatiq import Middleware

from tasks import metrics, queue
from tasks.broker import send_tickets
from tasks.connection import get_redis
from tasks.settings import settings

INTERVAL_SECONDS = 1.0


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
            send_tickets(len(back))
        for job_id in ended:
            metrics.record_finish(client.hgetall(queue.job_key(job_id)))
