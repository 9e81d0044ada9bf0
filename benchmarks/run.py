"""queuechat's benchmarks, measured side by side in one run, each against a baseline without the queue.

    uv run python -m benchmarks.run            # the full run (< 15 min), writes docs/benchmarks.md
    uv run python -m benchmarks.run --quick    # a smoke check with tiny repetitions (< 2 min)

a. queue overhead on time to first token: POST /api/chat → first SSE token, vs the same request to the LLM
b. pipeline throughput: jobs/s end to end with an instant LLM, vs a bare Dramatiq no-op actor
c. streaming: how far the browser (and an SSE client) lag behind the LLM's last token of a long answer
d. fan-out: app CPU and memory with 100 browser pages watching the metrics while 10 answers stream
e. queue scale: submit and position reads with 10,000 jobs waiting vs 10

Everything runs on loopback in a private stack (:mod:`devtools.stack`, with a clock on the fake LLM's wire from
:mod:`benchmarks.harness`): nothing of the user's is touched.
Each phase starts from an empty Redis. The fake LLM runs in this process, so its clock is the LLM's clock.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from benchmarks.harness import (
    BareWorkers,
    Stack,
    command_line,
    exit_code,
    fmt_mb,
    fmt_ms,
    load_average,
    log_problems,
    machine,
    now_utc,
    ratio,
    summarize,
    table,
    time_bound,
)
from devtools import sse
from devtools.browser import chromium
from devtools.fake_llm import Reply
from devtools.figures import cpu_percent, descendants_pss, established_connections, rss_bytes
from devtools.processes import ROOT
from devtools.stack import App
from devtools.waiting import wait_for
from tasks import jobs, queue
from tasks.settings import settings

REPORT = ROOT / "docs" / "benchmarks.md"
MARKER = "ENDMARK"
TERMINAL = set(queue.TERMINAL)


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run measures."""

    bound_s: float
    ttft_warmup: int
    ttft_reps: int
    idle_pause_s: float       # idleness before each TTFT request: the consumers are at their full poll back-off
    pipeline_jobs: int
    noop_messages: int
    throughput_reps: int
    stream_tokens: int
    stream_reps: int
    fanout_pages: int
    fanout_contexts: int
    fanout_window_s: float
    scale_waiting: int
    scale_reps: int


FULL = Sizes(bound_s=15 * 60, ttft_warmup=5, ttft_reps=30, idle_pause_s=2.0, pipeline_jobs=200,
             noop_messages=2000, throughput_reps=3, stream_tokens=2000, stream_reps=3, fanout_pages=100,
             fanout_contexts=4, fanout_window_s=10.0, scale_waiting=10_000, scale_reps=200)
QUICK = Sizes(bound_s=180, ttft_warmup=1, ttft_reps=3, idle_pause_s=1.2, pipeline_jobs=40, noop_messages=300,
              throughput_reps=1, stream_tokens=400, stream_reps=1, fanout_pages=4, fanout_contexts=2,
              fanout_window_s=2.0, scale_waiting=1_000, scale_reps=20)
TOKEN_DELAY_S = 0.005  # 200 tokens/s
PAGE_LOAD_S = 3.0      # (d) allowance per page for all pages to come up (Chromium needs ~2.5 s of a loaded core each)
RESERVE_AFTER_PAGES_S = 150  # (d) time kept for the rest of the run once pages are loading


class Budget:
    """What is left of the run's time bound: the slowest phase (pages coming up) shrinks its own waiting rather
    than have the bound end the run without a report."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


@dataclass
class Section:
    title: str
    body: str


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# --- a. time to first token --------------------------------------------------------------------------------

def first_token_via_queue(http: httpx.Client, message: str) -> tuple[float, str]:
    """Seconds from ``POST /api/chat`` to the first ``event: token`` on the job's SSE stream."""
    start = time.perf_counter()
    job_id = http.post("/api/chat", json={"message": message, "priority": "high"}).raise_for_status().json()["job_id"]
    with contextlib.closing(sse.events(http, f"/stream/status/{job_id}")) as events:
        for event in events:
            if event.event == "token":
                return time.perf_counter() - start, job_id
    raise RuntimeError(f"job {job_id} ended without a token")


