"""Dramatiq wiring: the Redis broker, its middleware, and sending execution tickets.

Tickets carry no job: the admission step in :mod:`tasks.queue` decides which job a ticket runs, so any
process (the UI, the janitor, a retry) may send one without importing the actors.
"""

from __future__ import annotations

import dramatiq
from dramatiq.asyncio import EventLoopThread, set_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, Retries, TimeLimit

from tasks.connection import redis_url
from tasks.retries import JobRetries, retry_when
from tasks.settings import settings

QUEUE_NAME = "queuechat"
TICKET_ACTOR = "run_ticket"
NAMESPACE = "qc-dramatiq"
#: One in ten broker commands runs maintenance, so a dead worker's unacked messages come back within
#: ``heartbeat_timeout`` instead of minutes (Dramatiq's default is one in a thousand).
MAINTENANCE_CHANCE = 100_000

_broker: RedisBroker | None = None


class CalmAsyncIO(AsyncIO):
    """Dramatiq's AsyncIO middleware, whose worker threads look for an interrupt once a second, not ten times.

    A thread that runs an async actor waits for its coroutine in slices of ``interrupt_check_ival`` so that an
    interrupt raised in it (TimeLimit's) is heard. Every process keeps a standby ticket waiting for work
    (tasks/actors.py), so at ten slices a second one thread per idle worker never rested; and the only interrupt
    we get is TimeLimit's, set half a minute past our own time limit, for which a second is nothing."""

    INTERRUPT_CHECK_SECONDS = 1.0

    def before_worker_boot(self, broker, worker) -> None:
        thread = EventLoopThread(self.logger, interrupt_check_ival=self.INTERRUPT_CHECK_SECONDS)
        thread.start(timeout=1.0)
        set_event_loop_thread(thread)


def get_broker() -> RedisBroker:
    """Create (once) and install the broker. Importing the actors calls this first."""
    global _broker
    if _broker is None:
        _broker = RedisBroker(
            url=redis_url(), namespace=NAMESPACE, heartbeat_timeout=settings.heartbeat_timeout_ms,
            maintenance_chance=MAINTENANCE_CHANCE,
            # JobRetries after Retries: ``after_`` hooks run in reverse, and it sets the delay Retries uses.
            middleware=[TimeLimit(), Retries(retry_when=retry_when), JobRetries(), CalmAsyncIO()],
        )
        _broker.declare_queue(QUEUE_NAME)
        dramatiq.set_broker(_broker)
    return _broker


def worker_environment(threads: int) -> dict[str, str]:
    """Environment for `dramatiq tasks.actors` (Dramatiq reads these at import, before our code runs).

    * ``dramatiq_queue_prefetch`` = threads: a process takes no more tickets than it can run, so one busy
      process can't sit on tickets while another is idle.
    * ``dramatiq_worker_timeout`` = 1 s: how often an idle consumer asks Dramatiq for tickets. A new job
      does not wait for that: the standby ticket of some process admits it at once (tasks/actors.py), and an
      idle worker costs next to nothing.
    """
    return {"dramatiq_queue_prefetch": str(threads), "dramatiq_worker_timeout": "1000"}


def send_tickets(count: int) -> None:
    """Enqueue ``count`` execution tickets."""
    broker = get_broker()
    for _ in range(count):
        broker.enqueue(dramatiq.Message(queue_name=QUEUE_NAME, actor_name=TICKET_ACTOR, args=(), kwargs={},
                                        options={}))
