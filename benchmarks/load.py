"""The load test: many jobs of three priorities through the HTTP API, random cancellations, live watchers — and
then proof that the queue kept its promises.

    uv run python -m benchmarks.load              # 1000 jobs (about 2 minutes), writes docs/load.md
    uv run python -m benchmarks.load --jobs 200   # a smaller run

Set-up (all private, on loopback): the fake LLM answering 20 tokens 10 ms apart, ``main.py --no-workers``, and
``dramatiq tasks.actors`` with 2 processes × 8 threads (environment as ``main.py`` gives it);
``QUEUE_CONCURRENCY=3``, ``QUEUE_RATE_PER_MIN=0``.
Jobs are submitted in a burst from 8 threads; about 10 % are cancelled (``DELETE /api/jobs/{id}``) at a random
moment within 20 s of their submission; 20 SSE clients follow jobs live.

Checks (the exit status is non-zero when one fails):

* every job has exactly one ``done`` entry in its Stream ``qc:stream:{id}`` and a final status;
* ``/api/queue/stats`` adds up: completed + failed + cancelled == submitted == what we sent; nothing queued,
  retrying or running at the end;
* order: whenever a job was admitted (``started_at``), no job of a higher priority — and no earlier job of the
  same priority — was still waiting (``created_at`` before, admission or cancellation after; a tie within the
  same millisecond is not counted);
* no job failed (the fake LLM never fails) and no job was cancelled that we did not cancel;
* each SSE client saw exactly one ``done``, ids that only increase, and the same answer as the job record;
* no ``ERROR`` or ``Traceback`` line in the app's or the workers' logs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import heapq
import queue as queues
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.harness import (
    Stack,
    command_line,
    exit_code,
    fmt_mb,
    load_average,
    log_problems,
    machine,
    now_utc,
    summarize,
    table,
    time_bound,
)
from devtools import sse
from devtools.figures import PeakMemory
from devtools.processes import ROOT
from tasks import keys, queue
from tasks.broker import worker_environment

REPORT = ROOT / "docs" / "load.md"
PRIORITIES = tuple(queue.PRIORITY_LEVELS)
TOKENS, TOKEN_DELAY_S = 20, 0.01
EXPECTED_ANSWER = "".join(f"t{i}" if i == 0 else f" t{i}" for i in range(TOKENS))
CANCEL_SHARE, CANCEL_WITHIN_S = 0.10, 20.0
SUBMITTERS, WATCHERS = 8, 20
SETTINGS = {"QUEUE_CONCURRENCY": "3", "QUEUE_RATE_PER_MIN": "0"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Sent:
    """What the client did with one job."""

    job_id: str
    priority: str
    cancel: str | None = None  # the API's answer to DELETE: cancelled | cancelling | 409 | error


@dataclass
class Watched:
    """What one SSE client saw of one job."""

    job_id: str
    connected_ms: int = 0  # wall clock, comparable with the job's Redis times (same machine)
    done_events: int = 0
    ids_increasing: bool = True
    answer: str = ""
    final: dict = field(default_factory=dict)
    error: str = ""


# --- driving the load -------------------------------------------------------------------------------------

class Canceller(threading.Thread):
    """Sends each scheduled DELETE at its moment; one thread and a heap rather than a timer per job."""

    def __init__(self, app_url: str) -> None:
        super().__init__(name="canceller", daemon=True)
        self.http = httpx.Client(base_url=app_url, timeout=30)
        self.due: list[tuple[float, int, Sent]] = []
        self.lock = threading.Condition()
        self.closed = False

    def schedule(self, sent: Sent, delay: float) -> None:
        with self.lock:
            heapq.heappush(self.due, (time.monotonic() + delay, id(sent), sent))
            self.lock.notify()

    def close(self) -> None:
        """No more jobs will be scheduled; the thread ends once the heap is empty."""
        with self.lock:
            self.closed = True
            self.lock.notify()

    def run(self) -> None:
        while True:
            with self.lock:
                while not self.due or self.due[0][0] > time.monotonic():
                    if self.closed and not self.due:
                        return
                    self.lock.wait(None if not self.due else max(0.0, self.due[0][0] - time.monotonic()))
                _, _, sent = heapq.heappop(self.due)
            self.cancel(sent)

    def cancel(self, sent: Sent) -> None:
        try:
            response = self.http.delete(f"/api/jobs/{sent.job_id}")
            sent.cancel = response.json()["cancel"] if response.status_code == 200 else str(response.status_code)
        except httpx.HTTPError as error:
            sent.cancel = f"error: {error}"


class Watcher(threading.Thread):
    """An SSE client: follows one job after another from a shared queue until told to stop."""

    def __init__(self, app_url: str, todo: queues.Queue, stopping: threading.Event, seen: list[Watched]) -> None:
        super().__init__(name="sse-watcher", daemon=True)
        self.app_url, self.todo, self.stopping, self.seen = app_url, todo, stopping, seen

    def run(self) -> None:
        with httpx.Client(base_url=self.app_url, timeout=httpx.Timeout(10, read=60)) as http:
            while not self.stopping.is_set():
                try:
                    job_id = self.todo.get(timeout=0.2)
                except queues.Empty:
                    continue
                self.seen.append(self.follow(http, job_id))

    def follow(self, http: httpx.Client, job_id: str) -> Watched:
        watched, last_id, tokens = Watched(job_id, connected_ms=int(time.time() * 1000)), "", []
        try:
            for event in sse.events(http, f"/stream/status/{job_id}", timeout=http.timeout):
                if event.id is not None and last_id and entry_key(event.id) < entry_key(last_id):
                    watched.ids_increasing = False
                last_id = event.id or last_id
                if event.event == "reset":
                    tokens = []
                elif event.event == "token":
                    tokens.append(event.data["text"])
                elif event.event == "done":
                    watched.done_events += 1
                    watched.final = event.data
        except httpx.HTTPError as error:
            watched.error = repr(error)
        watched.answer = "".join(tokens)
        return watched


def entry_key(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def submit_all(app_url: str, count: int, rng: random.Random, canceller: Canceller, todo: queues.Queue) -> list[Sent]:
    """POST ``count`` jobs from a few threads at once; schedule the cancellations; hand jobs to the watchers."""
    plan = [(index, rng.choice(PRIORITIES), rng.random() < CANCEL_SHARE, rng.uniform(0, CANCEL_WITHIN_S))
            for index in range(count)]
    local = threading.local()

    def post(item) -> Sent:
        index, priority, cancel, delay = item
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=app_url, timeout=30)
        message = f"[[tokens={TOKENS}]] [[delay={TOKEN_DELAY_S}]] load job {index}"
        response = local.http.post("/api/chat", json={"message": message, "priority": priority})
        response.raise_for_status()
        sent = Sent(response.json()["job_id"], priority)
        if cancel:
            canceller.schedule(sent, delay)
        todo.put(sent.job_id)
        return sent

    with concurrent.futures.ThreadPoolExecutor(SUBMITTERS) as pool:
        return list(pool.map(post, plan))


def drained(http: httpx.Client, client, sent: list[Sent]) -> dict | None:
    """The final stats once nothing waits or runs and every job we sent is in a final status.

    Deliberately not "once the totals add up": whether they do is one of the checks, and a run must end either way.
    """
    stats = http.get("/api/queue/stats").json()
    if any(stats["queued"].values()) or stats["running"] or stats["retrying"]:
        return None
    pipe = client.pipeline(transaction=False)
    for item in sent:
        pipe.hget(keys.job(item.job_id), "status")
    return stats if all(status in queue.TERMINAL for status in pipe.execute()) else None


def drain(http: httpx.Client, client, sent: list[Sent], bound_s: float, stall_s: float = 30.0) -> dict:
    """The final stats once drained — or, when no job has ended for ``stall_s`` (jobs left running after their
    last token: an engine hang), the stats as they are then; the checks then say what never ended."""
    deadline, progress_at, ended = time.monotonic() + bound_s, time.monotonic(), -1
    while time.monotonic() < deadline:
        stats = drained(http, client, sent)
        if stats:
            return stats
        stats = http.get("/api/queue/stats").json()
        now = stats["completed"] + stats["failed"] + stats["cancelled"]
        if now != ended:
            ended, progress_at = now, time.monotonic()
        elif time.monotonic() - progress_at > stall_s:
            log(f"no job ended for {stall_s:g} s: {stats['running']} left running; checking what there is")
            return stats
        time.sleep(0.25)
    raise AssertionError(f"the queue did not drain within {bound_s:g} s")


def drive(stack: Stack, app_url: str, count: int, seed: int, bound_s: float) -> dict:
    """Run the load; returns what the client side saw and the final stats."""
    rng = random.Random(seed)
    canceller, todo, stopping, seen = Canceller(app_url), queues.Queue(), threading.Event(), []
    watchers = [Watcher(app_url, todo, stopping, seen) for _ in range(WATCHERS)]
    for thread in [canceller, *watchers]:
        thread.start()
    started = time.monotonic()
    sent = submit_all(app_url, count, rng, canceller, todo)
    submitted_in = time.monotonic() - started
    log(f"{count} jobs submitted in {submitted_in:.1f} s; waiting for the queue to drain")
    canceller.close()
    client = stack.redis()
    with httpx.Client(base_url=app_url, timeout=30) as http:
        stats = drain(http, client, sent, bound_s)
    wall = time.monotonic() - started
    canceller.join(30)
    stopping.set()
    for watcher in watchers:
        watcher.join(70)
    return {"sent": sent, "seen": seen, "stats": stats, "wall_s": wall, "submit_s": submitted_in}


# --- checking ---------------------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def read_jobs(stack: Stack, sent: list[Sent]) -> dict[str, dict]:
    """Each job's hash plus the count of ``done`` entries in its Stream."""
    client = stack.redis()
    pipe = client.pipeline(transaction=False)
    for item in sent:
        pipe.hgetall(keys.job(item.job_id))
        pipe.xrange(keys.stream(item.job_id))
    replies = pipe.execute()
    records = {}
    for item, raw, entries in zip(sent, replies[0::2], replies[1::2]):
        raw["done_entries"] = sum(1 for _, entry in entries if entry.get("k") == "done")
        records[item.job_id] = raw
    return records


