"""d. SSE at scale: a thousand concurrent SSE clients on fifty jobs.

Each job belongs to its own API key (identity), and each of its clients is that key's: a client may only follow
its own jobs, and an identity may hold at most MAX_STREAMS_PER_CLIENT (20) streams, so 1000 clients on 50 jobs
is 20 per identity — the limits are left as they are. Jobs wait (admission paused) while every client connects;
then they all stream. Measured: the app's memory and file descriptors per client, every client's tokens in order
(its text equals the answer), and Redis' connection count (``CLIENT LIST``) before, during, and after the clients
close — how long it takes to return to the baseline (the count before, or what the app holds at rest if more).
"""

from __future__ import annotations

import asyncio
import math
import time
from urllib.parse import urlsplit

import httpx
import psutil

from benchmarks.common import Section, api_keys, verdict, wait_ended
from benchmarks.harness import Stack, fmt_mb, table
from devtools.raw_sse import SseResult, follow
from devtools.redis_clients import owners
from devtools.stack import App, Workers
from devtools.waiting import wait_for
from tasks.connection import IDLE_KEPT
from tasks.settings import settings
from tasks.store import sync_store

TOKEN_DELAY_S = 0.01
# What the app holds at rest, whatever it did before: its subscription, the shared reader's blocking XREAD, and up
# to IDLE_KEPT idle connections in each of its two pools (tasks.connection.close_idle closes the rest every ~2 s).
# "Back to baseline" is back to the larger of this and the count before the clients.
AT_REST = 2 + 2 * IDLE_KEPT
CONNECT_BATCH = 100  # clients connecting at once: a thousand SYNs at once overflow loopback's accept backlog


def expected_answer(tokens: int) -> str:
    return "".join(f"t{i}" if i == 0 else f" t{i}" for i in range(tokens))


def check(result: SseResult, answer: str) -> str:
    """'' when the client got every token of ``answer`` in order and one ``done``; else what went wrong."""
    if result.error:
        return result.error
    text = "".join(event.json()["text"] for event in result.events if event.event == "token")
    done = sum(1 for event in result.events if event.event == "done")
    if done != 1:
        return f"{done} done events"
    return "" if text == answer else f"text differs ({len(text)} of {len(answer)} characters)"


def app_figures(pid: int) -> tuple[int, int]:
    process = psutil.Process(pid)
    return process.memory_info().rss, process.num_fds()


async def run_clients(app: App, jobs: list[tuple[str, str]], clients: int, on_connected, settle) -> list[SseResult]:
    """``clients`` SSE clients spread evenly over ``jobs`` ((job id, key)); ``on_connected()`` once all have their
    response headers, before the jobs may run; ``settle()`` returns once the jobs have ended (or stopped ending).
    A client still open 120 s after that is closed, its result an error."""
    url = urlsplit(app.url)
    connected = [asyncio.Event() for _ in range(clients)]
    results = [SseResult() for _ in range(clients)]
    tasks = []
    for index in range(clients):
        job_id, key = jobs[index % len(jobs)]
        tasks.append(asyncio.create_task(follow(url.hostname, url.port, f"/stream/status/{job_id}",
                                                {"Authorization": f"Bearer {key}"}, connected[index],
                                                result=results[index])))
        if index % CONNECT_BATCH == CONNECT_BATCH - 1:
            await asyncio.gather(*(event.wait() for event in connected[index + 1 - CONNECT_BATCH:index + 1]))
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in connected)), 60)
    await asyncio.to_thread(on_connected)
    await asyncio.to_thread(settle)
    _, pending = await asyncio.wait(tasks, timeout=120)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if task in pending:
            tokens = sum(1 for event in result.events if event.event == "token")
            result.error = f"still open 120 s after the jobs ended ({tokens} tokens received by then)"
    return results


def measure(stack: Stack, app: App, workers: Workers, clients: int, job_count: int, tokens: int) -> dict:
    per_identity = math.ceil(clients / job_count)
    if per_identity > settings.max_streams_per_client:
        raise ValueError(f"{per_identity} clients per job is over MAX_STREAMS_PER_CLIENT")
    stack.reset_data()
    store, redis = sync_store(), stack.redis()
    store.pause(True)
    keys = api_keys(job_count, "sse")
    jobs = []
    for index, key in enumerate(keys):
        with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            body = {"message": f"sse {index} [[tokens={tokens}]] [[delay={TOKEN_DELAY_S}]]"}
            jobs.append((http.post("/api/chat", json=body).raise_for_status().json()["job_id"], key))
    time.sleep(1)
    figures = {"clients": clients, "jobs": job_count, "tokens": tokens}
    figures["rss_before"], figures["fds_before"] = app_figures(app.pid)
    groups = {"app": app.pid, "workers": workers.pid}
    figures["redis_before"] = owners(redis, groups)

    def all_connected() -> None:
        time.sleep(1)
        figures["rss_during"], figures["fds_during"] = app_figures(app.pid)
        figures["redis_during"] = owners(redis, groups)
        figures["connected_s"] = time.monotonic() - started
        store.pause(False)

    def settle() -> None:
        figures["stuck"] = wait_ended([job_id for job_id, _ in jobs], 240)

    started = time.monotonic()
    try:
        results = asyncio.run(run_clients(app, jobs, clients, all_connected, settle))
    finally:
        store.pause(False)
    figures["streamed_s"] = time.monotonic() - started
    closed = time.monotonic()
    figures["redis_rest"] = rest = max(figures["redis_before"]["app"], AT_REST)
    try:
        wait_for(lambda: owners(redis, groups)["app"] <= rest, 30,
                 "the app's Redis connections back to baseline", interval=0.1)
        figures["redis_back_s"] = time.monotonic() - closed
    except AssertionError:
        figures["redis_back_s"] = math.nan
    time.sleep(2)
    figures["redis_after"] = owners(redis, groups)
    figures["rss_after"], figures["fds_after"] = app_figures(app.pid)
    answer, stuck = expected_answer(tokens), set(figures["stuck"])
    on_stuck = [index for index in range(clients) if jobs[index % len(jobs)][0] in stuck]
    problems = [problem for index, result in enumerate(results)
                if index not in on_stuck and (problem := check(result, answer))]
    figures["on_stuck"] = len(on_stuck)
    figures["ok"] = clients - len(on_stuck) - len(problems)
    figures["problems"] = sorted(set(problems))[:5]
    figures["stuck"] = len(stuck)
    for job_id in stuck:  # end them, so the next section starts clean
        store.cancel(job_id)
    return figures


