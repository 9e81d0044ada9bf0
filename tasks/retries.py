"""Retrying a failed LLM attempt: the job's bookkeeping, as Dramatiq middleware, before Dramatiq's own re-send.

The retry budget belongs to the job, not to a ticket: tickets are interchangeable (the one that brings a job
back may admit another), while ``attempts`` in the job's record counts every LLM call (ADMIT counts it). So
when an attempt fails with a transient error, the runner raises :class:`AttemptFailed` — a ``dramatiq.Retry`` —
and :class:`JobRetries` does the rest in ``after_process_message``, which runs before the ``Retries``
middleware's: it computes the backoff from the job's attempts, and the BACK_OFF step either parks the job in
its own place in the line until then (the slot is free meanwhile), or, once the attempts are used up, fails it
with the last error. ``Retries`` then re-sends the ticket after the same delay, so that a ticket is about when
the job may start again. One line at WARNING says so; tracebacks are only for the unexpected (the runner logs
those).
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq import Middleware
from dramatiq.common import compute_backoff
from redis.exceptions import RedisError

from tasks.connection import get_redis
from tasks.llm import LLMError
from tasks.settings import settings

log = logging.getLogger("queuechat.retries")


class AttemptFailed(dramatiq.Retry):
    """An LLM attempt of a job failed in a way that may pass; ``delay`` is set once the backoff is known.
    ``server``: which LLM server, with its address, for the log (users see only its name)."""

    def __init__(self, job_id: str, epoch: int, attempts: int, error: LLMError, server: str = "") -> None:
        super().__init__(str(error), delay=0)
        self.job_id, self.epoch, self.attempts, self.error = job_id, epoch, attempts, error
        self.server = server


def backoff_ms(attempts: int) -> int:
    """Exponential, jittered: RETRY_MIN_BACKOFF_MS after the first attempt, at most RETRY_MAX_BACKOFF_MS."""
    _, delay = compute_backoff(max(0, attempts - 1), factor=settings.retry_min_backoff_ms,
                               max_backoff=settings.retry_max_backoff_ms)
    return delay


def retry_when(retries: int, exception: BaseException) -> bool:
    """Dramatiq's ``retry_when``: a ticket is re-sent only for a failed attempt (the job decides how often)."""
    return isinstance(exception, dramatiq.Retry)


class JobRetries(Middleware):
    """Park or fail the job of a failed attempt. Must come after ``Retries`` in the broker's middleware list
    (``after_`` hooks run in reverse), so that the delay is set before ``Retries`` reads it."""

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        if not isinstance(exception, AttemptFailed):
            return
        from tasks.queue import Scripts  # the scripts module reads the settings of this process

        delay = backoff_ms(exception.attempts)
        error = exception.error
        try:
            outcome = Scripts(get_redis()).back_off(exception.job_id, exception.epoch, delay, str(error), error.code)
        except RedisError as problem:  # the lease runs out and the reaper puts the job back, counted
            log.warning("job %s: attempt %d on %s failed (%s); could not park it (%s)", exception.job_id,
                        exception.attempts, exception.server, error, problem)
            exception.delay = delay
            return
        if outcome == 1:
            exception.delay = delay
            log.warning("job %s: attempt %d of %d on %s failed (%s: %s); retrying in %.1f s", exception.job_id,
                        exception.attempts, settings.max_attempts, exception.server, error.code, error, delay / 1000)
        elif outcome == 2:
            log.warning("job %s: attempt %d of %d on %s failed (%s: %s); giving up", exception.job_id,
                        exception.attempts, settings.max_attempts, exception.server, error.code, error)
