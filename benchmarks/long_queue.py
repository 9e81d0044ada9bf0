"""f. A long queue: 10,000 waiting jobs against 10.

No workers run, so every job waits. The probes, each sequential over keep-alive: a submit through the API (then
cancelled at once, so the depth stays), the position of the last job in line (the store's one-round-trip read,
what the pages and the bus use), the same job over the API (position and ETA), the stats endpoint (the metrics
cards' source) and the admin board's read (the queue view of ``/admin``).
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from benchmarks.common import Section, verdict
from benchmarks.harness import Stack, fmt_ms, ratio, summarize, table
from tasks import keys
from tasks.store import sync_store

TARGET_SUBMIT_P99_S, TARGET_POSITION_P99_S = 0.005, 0.001
PROBES = {"submit": "`POST /api/chat` (submit)", "store_submit": "`JobStore.submit` (its Lua step and ticket, no HTTP)",
          "position": "position read (`JobStore.positions`, one Lua step)",
          "job": "`GET /api/jobs/{id}` (position, ETA)", "stats": "`GET /api/queue/stats`",
          "board": "admin board read (`JobStore.board`, first 200)",
          "board10": "admin board read, first 10 (as many rows at both depths)"}
FLAT = ("job", "stats", "board10")  # the views whose work should not grow with the line


def fill(count: int, threads: int = 4) -> float:
    """Submit ``count`` low-priority jobs of 50 people; submissions per second."""
    def one(index: int) -> None:
        sync_store().submit(f"waiting {index}", user=f"fill-{index % 50}", priority="low")

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - start)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def probe(stack: Stack, http: httpx.Client, own_job: str, depth: int, reps: int) -> dict:
    """``own_job``: a waiting job of the API caller (the API shows a caller its own jobs only)."""
    store = sync_store()
    last = stack.redis().zrange(keys.WAITING, -1, -1)[0]
    samples: dict[str, list[float]] = {name: [] for name in PROBES}
    for _ in range(reps):
        start = time.perf_counter()
        job_id = http.post("/api/chat", json={"message": "scale probe", "priority": "low"}).raise_for_status().json()[
            "job_id"]
        samples["submit"].append(time.perf_counter() - start)
        store.cancel(job_id)
        start = time.perf_counter()
        job_id = store.submit("scale probe", user="probe", priority="low").job_id
        samples["store_submit"].append(time.perf_counter() - start)
        store.cancel(job_id)
        start = time.perf_counter()
        position = store.positions([last])[last]
        samples["position"].append(time.perf_counter() - start)
        if position != depth - 1:
            raise RuntimeError(f"position {position} of the last job with {depth} waiting")
        start = time.perf_counter()
        shown = http.get(f"/api/jobs/{own_job}").raise_for_status().json()["position"]
        samples["job"].append(time.perf_counter() - start)
        if shown != store.positions([own_job])[own_job]:
            raise RuntimeError(f"the API shows position {shown}, the store another")
        samples["stats"].append(timed(lambda: http.get("/api/queue/stats").raise_for_status()))
        samples["board"].append(timed(store.board))
        samples["board10"].append(timed(lambda: store.board(10)))
    return {name: summarize(values) for name, values in samples.items()}


def measure(stack: Stack, app_url: str, waiting: int, reps: int) -> dict:
    stack.reset_data()
    with httpx.Client(base_url=app_url, timeout=30) as http:
        own = http.post("/api/chat", json={"message": "the caller's own", "priority": "low"}).raise_for_status().json()[
            "job_id"]
        fill(9)
        probe(stack, http, own, 10, max(5, reps // 4))  # warm-up
        small = probe(stack, http, own, 10, reps)
        fill_rate = fill(waiting - 10)
        large = probe(stack, http, own, waiting, reps)
    return {"waiting": waiting, "reps": reps, "small": small, "large": large, "fill_rate": fill_rate}


def section(f: dict) -> Section:
    small, large, n = f["small"], f["large"], f"{f['waiting']:,}"
    rows = [[label, fmt_ms(small[name].p50, 2), fmt_ms(large[name].p50, 2), ratio(large[name].p50, small[name].p50),
             fmt_ms(small[name].p99, 2), fmt_ms(large[name].p99, 2), ratio(large[name].p99, small[name].p99)]
            for name, label in PROBES.items()]
    submit99, position99 = large["submit"].p99, large["position"].p99
    body = f"""No workers, so every job waits (`QUEUE_MAX_WAITING` and `QUEUE_MAX_WAITING_PER_USER` raised above the depth); the line
filled by 50 people (fair share in play). The position probe reads the last job in line (position {f['waiting'] - 1:,}), the API probe a job of
the caller's own (the API shows nobody else's), checked against the store's; each probe submission is cancelled at
once, so the depth stays. {f['reps']} repetitions each, sequential, over HTTP keep-alive, from this process.

{table(["operation", "10 waiting p50", f"{n} waiting p50", "ratio", "10 waiting p99", f"{n} waiting p99", "ratio"], rows)}

- **Submit p99 with {n} waiting: {fmt_ms(submit99, 2)}** (target < 5 ms): {verdict(submit99, TARGET_SUBMIT_P99_S, strict=True, unit=" ms", scale=1000, digits=2)}.
- **Position read p99: {fmt_ms(position99, 3)}** (target < 1 ms): {verdict(position99, TARGET_POSITION_P99_S, strict=True, unit=" ms", scale=1000, digits=3)}.
- The views are flat in the queue's length when the ratios stay near 1×: the stats endpoint counts levels with
  `ZCOUNT` (O(log n)); the board reads the first rows only — with 10 waiting there are only 10 to read, so its
  first-200 read grows up to 200 waiting and is flat after, and the first-10 read is the like-for-like ratio.
- Submit p99 over HTTP against the store's own step shows where a miss comes from: the step itself, or the
  HTTP request, FastAPI's validation, the identity and limit checks around it (on 2 shared cores, a p99 is the
  slowest 1 % of scheduling too).

Filling the line ran at {f['fill_rate']:.0f} submissions/s (`JobStore.submit`, 4 threads).
"""
    flat = max(large[name].p50 / small[name].p50 for name in FLAT)
    summary = [[f"f. submit p99, {n} waiting", "< 5 ms", fmt_ms(submit99, 2), "9.1 ms p50 (1,000 waiting)",
                verdict(submit99, TARGET_SUBMIT_P99_S, strict=True, unit=" ms", scale=1000, digits=2)],
               [f"f. position read p99, {n} waiting", "< 1 ms", fmt_ms(position99, 3), "0.30 ms p50 (ZRANK)",
                verdict(position99, TARGET_POSITION_P99_S, strict=True, unit=" ms", scale=1000, digits=3)],
               ["f. views (job, stats, board) vs 10 waiting, p50", "flat (≈1×)", f"≤ {flat:.2f}×", "≈1.0× (1,000 waiting)",
                "**met**" if flat < 1.5 else "**missed**"]]
    return Section("f. A long queue", body, summary)
