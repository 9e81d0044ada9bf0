"""a. Time to first token added by the queue, against a direct pooled call to the same fake LLM.

Sequential requests with at least ``idle_pause_s`` of idleness before each (users do not type every 50 ms: what
matters is the path from rest, standby ticket and all). Queued and direct requests alternate so that drift on a
shared machine hits both alike. Every hop is read from where it happens, all on this machine's wall clock:

    submit (client) → admitted (``started_at``, Redis) → LLM request received (the fake LLM's wire clock)
    → first token appended (its stream entry id, Redis) → SSE delivered (client)
"""

from __future__ import annotations

import contextlib
import time

import httpx

from benchmarks.common import Section, verdict
from benchmarks.harness import Stack, Summary, fmt_ms, ratio, summarize, table
from devtools import sse
from devtools.waiting import wait_for
from tasks import keys, queue
from tasks.settings import settings

TARGET_P50_S, TARGET_P95_S = 0.010, 0.020
HOPS = ("admitted", "llm_received", "appended", "delivered")
HOP_LABELS = {"admitted": "submit → admitted", "llm_received": "admitted → LLM request received",
              "appended": "LLM received → first token appended", "delivered": "appended → SSE delivered"}


def direct_first_token(llm: httpx.Client, message: str) -> float:
    """Seconds from sending the chat request to the fake LLM (a pooled, kept-alive client) to its first line."""
    body = {"model": settings.ollama_model, "messages": [{"role": "user", "content": message}], "stream": True}
    start = time.perf_counter()
    with llm.stream("POST", "/api/chat", json=body) as response:
        for line in response.iter_lines():
            if line:
                return time.perf_counter() - start
    raise RuntimeError("the LLM sent nothing")


def queued_first_token(http: httpx.Client, message: str) -> tuple[float, float, float, str]:
    """(submitted at, first token delivered at — wall clock —, seconds between, job id): ``POST /api/chat``, then
    the job's SSE stream to its first ``token`` event."""
    wall, start = time.time(), time.perf_counter()
    job_id = http.post("/api/chat", json={"message": message, "priority": "high"}).raise_for_status().json()["job_id"]
    with contextlib.closing(sse.events(http, f"/stream/status/{job_id}")) as events:
        for event in events:
            if event.event == "token":
                elapsed = time.perf_counter() - start
                return wall, wall + elapsed, elapsed, job_id
    job = http.get(f"/api/jobs/{job_id}").json()
    raise RuntimeError(f"job {job_id} ended without a token event (status {job.get('status')}, "
                       f"error {job.get('error_code')}, answer {len(job.get('answer') or '')} characters)")


def hops(submitted: float, delivered: float, record: dict, llm_received: float, first_entry_ms: int) -> dict:
    """Each hop's seconds from the moments noted (Redis times are whole ms)."""
    admitted = int(record["started_at"]) / 1000
    appended = first_entry_ms / 1000
    return {"admitted": admitted - submitted, "llm_received": llm_received - admitted,
            "appended": appended - llm_received, "delivered": delivered - appended}


def first_token_entry_ms(client, job_id: str) -> int:
    for entry_id, fields in client.xrange(keys.stream(job_id)):
        if fields.get("k") == "token":
            return int(entry_id.split("-")[0])
    raise RuntimeError(f"job {job_id} has no token entry")


def series(stack: Stack, http: httpx.Client, llm: httpx.Client, reps: int, warmup: int, idle_s: float) -> dict:
    """Queued and direct first tokens, alternating, with the hops of each queued one."""
    client = stack.redis()
    queued, direct, parts, failed = [], [], {hop: [] for hop in HOPS}, []
    for rep in range(warmup + reps):
        time.sleep(idle_s)
        direct_s = direct_first_token(llm, f"ttft probe {rep}")
        time.sleep(idle_s)
        received_before = len(stack.clock.received)
        try:
            submitted, delivered, queued_s, job_id = queued_first_token(http, f"ttft probe {rep}")
        except (RuntimeError, httpx.HTTPError) as error:  # counted and shown, not hidden
            failed.append(str(error))
            continue
        record = wait_for(lambda: (raw := client.hgetall(keys.job(job_id))).get("status") in queue.TERMINAL
                          and raw, 30, f"job {job_id} to finish", interval=0.01)
        if rep < warmup:
            continue
        direct.append(direct_s)
        queued.append(queued_s)
        for hop, seconds in hops(submitted, delivered, record, stack.clock.received[received_before],
                                 first_token_entry_ms(client, job_id)).items():
            parts[hop].append(seconds)
    return {"queued": summarize(queued), "direct": summarize(direct), "failed": failed,
            "hops": {hop: summarize(values) for hop, values in parts.items()}}


