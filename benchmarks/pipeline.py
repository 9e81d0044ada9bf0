"""b. Pipeline throughput: jobs/s end to end with an instant LLM and the cap lifted, against a bare Dramatiq
no-op actor (``benchmarks/noop_actor.py``) on the same processes, threads, Redis and worker environment.

Submitting is part of the pipeline, so both sides are fed by the same number of threads in this process. The
outcome is checked exactly-once: every job completed, once (one ``done`` entry, one attempt, one LLM call).
The repetitions alternate (jobs, messages, jobs, …), each with a fresh pool of its own and no other pool alive:
on a shared 2-core machine whose speed drifts by the minute, each side meets the same moments, and neither pays
for the other's pool (an idle queuechat pool beside the no-op's seemed to slow it, within this machine's noise).
"""

from __future__ import annotations

import concurrent.futures
import os
import time

from benchmarks.common import Section, verdict
from benchmarks.harness import BareWorkers, Stack, ratio, summarize, table
from devtools import figures
from devtools.stack import Workers
from devtools.waiting import wait_for
from tasks import keys
from tasks.store import sync_store

TARGET_JOBS_S, TARGET_RATIO = 300.0, 0.3
SUBMITTERS = 4


def feed(count: int, send) -> None:
    """``send(index)`` for 0..count-1 from :data:`SUBMITTERS` threads."""
    with concurrent.futures.ThreadPoolExecutor(SUBMITTERS) as pool:
        list(pool.map(send, range(count)))


def cpu_split(stack: Stack, pool: Workers) -> dict[str, float]:
    """CPU seconds used so far by the pool's worker processes, by Redis, and by this process (the submitting
    threads, the fake LLM and the wait for the count)."""
    return {"workers": sum(figures.cpu_seconds(process.pid) for process in figures.tree(pool.pid)),
            "redis": figures.cpu_seconds(stack.redis_server.process.pid), "here": figures.cpu_seconds(os.getpid())}


