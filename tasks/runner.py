"""One attempt at one admitted job: the LLM call, streamed into the job's stream, under a lease.

The attempt holds a lease (``leases``, renewed four times a second) that it gives up *before* it runs out: when
a renewal can't get through (Redis is gone, or the link to it went silent), the call is stopped at the local
deadline, so that the job can be handed to another worker without two calls ever running for it. A frozen
process can't stop anything; on waking it finds its deadline past and writes nothing (and main.py kills it on
its own host before the job is reaped, see :mod:`tasks.supervisor`).

The LLM call and the lease keeper run as two tasks; whichever ends first ends the other, and both are cancelled
and awaited on every way out — a Stop, a lost lease, our own time limit, Dramatiq's time limit or shutdown —
so the HTTP stream to the LLM is always closed when the attempt ends. The call writes the answer through a
:class:`Writer`, whose task ends with the call's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from redis.exceptions import RedisError

from tasks import queue, suggestions
from tasks.backends import fleet
from tasks.aio import stop
from tasks.fold import JobState
from tasks.llm import LLMError, Options, PermanentLLMError, TransientLLMError, classify
from tasks.llm.base import Chunk
from tasks.retries import AttemptFailed
from tasks.settings import settings
from tasks.store import JobStore

log = logging.getLogger("queuechat.runner")

POLL_SECONDS = 0.25   # lease renewals and cancel checks


class LeaseLost(Exception):
    """The lease ran out (or was taken away): stop, write nothing more."""


def failure_of(error: Exception) -> LLMError:
    """What ended an attempt, as the queue acts on it: the LLM call's failures (``classify``), and Redis gone
    mid-answer (restarting, a network cut) — ours, not the LLM's, and no surprise: it is named, not traced back."""
    if isinstance(error, RedisError):
        return TransientLLMError(f"The queue lost its connection to Redis in the middle of the answer "
                                 f"({type(error).__name__}).", "queue_lost")
    return classify(error)


class Writer:
    """An attempt's chunks into its job's stream, as they come: the first at once, and those that arrive while a
    write is under way together in the next (one round trip, not one per token, for a worker behind its LLM).

    What is not known to be written when the answer ends goes with its end, in the finish step: an answer that
    arrives in one piece (its tokens and its end in one read) costs one step, not two. Chunks are numbered within
    the attempt and Redis skips those it has (``emit_chunks`` in the prelude), so a write cut off by a Stop — sent
    or not — leaves no hole and no double: its chunks go again with the next write or the end."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.chunks: list[str] = []  # kind, text, kind, text, ...: every chunk of the attempt so far
        self.written = 0  # how many of them Redis has confirmed
        self.task: asyncio.Task | None = None
        self.closing = False

    def add(self, kind: str, text: str) -> None:
        if self.task is not None and self.task.done():
            self.task.result()  # the last write failed (the lease lost, Redis gone): the attempt ends here
        self.chunks += (kind, text)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._write(), name=f"write {self.run.job_id}")

    def __len__(self) -> int:
        """How many chunks the attempt received."""
        return len(self.chunks) // 2

    def text(self, kind: str) -> str:
        """What the attempt received of one kind ('token': the answer, 'think': its thinking)."""
        return "".join(self.chunks[i + 1] for i in range(0, len(self.chunks), 2) if self.chunks[i] == kind)

    def unwritten(self) -> tuple[int, list[str]]:
        """The number of the first chunk not confirmed, and the chunks from there on."""
        return self.written, self.chunks[2 * self.written:]

    async def _write(self) -> None:
        while not self.closing and (batch := self.unwritten())[1]:
            first, chunks = batch
            await self.run.append(first, chunks)
            self.written = first + len(chunks) // 2

    async def close(self, *, quietly: bool = False) -> None:
        """Let a write under way end, and start no other: what is unwritten is the finish step's to write."""
        self.closing = True
        if self.task is not None:
            try:
                await self.task
            except Exception:
                if not quietly:
                    raise

    def tasks(self) -> list[asyncio.Task]:
        return [self.task] if self.task is not None else []