def order_violations(records: dict[str, dict]) -> tuple[list[str], list[str]]:
    """Admissions that overtook a better job still waiting: (across priorities, within one priority).

    A job H is *better* than L when its score is lower (a higher priority, or the same one and submitted
    earlier). H was waiting when L was admitted if it was created before that millisecond and left the waiting
    set (admitted, or cancelled while waiting) after it.
    """
    jobs = []
    for job_id, raw in records.items():
        left = raw.get("started_at") or raw.get("finished_at")
        jobs.append((int(raw["score"]), int(raw["created_at"]), int(left) if left else None,
                     int(raw["started_at"]) if raw.get("started_at") else None, job_id))
    jobs.sort()
    across, within = [], []
    for index, (score, _, _, started, job_id) in enumerate(jobs):
        if started is None:
            continue
        for better_score, created, left, _, better_id in jobs[:index]:
            if created < started and (left is None or left > started):
                same_level = better_score // queue.LEVEL_SPAN == score // queue.LEVEL_SPAN
                (within if same_level else across).append(f"{job_id} admitted while {better_id} waited")
    return across, within


def run_checks(result: dict, records: dict[str, dict], logs: dict[str, str]) -> list[Check]:
    sent, stats, count = result["sent"], result["stats"], len(result["sent"])
    checks = []

    bad_done = [job_id for job_id, raw in records.items() if raw["done_entries"] != 1]
    not_final = [job_id for job_id, raw in records.items() if raw.get("status") not in queue.TERMINAL]
    checks.append(Check("exactly one `done` per job Stream", not bad_done,
                        f"{count - len(bad_done)} of {count} jobs" + (f"; e.g. {bad_done[:3]}" if bad_done else "")))
    checks.append(Check("every job in a final status", not not_final,
                        f"{count - len(not_final)} of {count}" + (f"; e.g. {not_final[:3]}" if not_final else "")))

    ended = stats["completed"] + stats["failed"] + stats["cancelled"]
    waiting = sum(stats["queued"].values()) + stats["retrying"] + stats["running"]
    checks.append(Check("`/api/queue/stats` adds up", ended == stats["submitted"] == count and waiting == 0,
                        f"completed {stats['completed']} + failed {stats['failed']} + cancelled "
                        f"{stats['cancelled']} = {ended}; submitted {stats['submitted']}; sent {count}; "
                        f"queued/retrying/running {waiting}"))

    by_status = {status: sum(1 for raw in records.values() if raw.get("status") == status) for status in queue.TERMINAL}
    checks.append(Check("stats agree with the job records",
                        all(stats[status] == by_status[status] for status in queue.TERMINAL),
                        ", ".join(f"{status} {by_status[status]}" for status in queue.TERMINAL)))

    across, within = order_violations(records)
    admitted = sum(1 for raw in records.values() if raw.get("started_at"))
    checks.append(Check("priority order held at every admission", not across,
                        f"{admitted} admissions, {len(across)} overtook a higher priority"
                        + (f"; e.g. {across[:2]}" if across else "")))
    checks.append(Check("FIFO within each priority", not within,
                        f"{len(within)} overtook an earlier job of the same priority"
                        + (f"; e.g. {within[:2]}" if within else "")))

    asked = {item.job_id for item in sent if item.cancel}
    unexpected = [job_id for job_id, raw in records.items()
                  if raw.get("status") == "failed" or (raw.get("status") == "cancelled" and job_id not in asked)]
    checks.append(Check("no failures, no cancellation we did not ask for", not unexpected,
                        f"{len(unexpected)} unexpected" + (f"; e.g. {unexpected[:3]}" if unexpected else "")))
    wrong = [job_id for job_id, raw in records.items()
             if raw.get("status") == "completed" and raw.get("answer") != EXPECTED_ANSWER]
    checks.append(Check("every completed answer is the LLM's whole answer", not wrong,
                        f"{len(wrong)} differ" + (f"; e.g. {wrong[:3]}" if wrong else "")))

    checks.append(sse_check(result["seen"], records))
    for name, text in logs.items():
        problems = log_problems(text)
        first = problems[0].splitlines()[0][:160] if problems else ""
        checks.append(Check(f"no ERROR/Traceback in the {name} log", not problems,
                            f"{len(problems)} problem(s)" + (f", the first: `{first}`" if problems else "")))
    return checks