def per_item(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """CPU per job (or message) in ms, from two :func:`cpu_split` readings."""
    return {part: 1000 * (after[part] - before[part]) / count for part in before}


def pipeline_rate(stack: Stack, pool: Workers, count: int, stall_s: float = 10.0) -> dict:
    """Jobs/s from the first submit until the last job is counted completed — or, when jobs stop completing for
    ``stall_s`` (the engine hang: jobs left running after their last token), until the last completion, with the
    jobs left running counted; and what breaks the exactly-once outcome."""
    stack.reset_data()
    client = stack.redis()
    ids: list[str] = [""] * count

    def send(index: int) -> None:
        ids[index] = sync_store().submit(f"[[tokens=1]] throughput {index}", user=f"bench-{index % 8}").job_id

    requests_before = stack.fake.hits["/api/chat"]
    cpu_before = cpu_split(stack, pool)
    start = time.perf_counter()
    feed(count, send)
    completed, progress_at = 0, time.perf_counter()
    while completed < count and time.perf_counter() - progress_at < stall_s:
        time.sleep(0.002)
        now = int(client.hget(keys.TOTALS, "completed") or 0)
        if now > completed:
            completed, progress_at = now, time.perf_counter()
    cpu = per_item(cpu_before, cpu_split(stack, pool), count)
    stuck, problems = exactly_once(client, ids, stack.fake.hits["/api/chat"] - requests_before)
    return {"rate": completed / (progress_at - start), "completed": completed, "stuck": stuck, "problems": problems,
            "cpu": cpu}


def exactly_once(client, ids: list[str], llm_calls: int) -> tuple[int, list[str]]:
    """(jobs still running, what breaks 'every ended job completed, once'): over what Redis holds."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(keys.job(job_id), "status", "attempts").xrange(keys.stream(job_id))
    replies = pipe.execute()
    problems, stuck, completed = [], 0, 0
    for index, job_id in enumerate(ids):
        (status, attempts), entries = replies[2 * index], replies[2 * index + 1]
        if status == "running":
            stuck += 1
            continue
        done = sum(1 for _, fields in entries if fields.get("k") == "done")
        completed += status == "completed"
        if status != "completed" or attempts != "1" or done != 1:
            problems.append(f"{job_id}: status {status}, attempts {attempts}, {done} done entries")
    totals = client.hgetall(keys.TOTALS)
    if int(totals.get("completed") or 0) != completed:
        problems.append(f"totals say {totals.get('completed')} completed, the records {completed}")
    if llm_calls != len(ids):
        problems.append(f"{llm_calls} LLM calls for {len(ids)} jobs")
    return stuck, problems


def noop_rate(stack: Stack, pool: Workers, count: int) -> dict:
    """Messages/s through the bare actor, fed the same way, and the CPU per message."""
    from benchmarks import noop_actor  # binds to this stack's Redis (REDIS_URL) when first imported

    client = stack.redis()
    client.delete(noop_actor.COUNTER)
    cpu_before = cpu_split(stack, pool)
    start = time.perf_counter()
    feed(count, lambda _: noop_actor.noop.send())
    wait_for(lambda: int(client.get(noop_actor.COUNTER) or 0) >= count, 120, f"{count} no-op messages",
             interval=0.002)
    rate = count / (time.perf_counter() - start)
    return {"rate": rate, "cpu": per_item(cpu_before, cpu_split(stack, pool), count)}


def measure(stack: Stack, jobs: int, messages: int, reps: int) -> tuple[list[dict], list[dict]]:
    """(pipeline runs, no-op runs), alternated, each in a pool of its own (2 processes × 8 threads) after a
    warm-up in that pool (connections, scripts, the LLM client)."""
    runs, noops = [], []
    for _ in range(reps):
        with stack.workers(processes=2, threads=8) as workers:
            pipeline_rate(stack, workers, 20)
            runs.append(pipeline_rate(stack, workers, jobs))
        with stack.workers(processes=2, threads=8, kind=BareWorkers) as bare:
            noop_rate(stack, bare, 50)
            noops.append(noop_rate(stack, bare, messages))
    return runs, noops


def _stuck(stuck: int, total: int) -> str:
    if not stuck:
        return "Every job ended."
    return (f"**{stuck} of {total} jobs never ended**: they stayed `running` after their answer (a bug "
            "to report); their rate is counted up to the last completion.")


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}"


def cpu_table(runs: list[dict], noops: list[dict]) -> str:
    """Median CPU per job and per no-op message, by process, and their ratio."""
    def median(rows: list[dict], part: str) -> float:
        return summarize([row["cpu"][part] for row in rows]).p50

    names = {"workers": "worker processes", "redis": "Redis",
             "here": "this process (submitting threads, fake LLM, the wait)"}
    rows = [[name, f"{median(runs, part):.2f} ms", f"{median(noops, part):.2f} ms",
             ratio(median(runs, part), median(noops, part))] for part, name in names.items()]
    job = sum(median(runs, part) for part in names)
    message = sum(median(noops, part) for part in names)
    rows.append(["**all**", f"{job:.2f} ms", f"{message:.2f} ms", ratio(job, message)])
    return table(["CPU", "per job", "per no-op message", "job ÷ message"], rows)


def busy(rate: float, rows: list[dict]) -> str:
    """How many cores a side kept busy: its rate times its median CPU per item (every process counted)."""
    per_item = sum(summarize([row["cpu"][part] for row in rows]).p50 for part in rows[0]["cpu"])
    return f"{rate * per_item / 1000:.2f}"


def section(runs: list[dict], noops: list[dict], jobs: int, messages: int) -> Section:
    noop = [run["rate"] for run in noops]
    pipeline = [run["rate"] for run in runs]
    p, n = summarize(pipeline), summarize(noop)
    stuck = sum(run["stuck"] for run in runs)
    problems = [problem for run in runs for problem in run["problems"]]
    share = p.p50 / n.p50 if n.p50 else float("nan")
    body = f"""{jobs} jobs submitted with `JobStore.submit` (the API's own step: Lua submit + ticket) from {SUBMITTERS} threads while
the workers run, until `completed` in `qc:totals` reaches the count; the fake LLM answers at once with one token
(`[[tokens=1]]`); `QUEUE_CONCURRENCY` lifted to 1000, no start-rate limit. 2 worker processes × 8 threads
(`dramatiq tasks.actors` with `main.py`'s worker environment). Baseline: `dramatiq benchmarks.noop_actor` (an actor
that only `INCR`s a counter) on the same processes, threads, Redis and environment, {messages} messages sent with
`.send()` from as many threads. The repetitions alternate, {len(pipeline)} of each, each in a fresh pool of its
own with no other pool alive, after a warm-up in it.

{table(["", "median", "range", "target", ""],
       [["queuechat jobs/s", f"{p.p50:.0f}", spread(pipeline), "≥ 300", verdict(p.p50, TARGET_JOBS_S, at_most=False,
                                                                             unit=" jobs/s", digits=0)],
        ["bare Dramatiq no-op messages/s", f"{n.p50:.0f}", spread(noop), "", ""],
        ["ratio", ratio(p.p50, n.p50), "", "≥ 0.3×", verdict(share, TARGET_RATIO, at_most=False, digits=2)]])}

Exactly-once outcome checked on every measured run: each ended job `completed` with one attempt and exactly one
`done` entry in its stream, `qc:totals` counts each once, and the fake LLM received exactly one chat request per
job — {"kept" if not problems else "**broken**: " + "; ".join(problems[:5])}. {_stuck(stuck, len(runs) * jobs)}
Baseline of the issue: 74 jobs/s against 1081 (0.07×).

Where the CPU goes (psutil, over each measured run, medians; both sides share the 2 cores with this process):

{cpu_table(runs, noops)}

A job is more than a message: the submit Lua step and its ticket, the ADMIT step (which also sets the phase and
returns the record), the HTTP call to the LLM, and the finish step (an answer that arrives in one read is written
with its end) — each a round trip, plus the Python work of an asyncio actor (the hand-off from Dramatiq's worker
thread to the event loop and back) and of the HTTP client (httpx's API on aiohttp's connections: httpx's own
transport cost the worker 0.8–0.9 ms per call here, more than the rest of the job); the fake LLM answering that
call runs in this process (0.2 ms of CPU per answer in a process of its own on a quiet machine, more under load).
Neither side keeps both cores busy (the pipeline {busy(p.p50, runs)} of them, the no-op {busy(n.p50, noops)}): the
rate is set by the CPU per job and by the hops each job waits for in turn, so the ratio of the rates is not the
inverse ratio of the CPU.
"""
    summary = [["b. pipeline jobs/s", "≥ 300", f"{p.p50:.0f}", "74", verdict(p.p50, TARGET_JOBS_S, at_most=False, unit=" jobs/s", digits=0)],
               ["b. pipeline ÷ bare Dramatiq", "≥ 0.3×", ratio(p.p50, n.p50), "0.068×", verdict(share, TARGET_RATIO, at_most=False, digits=2)]]
    return Section("b. Pipeline throughput", body, summary)