class JobRun:
    def __init__(self, store: JobStore, admission: queue.Admission) -> None:
        self.store, self.scripts = store, store.scripts
        self.job_id, self.epoch = admission.job_id, admission.epoch
        self.job = JobState.from_record(admission.record)
        self.backend, self.model = fleet().get(admission.backend), admission.model
        self.lease_seconds = settings.lease_ttl_ms / 1000
        # Stop a little before the lease would run out in Redis: renewals are dated by when they were sent.
        self.margin = min(1.0, self.lease_seconds / 4)
        self.deadline = time.monotonic() + self.lease_seconds - self.margin
        self.done: Chunk | None = None
        self.expected = settings.expected_tokens  # tokens the answer is expected to have, for its progress
        self.writer = Writer(self)

    async def run(self) -> None:
        """Run the attempt and end it the right way; a transient failure raises :class:`AttemptFailed`."""
        limit = asyncio.timeout(settings.job_time_limit)
        try:
            async with limit:
                outcome = await self.attempt()
        except TimeoutError if limit.expired() else ():  # our own limit, below Dramatiq's
            await self.finish("failed", error=f"The answer took longer than the time limit "
                              f"({settings.job_time_limit:g} s).", error_code="time_limit")
        except asyncio.CancelledError:  # Dramatiq's own time limit or its shutdown: the call is closed already
            await asyncio.shield(self.finish("failed", error="The answer was stopped by the worker's time limit.",
                                             error_code="time_limit"))
            raise
        except PermanentLLMError as error:
            await self.finish("failed", error=str(error), error_code=error.code)
        except Exception as error:  # every other failure counts as an attempt, whatever it is
            failure = await self.server_gone(failure_of(error))
            if not isinstance(failure, TransientLLMError):
                await self.finish("failed", error=str(failure), error_code=failure.code)
                return
            if not failure.expected:
                log.error("job %s: unexpected failure of the LLM call", self.job_id, exc_info=error)
            server = f"{self.backend.name} ({self.backend.url})" if self.backend else "no server"
            raise AttemptFailed(self.job_id, self.epoch, self.job.attempts, failure, server) from error
        else:
            if outcome == "done":
                await self.finish("completed", error="", error_code="")
            elif outcome == "cancelled":
                await self.finish("cancelled")
            # 'lost': the job is someone else's now (or the reaper's)

    async def server_gone(self, failure: LLMError) -> LLMError:
        """A stream cut mid-answer says nothing of the server, unless the server is gone: then it is that server's
        failure (its circuit breaker opens at once, see back_off.lua) and the retry goes to another server that
        has the model, instead of trying the dead one again because it has the model loaded."""
        if failure.code != "llm_disconnected" or self.backend is None:
            return failure
        try:
            alive = await self.backend.client().is_up()
        except Exception:  # noqa: BLE001 - whatever the check met, it did not find the server well
            alive = False
        if alive:
            return failure
        return TransientLLMError(f"The LLM server {self.backend.name!r} went away mid-answer.", "llm_unreachable")

    async def attempt(self) -> str:
        """'done', 'cancelled' or 'lost'; LLM errors propagate. Both tasks are over when this returns."""
        streaming = asyncio.create_task(self.stream(), name=f"llm {self.job_id}")
        keeping = asyncio.create_task(self.keep_lease(), name=f"lease {self.job_id}")
        try:
            done, _ = await asyncio.wait({streaming, keeping}, return_when=asyncio.FIRST_COMPLETED)
            if keeping in done:
                return keeping.result()
            try:
                return streaming.result()
            except LeaseLost:
                return "lost"
        finally:
            await stop(streaming, keeping)

    async def keep_lease(self) -> str:
        """Renew the lease; return 'cancelled' (a Stop) or 'lost' (not ours any more, or not renewable in time)."""
        warned = False
        while True:
            # never sleep past the deadline: a renewal that timed out at the deadline is followed by the stop at
            # once, not a poll later (a quarter of the margin before the lease runs out in Redis)
            await asyncio.sleep(max(0.0, min(POLL_SECONDS, self.deadline - time.monotonic())))
            sent = time.monotonic()
            if sent >= self.deadline:
                log.warning("job %s: lease not renewed in time; stopping the LLM call", self.job_id)
                return "lost"
            try:
                async with asyncio.timeout(self.deadline - sent):  # not wait_for: see llm.base.with_timeouts
                    owned, cancel = await self.scripts.heartbeat(self.job_id, self.epoch)
            except (RedisError, OSError, TimeoutError) as error:
                if not warned:
                    log.warning("job %s: lease renewal failed (%s); retrying until the deadline", self.job_id,
                                type(error).__name__)
                    warned = True
                continue
            if not owned:
                return "lost"
            self.deadline = sent + self.lease_seconds - self.margin
            if cancel:
                return "cancelled"

    def check_lease(self) -> None:
        if time.monotonic() >= self.deadline:
            raise LeaseLost()

    async def stream(self) -> str:
        if self.backend is None:  # the configuration changed under a running job
            raise TransientLLMError("The LLM server chosen for this answer is no longer configured.",
                                    "llm_unreachable")
        # The admission step set the phase ('loading' or 'prompt'); the first chunk sets 'generating' (append.lua).
        # Nothing but the conversation's earlier turns is read between the admission and the request.
        messages, options = await self.prompt()
        self.expected = options.max_tokens or settings.expected_tokens
        # Not wrapped in contextlib.aclosing: tried, and a woken frozen worker then kept its HTTP stream open (the
        # frozen-worker test in tests/tasks/test_runner.py failed 4 of 4; why is not understood yet). Left to the
        # event loop's async-generator finaliser, the response is closed once this frame lets the generator go.
        try:
            async for chunk in self.backend.client().chat(self.model, messages, options):
                self.check_lease()
                if chunk.kind == "done":
                    self.done = chunk
                    break
                self.writer.add(chunk.kind, chunk.text)
            await self.writer.close()
            return "done"
        except Exception:
            await self.writer.close(quietly=True)  # a write under way ends; the failure to tell is the LLM's
            raise
        finally:
            await stop(*self.writer.tasks())  # cancelled: a write under way is cut off with the call

    async def prompt(self) -> tuple[list[dict], Options]:
        record = self.job.record
        options = Options.of(json.loads(record["options"]) if record.get("options") else None)
        if self.job.kind == "suggest":
            return [{"role": "user", "content": suggestions.prompt(self.job.lang)}], \
                Options(max_tokens=settings.suggest_max_tokens)
        return await self.store.context(record), options

    async def append(self, first: int, chunks: list[str]) -> None:
        """Write chunks (kind, text, kind, text, ...; the first numbered ``first``) to the job's stream, fenced by
        the lease."""
        produced = len(self.writer)
        progress = min(95, 10 + int(85 * produced / self.expected))
        self.check_lease()
        if not await self.scripts.append(self.job_id, self.epoch, progress, first, *chunks):
            raise LeaseLost()

    async def finish(self, status: str, **fields: str) -> None:
        answer = self.writer.text("token")
        if self.job.kind == "suggest":
            answer = suggestions.clean(answer, self.job.lang)
        done = self.done or Chunk("done", reason="")
        # The server's count; llama-cpp-python's server sends none with a streamed answer: then the pieces
        # streamed, one token each from the servers we know (else its speed and its users' tokens read zero).
        tokens = done.usage.get("completion_tokens") or len(self.writer) or ""
        fields = {"answer": answer, "thinking": self.writer.text("think"), "done_reason": done.reason,
                  "prompt_tokens": done.usage.get("prompt_tokens") or "", "completion_tokens": tokens, **fields}
        phase = {"completed": "done"}.get(status, status)
        first, unwritten = self.writer.unwritten()
        try:
            await self.scripts.finish(self.job_id, self.epoch, status, phase, first, len(unwritten) // 2, *unwritten,
                                      *[x for kv in fields.items() for x in kv])
        except RedisError as error:  # the lease runs out and the reaper ends or re-runs the job
            log.warning("job %s: could not record its end (%s)", self.job_id, error)