def first_token_direct(llm: httpx.Client, message: str) -> float:
    """Seconds from sending the same chat request to the LLM to its first NDJSON line."""
    body = {"model": settings.ollama_model, "messages": [{"role": "user", "content": message}], "stream": True}
    start = time.perf_counter()
    with llm.stream("POST", "/api/chat", json=body) as response:
        for line in response.iter_lines():
            if line:
                return time.perf_counter() - start
    raise RuntimeError("the LLM sent nothing")


def wait_finished(client, job_id: str, timeout: float = 30.0) -> dict:
    return wait_for(lambda: (raw := client.hgetall(queue.job_key(job_id))).get("status") in TERMINAL and raw,
                    timeout, f"job {job_id} to finish", interval=0.01)


def measure_ttft(stack: Stack, app_url: str, sizes: Sizes) -> dict:
    """Sequential requests on an idle system, queue and direct interleaved so that drift hits both alike."""
    stack.reset_data()
    client = stack.redis()
    queued, direct, pickup, worker = [], [], [], []
    with httpx.Client(base_url=app_url, timeout=30) as http, httpx.Client(base_url=stack.fake.url, timeout=30) as llm:
        for rep in range(sizes.ttft_warmup + sizes.ttft_reps):
            time.sleep(0.2)
            direct_s = first_token_direct(llm, f"ttft probe {rep}")
            time.sleep(sizes.idle_pause_s)
            queued_s, job_id = first_token_via_queue(http, f"ttft probe {rep}")
            raw = wait_finished(client, job_id)
            if rep < sizes.ttft_warmup:
                continue
            direct.append(direct_s)
            queued.append(queued_s)
            pickup.append((int(raw["started_at"]) - int(raw["created_at"])) / 1000)
            worker.append((int(raw["first_token_at"]) - int(raw["started_at"])) / 1000)
    return {"queued": summarize(queued), "direct": summarize(direct), "pickup": summarize(pickup),
            "worker": summarize(worker)}


def ttft_section(f: dict, sizes: Sizes) -> Section:
    q, d, pickup, worker = f["queued"], f["direct"], f["pickup"], f["worker"]
    p50_added = q.p50 - d.p50
    verdict = "meets" if p50_added < 0.010 else "misses"
    body = f"""Sequential requests on an idle system ({sizes.ttft_reps} measured after {sizes.ttft_warmup} warm-up,
{sizes.idle_pause_s:g} s of idleness before each request), `QUEUE_RATE_PER_MIN=0`, `QUEUE_CONCURRENCY=16`,
2 worker processes × 8 threads as `main.py` runs them. *Queued*: `POST /api/chat` → first `event: token` on
`/stream/status/{{id}}`. *Direct*: the same chat request sent to the same fake LLM with httpx → its first NDJSON line.

{table(["direct p50", "queued p50", "added p50", "ratio", "direct p95", "queued p95", "added p95", "ratio"],
       [[fmt_ms(d.p50), fmt_ms(q.p50), fmt_ms(p50_added), ratio(q.p50, d.p50),
         fmt_ms(d.p95), fmt_ms(q.p95), fmt_ms(q.p95 - d.p95), ratio(q.p95, d.p95)]])}

queuechat **{verdict}** the target of < 10 ms added at p50 ({fmt_ms(p50_added)}). Where the time goes (Redis
clock, ms resolution, from the job hash): *pickup* = `created_at` → `started_at` (a worker fetched the ticket
and admitted the job), *worker* = `started_at` → `first_token_at` (job read, `/api/ps`, LLM connection, first
chunk appended).

{table(["pickup p50", "pickup p95", "worker p50", "worker p95"],
       [[fmt_ms(pickup.p50, 0), fmt_ms(pickup.p95, 0), fmt_ms(worker.p50, 0), fmt_ms(worker.p95, 0)]])}

*Pickup*: an idle Dramatiq Redis consumer polls with an exponential back-off capped by `worker_timeout`;
`main.py` sets `dramatiq_worker_timeout=20` (`tasks.broker.worker_environment`), so each idle sleep is 10–20 ms
and a ticket waits for the next poll of one of the two consumers. *Worker*: the job's record and conversation
are read, its phase is recorded, then `/api/chat` goes out over the worker's shared connection pool (one per
event loop; `/api/ps` is cached for 5 s) and the first chunk is appended to the job's Stream. The SSE side adds
its own Redis round trips (the stream read and the job JSON of each status event).
"""
    return Section("a. Queue overhead on time to first token", body)


