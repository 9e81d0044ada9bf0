"""The Dramatiq actor: run one execution ticket. ``dramatiq tasks.actors`` starts workers for it.

A ticket asks the admission step for the best waiting job (waiting on the wake list while every slot is
busy or the rate window is full), then runs it: streams the LLM's answer into the job's Redis Stream,
renews its lease, and stops within a poll interval when the job is cancelled. A transient LLM error parks
the job and raises, so Dramatiq's Retries sends this same ticket again after its backoff; the ticket then
knows (``message.options['job_id']``) which parked job to bring back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import CurrentMessage

from tasks import jobs, metrics, queue
from tasks.broker import QUEUE_NAME, TICKET_ACTOR, get_broker, send_tickets
from tasks.connection import get_async_redis
from tasks.janitor import Janitor
from tasks.llm import LLMError, OllamaClient, PermanentLLMError, TransientLLMError
from tasks.settings import settings

broker = get_broker()
broker.add_middleware(Janitor())

HANDOFF_SECONDS = 30.0   # a ticket waits this long for a slot, then hands over to a fresh ticket
POLL_SECONDS = 0.25      # cancel checks and lease renewals while a job runs
SUGGEST_PROMPT = {
    "en": "Suggest one interesting, specific question someone might ask an AI assistant. "
          "Reply with the question only, in English, in one sentence.",
    "zh": "请提出一个有趣而具体的、可以向 AI 助手提问的问题。只回复这个问题本身，用中文，一句话。",
}


@dramatiq.actor(actor_name=TICKET_ACTOR, queue_name=QUEUE_NAME, max_retries=settings.queue_max_retries,
                time_limit=int((settings.job_time_limit + HANDOFF_SECONDS + 30) * 1000))
def run_ticket() -> None:
    message = CurrentMessage.get_current_message()
    get_event_loop_thread().run_coroutine(_run(message))


async def _run(message) -> None:
    await Ticket(message).run()


class Ticket:
    def __init__(self, message) -> None:
        self.message = message
        self.redis = get_async_redis()
        self.scripts = queue.Scripts(self.redis)

    async def run(self) -> None:
        parked = self.message.options.pop("job_id", None)
        if parked:
            await self.scripts.return_(keys=[queue.job_key(parked), queue.DELAYED, queue.WAITING], args=[parked])
        admission = await self.admit_or_wait()
        if admission is not None:
            self.message.options["job_id"] = admission.job_id
            await JobRun(self, admission).run()
            self.message.options.pop("job_id", None)

    async def admit_or_wait(self) -> queue.Admission | None:
        deadline = time.monotonic() + HANDOFF_SECONDS
        while True:
            reply = await self.scripts.admit(keys=[queue.WAITING, queue.LEASES, queue.STARTS],
                                             args=[settings.queue_concurrency, settings.queue_rate_per_min,
                                                   settings.lease_ttl_ms])
            admission = queue.parse_admission(reply)
            if admission.outcome in ("ok", "empty"):
                return admission if admission.outcome == "ok" else None
            if time.monotonic() > deadline:
                await asyncio.to_thread(send_tickets, 1)
                return None
            wait = min(1.0, max(0.05, admission.retry_in_ms / 1000)) if admission.outcome == "rate" else 1.0
            await self.redis.blpop([queue.WAKE], timeout=wait)


class JobRun:
    """One LLM call for one admitted job, fenced by its epoch."""

    def __init__(self, ticket: Ticket, admission: queue.Admission) -> None:
        self.ticket, self.redis, self.scripts = ticket, ticket.redis, ticket.scripts
        self.job_id, self.epoch = admission.job_id, admission.epoch
        self.answer: list[str] = []
        self.thinking: list[str] = []
        self.progress = 5
        self.kind = "chat"

    async def run(self) -> None:
        raw = await self.redis.hgetall(queue.job_key(self.job_id))
        self.kind = raw.get("kind", "chat")
        try:
            outcome = await self.stream_until_cancelled(raw)
        except PermanentLLMError as error:
            await self.finish("failed", "failed", error=str(error), error_code=error.code)
        except TransientLLMError as error:
            await self.give_up_or_retry(raw, error)
        except asyncio.CancelledError:
            limit = f"The answer took longer than the time limit ({settings.job_time_limit:g} s)."
            await asyncio.shield(self.finish("failed", "failed", error=limit, error_code="time_limit"))
            raise
        else:
            if outcome == "cancelled":
                await self.finish("cancelled", "cancelled")
            elif outcome == "done":
                await self.finish("completed", "done", error="", error_code="")

    async def stream_until_cancelled(self, raw: dict) -> str:
        """'done', 'cancelled' or 'lost' (another worker owns the job now); LLM errors propagate."""
        streaming = asyncio.create_task(self.stream(raw))
        watching = asyncio.create_task(self.watch())
        done, _ = await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        loser = watching if streaming in done else streaming
        loser.cancel()
        with contextlib.suppress(asyncio.CancelledError, LLMError):
            await loser
        return streaming.result() if streaming in done else watching.result()

    async def watch(self) -> str:
        """Renew the lease; return 'cancelled' or 'lost' when the job must stop."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            owned, cancel = await self.scripts.heartbeat(keys=[queue.job_key(self.job_id), queue.LEASES],
                                                         args=[self.job_id, self.epoch, settings.lease_ttl_ms])
            if not owned:
                return "lost"
            if cancel:
                return "cancelled"

    async def stream(self, raw: dict) -> str:
        async with OllamaClient() as llm:
            await self.set_phase(await self.loading_phase(llm, raw["model"]), 8)
            messages, num_predict = await self.prompt(raw)
            expected = num_predict or settings.expected_tokens
            async for chunk in llm.chat(raw["model"], messages, num_predict=num_predict):
                if chunk.kind == "done":
                    return "done"
                if not self.answer and not self.thinking:
                    await self.set_phase("generating", 10)
                await self.append(chunk.kind, chunk.text, expected)
                (self.answer if chunk.kind == "token" else self.thinking).append(chunk.text)
        return "done"

    async def loading_phase(self, llm: OllamaClient, model: str) -> str:
        """'loading' when the model is not in the LLM server's memory yet (its first answer is slow)."""
        try:
            return "prompt" if model in await llm.loaded_models() else "loading"
        except LLMError:
            return "prompt"

    async def prompt(self, raw: dict) -> tuple[list[dict], int | None]:
        if raw.get("kind") == "suggest":
            text = SUGGEST_PROMPT.get(raw.get("lang", "en"), SUGGEST_PROMPT["en"])
            return [{"role": "user", "content": text}], settings.suggest_max_tokens
        return await asyncio.to_thread(jobs.context_messages, raw), None

    async def set_phase(self, phase: str, progress: int) -> None:
        self.progress = progress
        await self.scripts.progress(keys=[queue.job_key(self.job_id)], args=[self.job_id, self.epoch, phase, progress])

    async def append(self, kind: str, text: str, expected: int) -> None:
        produced = len(self.answer) + len(self.thinking) + 1
        progress = min(95, 10 + int(85 * produced / expected))
        await self.scripts.append(keys=[queue.job_key(self.job_id)], args=[self.job_id, self.epoch, kind, text, progress])
        if progress >= self.progress + 5:
            await self.set_phase("generating", progress)

    async def give_up_or_retry(self, raw: dict, error: TransientLLMError) -> None:
        """Park the job for a retry, or fail it once it has had QUEUE_MAX_RETRIES retries.

        The budget is the job's, not the ticket's: ``attempts`` (LLM calls so far, this one included; ADMIT
        counts them) decides. Tickets are interchangeable, so the ticket that brings a parked job back may
        admit another job (a higher one, or the job is taken by another ticket first), and its own Dramatiq
        ``retries`` count says nothing about this job. So it is set from the job before raising: Retries'
        backoff and ``retry_when`` then follow the job too.
        """
        attempts = int(raw.get("attempts") or 1)
        if attempts > settings.queue_max_retries:
            await self.finish("failed", "failed", error=f"{error} (gave up after {attempts} attempts)",
                              error_code=error.code)
            return
        deadline_ms = settings.retry_max_backoff_ms + int(settings.queue_recovery_seconds * 1000)
        parked = await self.scripts.back_off(keys=[queue.job_key(self.job_id), queue.LEASES, queue.DELAYED, queue.WAKE],
                                             args=[self.job_id, self.epoch, deadline_ms, str(error)])
        if parked == 1:
            self.ticket.message.options["retries"] = attempts - 1
            raise error  # Dramatiq's Retries sends this ticket again after its backoff
        if parked == -1:  # cancelled while the call was failing: a cancelled job is never retried
            await self.finish("cancelled", "cancelled")

    async def finish(self, status: str, phase: str, **fields: str) -> None:
        answer = "".join(self.answer)
        if status == "cancelled":
            # A cancel may interrupt a token write whose outcome we never learn: keep what the user saw.
            answer, thinking = jobs.fold_entries(await self.redis.xrange(queue.stream_key(self.job_id)))
            fields = {"thinking": thinking, **fields}
        if self.kind == "suggest":
            answer = answer.strip().strip('"“”「」')
        fields = {"answer": answer, "thinking": "".join(self.thinking), **fields}
        ended = await self.scripts.finish(
            keys=[queue.job_key(self.job_id), queue.LEASES, queue.WAKE],
            args=[self.job_id, self.epoch, status, phase, settings.stream_ttl_seconds,
                  *[x for kv in fields.items() for x in kv]])
        if ended:
            raw = await self.redis.hgetall(queue.job_key(self.job_id))
            await asyncio.to_thread(metrics.record_finish, raw)