def shorten(text: str, limit: int = 30) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def sse_check(seen: list[Watched], records: dict[str, dict]) -> Check:
    bad, live = [], 0
    for watched in seen:
        raw = records[watched.job_id]
        live += watched.connected_ms < int(raw.get("finished_at") or 0)
        if watched.error or watched.done_events != 1 or not watched.ids_increasing \
                or watched.final.get("status") != raw.get("status") or watched.answer != raw.get("answer", ""):
            bad.append(f"{watched.job_id[:8]}…: {watched.error} done×{watched.done_events}, status "
                       f"{watched.final.get('status')} (record {raw.get('status')}), streamed "
                       f"{shorten(watched.answer)} vs recorded {shorten(raw.get('answer', ''))}")
    return Check(f"{WATCHERS} SSE clients saw one `done`, increasing ids, the recorded answer", not bad,
                 f"{len(seen) - len(bad)} of {len(seen)} jobs followed agree ({live} followed live, "
                 f"{len(seen) - live} replayed after their end)" + (f"; e.g. {bad[:2]}" if bad else ""))


# --- the report -------------------------------------------------------------------------------------------

def waits_by_priority(records: dict[str, dict]) -> list[list[object]]:
    rows = []
    for priority in PRIORITIES:
        waits = [(int(raw["started_at"]) - int(raw["created_at"])) / 1000 for raw in records.values()
                 if raw.get("priority") == priority and raw.get("started_at")]
        summary = summarize(waits)
        jobs = sum(1 for raw in records.values() if raw.get("priority") == priority)
        rows.append([priority, jobs, summary.n, f"{summary.p50:.2f} s", f"{summary.p95:.2f} s",
                     f"{max(waits, default=float('nan')):.2f} s"])
    return rows