# --- b. pipeline throughput -------------------------------------------------------------------------------

def pipeline_rate(stack: Stack, count: int) -> float:
    """Jobs/s from the first submit until the last job is counted completed (instant 1-token answers)."""
    stack.reset_data()
    client = stack.redis()
    start = time.perf_counter()
    for index in range(count):
        jobs.submit(f"[[tokens=1]] throughput {index}", user="bench")
    wait_for(lambda: int(client.hget(queue.TOTALS, "completed") or 0) >= count, 120, f"{count} jobs completed",
             interval=0.005)
    return count / (time.perf_counter() - start)


def noop_rate(stack: Stack, count: int) -> float:
    """Messages/s through a bare Dramatiq actor that only INCRs a counter."""
    from benchmarks import noop_actor  # binds to this stack's Redis (REDIS_URL) when first imported

    client = stack.redis()
    client.delete(noop_actor.COUNTER)
    start = time.perf_counter()
    for _ in range(count):
        noop_actor.noop.send()
    wait_for(lambda: int(client.get(noop_actor.COUNTER) or 0) >= count, 120, f"{count} no-op messages",
             interval=0.005)
    return count / (time.perf_counter() - start)


def measure_pipeline(stack: Stack, sizes: Sizes) -> list[float]:
    pipeline_rate(stack, 10)  # warm-up: connections, imports, the LLM client
    return [pipeline_rate(stack, sizes.pipeline_jobs) for _ in range(sizes.throughput_reps)]


def measure_noop(stack: Stack, sizes: Sizes) -> list[float]:
    noop_rate(stack, 50)
    return [noop_rate(stack, sizes.noop_messages) for _ in range(sizes.throughput_reps)]


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}"


def throughput_section(pipeline: list[float], noop: list[float], sizes: Sizes) -> Section:
    p, n = summarize(pipeline), summarize(noop)
    body = f"""End to end: {sizes.pipeline_jobs} jobs submitted with `tasks.jobs.submit` from one thread while the workers
run, until `completed` in `qc:totals` reaches the count; the LLM answers at once with one token
(`[[tokens=1]]`). `QUEUE_CONCURRENCY=16`, 2 worker processes × 8 threads (`dramatiq tasks.actors`, as `main.py`
runs them). Baseline: a bare Dramatiq actor that only `INCR`s a counter (`benchmarks/noop_actor.py`,
`dramatiq benchmarks.noop_actor`), {sizes.noop_messages} messages sent with `.send()`. For a fair comparison the
baseline runs with the same processes, threads, Redis and worker environment (`worker_environment(8)`:
`dramatiq_queue_prefetch=8`, `dramatiq_worker_timeout=20`).
{sizes.throughput_reps} repetition(s) each; the app is up and idle in both.

{table(["", "median", "range", "ratio to no-op"],
       [["queuechat jobs/s", f"{p.p50:.0f}", spread(pipeline), ratio(p.p50, n.p50)],
        ["bare Dramatiq no-op messages/s", f"{n.p50:.0f}", spread(noop), "1.00×"]])}

A queuechat job is several Redis round trips more than a Dramatiq message (submit Lua, ticket, admission Lua,
job read, phase and token appends, finish Lua, metrics pipeline) plus the HTTP call to the LLM
(over a pooled connection) and the Python work of two processes per job on 2 cores. On this machine the fake
LLM also shares a process with the submitting loop.
"""
    return Section("b. Pipeline throughput", body)


# --- c. streaming -----------------------------------------------------------------------------------------