def section(f: dict) -> Section:
    n = f["clients"]
    rss, fds = f["rss_during"] - f["rss_before"], f["fds_during"] - f["fds_before"]
    rows = [[label, fmt_mb(f[f"rss_{when}"]), f[f"fds_{when}"], f[f"redis_{when}"]["app"],
             f[f"redis_{when}"]["workers"], sum(f[f"redis_{when}"].values())]
            for when, label in (("before", "before the clients"), ("during", f"{n} clients connected"),
                                ("after", "2 s after they closed"))]
    back = f"did **not** return to {f['redis_rest']} within 30 s" if math.isnan(f["redis_back_s"]) else \
        f"was back at {f['redis_rest']} or fewer {f['redis_back_s']:.1f} s after the last client closed"
    problems = "" if not f["problems"] else f" Problems seen: {'; '.join(f['problems'])}."
    hang = "" if not f["stuck"] else f"""
- **Engine hang**: {f['stuck']} of {f['jobs']} jobs never ended: each stayed `running` with all {f['tokens']} tokens appended and no
  `done`, its lease still renewed, while the fake LLM had finished every answer (no answer active) — the worker's
  call never returned, and `LLM_IDLE_TIMEOUT` did not end it. Their {f['on_stuck']} clients never got `done`; they
  are left out of the count above (the SSE path delivered every token those jobs wrote). The same hang stalled
  `benchmarks.load` and, in one run, the pipeline; it is reported to the engine's owner."""
    body = f"""{n} concurrent SSE clients on `/stream/status/{{id}}` of {f['jobs']} jobs ({n // f['jobs']} per job, each job and its clients one API
key: the per-identity limit of {settings.max_streams_per_client} streams is kept, not raised), raw asyncio sockets
(`devtools/raw_sse.py`). The jobs waited (admission paused) until every client had its response headers
({f['connected_s']:.1f} s), then all streamed {f['tokens']} tokens, one every {TOKEN_DELAY_S * 1000:g} ms (2 worker processes × 32 threads, so
that up to 64 run at once); everything was over {f['streamed_s']:.1f} s after the first client connected.

{table(["", "app RSS", "app file descriptors", "Redis conns: app", "workers", "all (CLIENT LIST)"], rows)}

- **Per client**: {rss / n / 1024:.1f} KiB of app memory and {fds / n:.2f} file descriptors (the client's socket).
- **Every client got every token in order**: {f['ok']} of {n - f['on_stuck']} clients received exactly the answer's text and one `done`
  — {verdict(n - f['on_stuck'] - f['ok'], 0, unit=' clients', digits=0)}.{problems}{hang}
- **Redis connections of the app**: {f['redis_during']['app'] - f['redis_before']['app']:+d} while {n} clients were connected (one shared
  reader per app process, however many follow), and its count {back}. The workers' pools grow with the jobs they
  run at once ({f['redis_before']['workers']} → {f['redis_after']['workers']}: {f['jobs']} jobs ran together) and keep their idle connections for
  the next jobs; that is not the SSE clients' doing. Sockets are matched to processes with psutil; "all" also
  counts this benchmark process's own.

Baseline of the issue: 1000 streams from one client cost 120 MB, 1600 file descriptors and ~630 Redis
connections that stayed open afterwards.
"""
    app_back = not math.isnan(f["redis_back_s"])
    summary = [[f"d. {n} SSE clients get every token in order", "all",
                f"{f['ok']}/{n - f['on_stuck']}" + (f" ({f['on_stuck']} on {f['stuck']} hung jobs left out)" if f["stuck"] else ""),
                "—", verdict(n - f["on_stuck"] - f["ok"], 0, unit=" clients", digits=0)],
               ["d. app's Redis connections back to baseline", "within seconds",
                f"{f['redis_back_s']:.1f} s (≤ {f['redis_rest']})" if app_back else
                f"not within 30 s (+{f['redis_after']['app'] - f['redis_rest']} over {f['redis_rest']})",
                "~630 stayed open", "**met**" if app_back and f["redis_back_s"] < 10 else "**missed**"]]
    return Section("d. SSE at scale", body, summary)