def figure_rows(result: dict, records: dict[str, dict], memory: PeakMemory) -> list[list[str]]:
    count, wall, submit = len(result["sent"]), result["wall_s"], result["submit_s"]
    status = {name: sum(1 for raw in records.values() if raw.get("status") == name) for name in queue.TERMINAL}
    answers: dict[str, int] = {}
    for item in result["sent"]:
        if item.cancel:
            answers[item.cancel] = answers.get(item.cancel, 0) + 1
    ceiling = 3 / (TOKENS * TOKEN_DELAY_S)
    return [
        ["wall time (first submission → queue drained)", f"{wall:.1f} s"],
        ["submission (all jobs accepted)", f"{submit:.1f} s ({count / submit:.0f} jobs/s)"],
        ["throughput, jobs ended", f"{count / wall:.2f} jobs/s"],
        ["throughput, answers completed", (f"{status['completed'] / wall:.2f} jobs/s (3 slots × {TOKENS} tokens "
                                           f"× {TOKEN_DELAY_S * 1000:g} ms allow at most {ceiling:.0f}/s)")],
        ["outcomes (job records)", ", ".join(f"{name} {n}" for name, n in status.items())],
        ["answers to DELETE", ", ".join(f"{name}: {n}" for name, n in sorted(answers.items())) or "—"],
        ["app RSS (`main.py`), peak / end", f"{fmt_mb(memory.peak['app'])} / {fmt_mb(memory.last['app'])}"],
        ["workers RSS (CLI + 2 processes), peak / end",
         f"{fmt_mb(memory.peak['workers'])} / {fmt_mb(memory.last['workers'])}"],
    ]