#: Installed in every page before its scripts: note the first moment an answer bubble shows the marker.
ENDMARK_OBSERVER = """
window.__endmark = null;
new MutationObserver(() => {
  if (window.__endmark !== null) return;
  for (const el of document.querySelectorAll('[data-testid=answer]')) {
    if (el.textContent.includes('MARKER')) { window.__endmark = Date.now(); return; }
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
""".replace("MARKER", MARKER)


def message_input(page):
    """The composer's textarea (``data-testid=message-input`` sits on the Quasar wrapper or on the textarea)."""
    return page.locator("textarea[data-testid=message-input], [data-testid=message-input] textarea").first


class SseWatcher(threading.Thread):
    """A plain SSE client on the same job: the second reference for the last token's arrival."""

    def __init__(self, app_url: str, job_id: str) -> None:
        super().__init__(name="sse-watcher", daemon=True)
        self.url = f"{app_url}/stream/status/{job_id}"
        self.marker_at: float | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                for event in sse.events(client, self.url, timeout=60):
                    if event.event == "token" and MARKER in event.data["text"]:
                        self.marker_at = time.time()
                    if event.event == "done":
                        return
        except httpx.HTTPError as error:  # reported by the caller
            self.error = error


def long_reply(stack: Stack, tokens: int) -> None:
    """Script the fake LLM's next answer: ``tokens`` tokens at 200/s, the last one the marker."""
    stack.fake.reset()
    stack.fake.script(Reply(tokens=[f"w{i} " for i in range(tokens - 1)] + [MARKER], token_delay=TOKEN_DELAY_S))


def lags(stack: Stack, watcher: SseWatcher, shown_at: float) -> dict:
    watcher.join(30)
    if watcher.error or watcher.marker_at is None:
        raise RuntimeError(f"the SSE reference client did not see the last token: {watcher.error}")
    sent_at, first_at = stack.clock.marker_sent[-1], stack.clock.first_chunk[-1]
    return {"browser": shown_at - sent_at, "sse": watcher.marker_at - sent_at, "llm_duration": sent_at - first_at}


def stream_in_browser(browser, stack: Stack, app_url: str, tokens: int) -> dict:
    """One long answer, typed into the page; the browser's and the SSE client's lag behind the LLM."""
    long_reply(stack, tokens)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        context.add_init_script(ENDMARK_OBSERVER)
        page = context.new_page()
        page.goto(app_url + "/")
        box = message_input(page)
        box.wait_for(timeout=30_000)
        box.fill(f"benchmark: stream {tokens} tokens")
        box.press("Enter")
        message = page.locator("[data-testid=message][data-job-id]").last
        message.wait_for(timeout=30_000)
        watcher = SseWatcher(app_url, message.get_attribute("data-job-id"))
        watcher.start()
        page.wait_for_function("window.__endmark !== null", timeout=(tokens * TOKEN_DELAY_S + 60) * 1000,
                               polling=50)
        shown_at = page.evaluate("window.__endmark") / 1000
    finally:
        context.close()
    return lags(stack, watcher, shown_at)


def stream_over_sse(stack: Stack, app_url: str, tokens: int) -> dict:
    """The same answer submitted through the API, SSE only (when the page can't be driven)."""
    long_reply(stack, tokens)
    job_id = httpx.post(app_url + "/api/chat", json={"message": f"benchmark: stream {tokens} tokens"},
                        timeout=30).raise_for_status().json()["job_id"]
    watcher = SseWatcher(app_url, job_id)
    watcher.start()
    watcher.join(tokens * TOKEN_DELAY_S + 60)
    return {**lags(stack, watcher, math.nan), "browser": math.nan}