def measure(stack: Stack, app_url: str, reps: int, warmup: int, idle_s: float) -> dict:
    """The run as the engine behaves by itself: each worker process keeps a standby ticket (tasks/actors.py)."""
    stack.reset_data()
    with httpx.Client(base_url=app_url, timeout=30) as http, httpx.Client(base_url=stack.fake.url, timeout=30) as llm:
        figures = series(stack, http, llm, reps, warmup, idle_s)
    return {**figures, "reps": reps, "warmup": warmup, "idle_s": idle_s}


def section(f: dict) -> Section:
    q, d = f["queued"], f["direct"]
    added50, added95 = q.p50 - d.p50, q.p95 - d.p95
    hop_rows = [[HOP_LABELS[hop], fmt_ms(s.p50), fmt_ms(s.p95)] for hop, s in f["hops"].items()]
    body = f"""Sequential requests, {f['reps']} measured after {f['warmup']} warm-up, {f['idle_s']:g} s of idleness before each
(queued and direct alternate). *Queued*: `POST /api/chat` → first `event: token` on `/stream/status/{{id}}`
(httpx, keep-alive). *Direct*: the same chat request to the same fake LLM with a pooled httpx client → its first
NDJSON line. 2 worker processes × 8 threads, as `main.py` runs them.

| | direct | queued | added by the queue | target (added) | |
|---|---|---|---|---|---|
| p50 | {fmt_ms(d.p50)} | {fmt_ms(q.p50)} | {fmt_ms(added50)} | ≤ 10 ms | {verdict(added50, TARGET_P50_S, unit=" ms", scale=1000)} |
| p95 | {fmt_ms(d.p95)} | {fmt_ms(q.p95)} | {fmt_ms(added95)} | ≤ 20 ms | {verdict(added95, TARGET_P95_S, unit=" ms", scale=1000)} |

Ratio queued ÷ direct: {ratio(q.p50, d.p50)} at p50, {ratio(q.p95, d.p95)} at p95. Baseline of the issue: 37.6 ms p50 /
48.7 ms p95 added (docs/benchmarks.md of 2026-11-28, another day's load).

Where the time goes, per hop (each percentile taken on its own, so they need not add up; the Redis moments are
whole milliseconds, so a hop reads ±1 ms):

{table(["hop", "p50", "p95"], hop_rows)}

{_why(f)}{_failed(f)}
"""
    summary = [["a. TTFT added, p50", "≤ 10 ms", fmt_ms(added50), "37.6 ms", verdict(added50, TARGET_P50_S, unit=" ms", scale=1000)],
               ["a. TTFT added, p95", "≤ 20 ms", fmt_ms(added95), "48.7 ms", verdict(added95, TARGET_P95_S, unit=" ms", scale=1000)]]
    return Section("a. Time to first token added by the queue", body, summary)


def _failed(f: dict) -> str:
    if not f.get("failed"):
        return ""
    return (f"\n\n**{len(f['failed'])} queued request(s) failed** and are not in the figures: "
            + "; ".join(sorted(set(f["failed"]))[:3]))


def _why(f: dict) -> str:
    """A reading of the breakdown: which hop holds the time (said only from the figures)."""
    hops_p50: dict[str, Summary] = f["hops"]
    worst = max(hops_p50, key=lambda hop: hops_p50[hop].p50)
    return (f"The largest hop at p50 is *{HOP_LABELS[worst]}* ({fmt_ms(hops_p50[worst].p50)}). Submit → admitted "
            "covers the HTTP request (identity, limits), the submit Lua step, the ticket sent and the standby ticket's "
            "wake-up and ADMIT step; admitted → LLM received is the worker's own Python (the record comes with the "
            "admission, the phase is set there, a first turn reads no context) and the request (httpx on aiohttp's "
            "connections); the appended → "
            "delivered hop is the app's shared XREAD waking, the fold, and the SSE write. Each is a few hops of asyncio "
            "on a 2-core machine that runs all of them, the fake LLM and the client at once.")