def render(result: dict, records: dict[str, dict], checks: list[Check], memory: PeakMemory,
           load_before: str, load_after: str) -> str:
    count = len(result["sent"])
    info = machine()
    verdict = "**all checks passed**" if all(c.ok for c in checks) else "**some checks FAILED**"
    return f"""# Load test

`{command_line()}` on {now_utc()}: {verdict}.

**Machine**: {info['cores']} cores (`os.cpu_count()`), {info['cpu']}, {info['memory']} RAM, {info['os']},
Python {info['python']}. **Load average** (1/5/15 min): {load_before} before, {load_after} after.

**Set-up** (private, loopback, started by the script): `redis-server` on a free port in a temporary folder; the
fake LLM (`devtools/fake_llm`) answering {TOKENS} tokens {TOKEN_DELAY_S * 1000:g} ms apart; `main.py --no-workers`;
`dramatiq tasks.actors --processes 2 --threads 8` with `main.py`'s worker environment
(`{' '.join(f'{k}={v}' for k, v in worker_environment(8).items())}`); `QUEUE_CONCURRENCY=3`, `QUEUE_RATE_PER_MIN=0`,
`API_RATE_PER_MIN=0`, `QUEUE_MAX_WAITING_PER_USER` above the job count (every job is one anonymous caller's). {count} jobs, priorities drawn uniformly from high/normal/low, were sent with
`POST /api/chat` from {SUBMITTERS} threads at once; {sum(1 for s in result['sent'] if s.cancel)} were cancelled with
`DELETE /api/jobs/{{id}}` at a random moment within {CANCEL_WITHIN_S:g} s of their submission; {WATCHERS} SSE
clients (`/stream/status/{{id}}`) took the jobs in submission order, each following one job to its end before
taking the next, until the queue drained (a job that had already ended is replayed from its Stream).

## Checks

{table(["check", "result", "detail"], [[c.name, "pass" if c.ok else "**FAIL**", c.detail] for c in checks])}

## Figures

{table(["", "value"], figure_rows(result, records, memory))}

Wait = `started_at` − `created_at` (admission), per priority, jobs that were admitted:

{table(["priority", "jobs", "admitted", "p50 wait", "p95 wait", "max wait"], waits_by_priority(records))}

The submission is a burst, so the queue is deep at once and high-priority jobs overtake everything that waits;
low-priority jobs wait for almost the whole run. Memory is the resident set size (psutil), sampled every second.
"""


# --- main -------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="queuechat load test with invariant checks")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs to submit (default 1000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for priorities and cancellations")
    parser.add_argument("--bound", type=float, default=600, help="hard time bound of the whole run, in seconds")
    parser.add_argument("--output", type=Path, default=REPORT, help=f"where to write the report ({REPORT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    with time_bound(args.bound), Stack("load", **SETTINGS, QUEUE_MAX_WAITING=str(args.jobs + 100),
                                       QUEUE_MAX_WAITING_PER_USER=str(args.jobs + 100)) as stack:
        app = stack.start_app("--no-workers")
        with stack.workers(processes=2, threads=8) as workers:
            log(f"app on {app.url}, 2 worker processes × 8 threads; {args.jobs} jobs")
            with PeakMemory(app=app.pid, workers=workers.pid) as memory:
                result = drive(stack, app.url, args.jobs, args.seed, bound_s=args.bound)
            logs = {"app": app.output(), "workers": workers.output()}
        records = read_jobs(stack, result["sent"])
        checks = run_checks(result, records, logs)
        stack.keep_logs = not all(check.ok for check in checks)  # the logs and Redis data, to look into
    report = render(result, records, checks, memory, load_before, load_average())
    args.output.write_text(report)
    print(report)
    log(f"wrote {args.output}")
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(exit_code(main))