def measure_streaming(browser, stack: Stack, app_url: str, sizes: Sizes) -> dict:
    """Browser and SSE together; should the page not work (the UI is changing), SSE alone, and say why."""
    stack.reset_data()
    runs, ui_problem = [], None
    for _ in range(sizes.stream_reps):
        if ui_problem is None:
            try:
                runs.append(stream_in_browser(browser, stack, app_url, sizes.stream_tokens))
                continue
            except PlaywrightError as error:
                ui_problem = str(error).strip().splitlines()[0]
                log(f"the page could not be driven ({ui_problem}); measuring over SSE only")
                stack.fake.wait_idle(sizes.stream_tokens * TOKEN_DELAY_S + 30)
        runs.append(stream_over_sse(stack, app_url, sizes.stream_tokens))
    figures = {key: summarize([run[key] for run in runs if not math.isnan(run[key])])
               for key in ("browser", "sse", "llm_duration")}
    return {**figures, "ui_problem": ui_problem}


def share(part: float, whole: float) -> str:
    return "—" if math.isnan(part) or not whole else f"{100 * part / whole:.2f} %"


def streaming_section(figures: dict, sizes: Sizes) -> Section:
    b, s, d = figures["browser"], figures["sse"], figures["llm_duration"]
    nominal = sizes.stream_tokens * TOKEN_DELAY_S
    unmeasured = (f"\n**The browser part could not run** (`{figures['ui_problem']}`): the figures are SSE only; it "
                  "runs again as soon as the page has `data-testid=message-input` and answer bubbles.\n"
                  if figures["ui_problem"] else "")
    body = f"""A {sizes.stream_tokens}-token answer at {1 / TOKEN_DELAY_S:.0f} tokens/s (nominal {nominal:g} s; the fake LLM
actually took {d.p50:.2f} s at the median), typed into the page (`data-testid=message-input`, Enter) in headless
Chromium. The last token is a unique marker (`{MARKER}`); a MutationObserver in the page notes when an answer
bubble (`data-testid=answer`) first contains it. The LLM-side time is taken on the wire: an ASGI wrapper around
the fake LLM notes when the chunk with the marker was written. A plain SSE client on `/stream/status/{{id}}`
watching the same job is the second reference. {sizes.stream_reps} repetition(s); one browser page at a time.

{table(["last token", "p50 lag behind the LLM", "p95", "ratio to SSE (p50)"],
       [["SSE client", fmt_ms(s.p50), fmt_ms(s.p95), "1.00×"],
        ["browser page", fmt_ms(b.p50), fmt_ms(b.p95), ratio(b.p50, s.p50)]])}

Lag as a share of the answer's duration: {share(b.p50, d.p50)} (browser), {share(s.p50, d.p50)} (SSE).
{unmeasured}"""
    return Section("c. Streaming a long answer", body)


# --- d. fan-out -------------------------------------------------------------------------------------------

def app_figures(pid: int, seconds: float) -> dict:
    return {"cpu": cpu_percent(pid, seconds), "rss": rss_bytes(pid)}


def open_pages(browser, url: str, pages: int, contexts: int) -> tuple[list, list]:
    """``pages`` tabs on the app, spread over ``contexts`` browser contexts (separate cookies: separate users)."""
    opened_contexts = [browser.new_context(viewport={"width": 1400, "height": 900}) for _ in range(contexts)]
    opened = []
    for index in range(pages):
        page = opened_contexts[index % contexts].new_page()
        try:
            page.goto(url + "/", wait_until="commit", timeout=120_000)
        except PlaywrightTimeout:
            log(f"page {index + 1} did not load in time; it counts as not live")
        opened.append(page)
    return opened_contexts, opened


LIVE_FIGURES = """() => {
  const value = document.querySelector('[data-testid=metric-workers] [data-testid=metric-value]');
  return value !== null && value.textContent.trim() !== '—';
}"""


def live_pages(pages: list, timeout: float) -> int:
    """How many pages show figures pushed by the server (their websocket is up), waiting at most ``timeout``."""
    deadline = time.monotonic() + timeout
    waiting = list(pages)
    while waiting and time.monotonic() < deadline:
        waiting = [page for page in waiting if not _shows_figures(page)]
        time.sleep(0.5)
    return len(pages) - len(waiting)


def _shows_figures(page) -> bool:
    try:
        return bool(page.evaluate(LIVE_FIGURES))
    except PlaywrightError:  # still navigating: not yet
        return False


def measure_fanout(browser, stack: Stack, app: App, sizes: Sizes, budget: Budget) -> dict:
    app_pid, app_url = app.pid, app.url
    stack.reset_data()
    time.sleep(1)
    figures = {"idle": app_figures(app_pid, sizes.fanout_window_s)}
    started = time.monotonic()
    contexts, pages = open_pages(browser, app_url, sizes.fanout_pages, sizes.fanout_contexts)
    try:
        allowance = min(max(60.0, sizes.fanout_pages * PAGE_LOAD_S), budget.left() - RESERVE_AFTER_PAGES_S)
        figures["live"] = live_pages(pages, timeout=max(20.0, allowance))
        figures["open_s"] = time.monotonic() - started
        figures["connections"] = established_connections(app.port)
        time.sleep(2)
        figures["watching"] = app_figures(app_pid, sizes.fanout_window_s)
        tokens = int((sizes.fanout_window_s + 8) / TOKEN_DELAY_S)
        with httpx.Client(base_url=app_url, timeout=30) as http:
            for index in range(10):
                http.post("/api/chat", json={"message": f"[[tokens={tokens}]] [[delay={TOKEN_DELAY_S}]] fan-out {index}"}
                          ).raise_for_status()
            wait_for(lambda: http.get("/api/queue/stats").json()["running"] >= 10, 30, "10 answers streaming")
            figures["streaming"] = app_figures(app_pid, sizes.fanout_window_s)
            figures["running_after"] = http.get("/api/queue/stats").json()["running"]
        figures["browser_pss"] = descendants_pss("chrom")
    finally:
        for context in contexts:
            context.close()
    return figures


def fanout_section(f: dict, sizes: Sizes) -> Section:
    idle = f["idle"]
    rows = [["no page open", f"{idle['cpu']:.1f} %", "1.00×", fmt_mb(idle["rss"]), "1.00×"]]
    for key, label in (("watching", f"{sizes.fanout_pages} pages watching the metrics"),
                       ("streaming", f"{sizes.fanout_pages} pages + 10 answers streaming")):
        cpu, rss = f[key]["cpu"], f[key]["rss"]
        rows.append([label, f"{cpu:.1f} %", ratio(cpu, idle["cpu"]), fmt_mb(rss), ratio(rss, idle["rss"])])
    body = f"""{sizes.fanout_pages} Chromium pages on `/` (1400 px wide, so the metrics drawer is shown and refreshes every second),
in {sizes.fanout_contexts} browser contexts (each its own user). {f['live']} of {sizes.fanout_pages} pages showed live figures
(opened in {f['open_s']:.0f} s; {f['connections']} TCP connections open on the app's port). Then 10 answers were
submitted through the API, each {TOKEN_DELAY_S * 1000:g} ms per token for longer than the window
({f['running_after']} still running at the end of it). App process (`main.py`, one process: NiceGUI, API and
the Redis listener) CPU in % of one core over {sizes.fanout_window_s:g} s windows (psutil's `cpu_times`); memory
is its resident set size at the end of the window.

{table(["", "app CPU", "ratio", "app RSS", "ratio"], rows)}

The workers (2 processes × 8 threads, as `main.py` runs them) prefetch no more tickets than they have threads
(`dramatiq_queue_prefetch=8`), so the 10 answers are spread over both processes and all run at once.

The browser itself (all Chromium processes, PSS summed) used {fmt_mb(f['browser_pss'])}; on this
{machine()['cores']}-core machine it competes with the app for CPU, so the app's share is a lower bound of what it
would use with its own cores.
"""
    return Section("d. Fan-out to browser pages", body)


# --- e. queue scale ---------------------------------------------------------------------------------------

def submit_many(count: int, threads: int = 4) -> None:
    def one(index: int) -> None:
        jobs.submit(f"waiting {index}", user=f"fill-{index % 50}", priority="low")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))


def last_in_queue(stack: Stack) -> str:
    return stack.redis().zrange(queue.WAITING, -1, -1)[0]


def read_latencies(stack: Stack, http: httpx.Client, last_id: str, depth: int, reps: int) -> dict:
    """Submit (kept at constant depth: each probe job is cancelled again), job read, raw ZRANK, stats."""
    client = stack.redis()
    submit, read, zrank, stats = [], [], [], []
    for _ in range(reps):
        start = time.perf_counter()
        job_id = http.post("/api/chat", json={"message": "scale probe", "priority": "low"}).raise_for_status().json()["job_id"]
        submit.append(time.perf_counter() - start)
        jobs.cancel(job_id)
        start = time.perf_counter()
        body = http.get(f"/api/jobs/{last_id}").raise_for_status().json()
        read.append(time.perf_counter() - start)
        if body["position"] != depth - 1:
            raise RuntimeError(f"position {body['position']} with {depth} waiting")
        zrank.append(timed(lambda: queue.position(client, last_id)))
        stats.append(timed(lambda: http.get("/api/queue/stats").raise_for_status()))
    client.config_resetstat()
    for _ in range(reps):
        queue.position(client, last_id)
    server = client.info("commandstats").get("cmdstat_zrank", {}).get("usec_per_call", math.nan)
    return {"submit": summarize(submit), "read": summarize(read), "zrank": summarize(zrank),
            "stats": summarize(stats), "zrank_server_us": server}


def measure_scale(stack: Stack, app_url: str, sizes: Sizes) -> dict:
    """No workers run: every job waits. First 10 waiting, then ``scale_waiting``."""
    stack.reset_data()
    figures = {}
    with httpx.Client(base_url=app_url, timeout=30) as http:
        submit_many(10)
        read_latencies(stack, http, last_in_queue(stack), 10, max(5, sizes.scale_reps // 4))  # warm-up
        figures["small"] = read_latencies(stack, http, last_in_queue(stack), 10, sizes.scale_reps)
        start = time.perf_counter()
        submit_many(sizes.scale_waiting - 10)
        figures["fill_rate"] = (sizes.scale_waiting - 10) / (time.perf_counter() - start)
        figures["large"] = read_latencies(stack, http, last_in_queue(stack), sizes.scale_waiting, sizes.scale_reps)
    return figures


def scale_section(f: dict, sizes: Sizes) -> Section:
    small, large = f["small"], f["large"]
    rows = []
    for key, label in (("submit", "`POST /api/chat` (submit)"), ("read", "`GET /api/jobs/{id}` (position, ETA)"),
                       ("zrank", "`tasks.queue.position` (raw ZRANK, one round trip)"),
                       ("stats", "`GET /api/queue/stats`")):
        a, b = small[key], large[key]
        rows.append([label, fmt_ms(a.p50, 2), fmt_ms(b.p50, 2), ratio(b.p50, a.p50), fmt_ms(a.p95, 2),
                     fmt_ms(b.p95, 2), ratio(b.p95, a.p95)])
    body = f"""No workers running, so every job waits (`QUEUE_MAX_WAITING` raised above the depth). The probe reads the
last job in the queue (position {sizes.scale_waiting - 1} of {sizes.scale_waiting:,}). Each probe submission is cancelled again
at once, so the depth stays constant. {sizes.scale_reps} repetitions of each, sequential, over HTTP keep-alive.

{table(["operation", "10 waiting p50", f"{sizes.scale_waiting:,} waiting p50", "ratio", "10 waiting p95",
        f"{sizes.scale_waiting:,} waiting p95", "ratio"], rows)}

Inside Redis, ZRANK took {small['zrank_server_us']:.2f} µs per call with 10 waiting and {large['zrank_server_us']:.2f} µs
with {sizes.scale_waiting:,} (`INFO commandstats`). Filling the queue ran at {f['fill_rate']:.0f} submissions/s
(`tasks.jobs.submit`, 4 threads).
"""
    return Section("e. Queue scale", body)


# --- the run ----------------------------------------------------------------------------------------------

def run(sizes: Sizes) -> list[Section]:
    """The phases in an order that needs few worker restarts; the report lists them a to e."""
    sections: dict[str, Section] = {}
    budget = Budget(sizes.bound_s)

    def done(key: str, section: Section) -> None:
        sections[key] = section
        print(f"\n## {section.title}\n\n{section.body}", flush=True)

    with Stack("run", QUEUE_CONCURRENCY="16", QUEUE_MAX_WAITING=str(sizes.scale_waiting + 1000)) as stack:
        log(f"private Redis on {stack.redis_server.url}, fake LLM on {stack.fake.url}")
        app = stack.start_app("--no-workers")
        browser = stack.enter(chromium())
        log(f"app on {app.url}")
        with stack.workers(processes=2, threads=8):
            log("a. time to first token (2 worker processes × 8 threads, as main.py starts them)")
            done("a", ttft_section(measure_ttft(stack, app.url, sizes), sizes))
            log("c. streaming")
            done("c", streaming_section(measure_streaming(browser, stack, app.url, sizes), sizes))
            log("b. pipeline throughput")
            pipeline = measure_pipeline(stack, sizes)
        with stack.workers(processes=2, threads=8, kind=BareWorkers):
            log("b. bare Dramatiq no-op baseline")
            done("b", throughput_section(pipeline, measure_noop(stack, sizes), sizes))
        with stack.workers(processes=2, threads=8):
            log(f"d. fan-out to {sizes.fanout_pages} pages")
            done("d", fanout_section(measure_fanout(browser, stack, app, sizes, budget), sizes))
        log(f"e. queue scale: 10 vs {sizes.scale_waiting:,} waiting (no workers)")
        done("e", scale_section(measure_scale(stack, app.url, sizes), sizes))
        problems = log_problems(app.output())
    if problems:
        sections["z"] = problems_section(problems)
    return [sections[key] for key in sorted(sections)]


def problems_section(problems: list[str]) -> Section:
    """The app's ERROR records, alike ones counted together (by their last line), each shown once in full."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        groups.setdefault(problem.strip().splitlines()[-1], []).append(problem)
    parts = [f"{len(problems)} ERROR record(s) or traceback(s) in the app's log during the run:\n"]
    for last_line, alike in groups.items():
        parts.append(f"* {len(alike)} × `{last_line[:200]}`, for example:\n\n```\n{alike[0][-4000:]}\n```\n")
    return Section("Problems seen in the app log", "\n".join(parts))


def render(sections: list[Section], quick: bool, load_before: str, load_after: str, seconds: float) -> str:
    info = machine()
    mode = "**quick smoke run: tiny repetitions, not representative**" if quick else "full run"
    header = f"""# Benchmarks

Measured with `{command_line()}` on {now_utc()} ({mode}, {seconds / 60:.1f} min).
Regenerate with `uv run python -m benchmarks.run` (full, < 15 min) or `--quick` (smoke check, < 2 min);
the file is rewritten by the script.

**Machine**: {info['cores']} cores (`os.cpu_count()`), {info['cpu']}, {info['memory']} RAM, {info['os']},
Python {info['python']}. **Load average** (1/5/15 min): {load_before} before, {load_after} after — other work
on the machine shares these cores, so compare figures within one run (each has its baseline next to it).

Everything ran on loopback in a private stack started by the script: the embedded `redis-server` on a free port
in a temporary folder, the fake LLM (`devtools/fake_llm`) in the benchmark process, `main.py --no-workers`
and the `dramatiq` CLI as subprocesses, the workers with the environment `main.py` gives them
(`tasks.broker.worker_environment`: `dramatiq_queue_prefetch` = threads, `dramatiq_worker_timeout=20`).
Percentiles: median, and the nearest-rank 95th percentile. Ratios are queuechat ÷ baseline.
"""
    return header + "".join(f"\n## {s.title}\n\n{s.body}" for s in sections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny repetitions: a smoke check in < 2 minutes")
    parser.add_argument("--output", type=Path, default=REPORT, help=f"where to write the report ({REPORT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    load_before, started = load_average(), time.monotonic()
    with time_bound(sizes.bound_s):
        sections = run(sizes)
    report = render(sections, args.quick, load_before, load_average(), time.monotonic() - started)
    args.output.write_text(report)
    print(report)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
