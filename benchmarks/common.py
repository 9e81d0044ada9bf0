"""What the benchmark sections share beyond :mod:`benchmarks.harness`: how big a run is, what a section hands
back to the report, and callers of the API with identities of their own.

Each section module (``ttft``, ``pipeline``, ``fanout``, ``sse_scale``, ``machine_cost``, ``long_queue``) has a
``measure(...)`` that returns plain figures and a ``section(figures, sizes)`` that turns them into a
:class:`Section`; :mod:`benchmarks.run` composes them. Keeping measuring and writing apart lets the pure half be
checked without a stack (``tests/benchmarks``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import httpx

from tasks import identities, keys
from tasks.store import sync_store


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run measures (``QUICK`` must finish in < 3 min, ``FULL`` in ~5–7)."""

    bound_s: float
    ttft_warmup: int
    ttft_reps: int
    idle_pause_s: float       # idleness before each TTFT request: the system is at rest, as between users
    pipeline_jobs: int
    noop_messages: int
    throughput_reps: int
    fanout_pages: int
    fanout_answers: int
    fanout_window_s: float
    chromium_pages: int
    sse_clients: int
    sse_jobs: int
    sse_tokens: int
    idle_windows: int         # idle CPU: the median of this many windows, each idle_window_s long
    idle_window_s: float
    page_tokens: int
    scale_waiting: int
    scale_reps: int


FULL = Sizes(bound_s=17 * 60, ttft_warmup=3, ttft_reps=40, idle_pause_s=1.0, pipeline_jobs=1000,
             noop_messages=3000, throughput_reps=3, fanout_pages=200, fanout_answers=20, fanout_window_s=10.0,
             chromium_pages=5, sse_clients=1000, sse_jobs=50, sse_tokens=100, idle_windows=5, idle_window_s=8.0, page_tokens=2000,
             scale_waiting=10_000, scale_reps=300)
QUICK = Sizes(bound_s=175, ttft_warmup=1, ttft_reps=4, idle_pause_s=1.0, pipeline_jobs=200, noop_messages=500,
              throughput_reps=1, fanout_pages=20, fanout_answers=4, fanout_window_s=2.0, chromium_pages=2,
              sse_clients=100, sse_jobs=5, sse_tokens=50, idle_windows=3, idle_window_s=2.0, page_tokens=200, scale_waiting=1_000,
              scale_reps=30)


@dataclass
class Section:
    """One part of the report: its title, its Markdown body, and its rows of the summary table
    (target, figure, baseline, verdict)."""

    title: str
    body: str
    summary: list[list[str]] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def verdict(value: float, target: float, *, at_most: bool = True, strict: bool = False, unit: str = "",
            scale: float = 1.0, digits: int = 1) -> str:
    """'**met**' or '**missed** by …' for a figure against its target (``at_most``: lower is better; ``strict``:
    the target is "< x", so x itself misses it)."""
    if math.isnan(value):
        return "**not measured**"
    if at_most:
        met = value < target if strict else value <= target
    else:
        met = value > target if strict else value >= target
    if met:
        return "**met**"
    gap = (value - target) if at_most else (target - value)
    return f"**missed** by {gap * scale:.{digits}f}{unit} ({value / target:.2f}× the target)" if target else \
        f"**missed** by {gap * scale:.{digits}f}{unit}"


def api_keys(count: int, prefix: str = "bench") -> list[str]:
    """``count`` new API keys (each its own identity, with its own stream and waiting limits), in the stack's
    Redis; a flush of Redis forgets them."""
    return [identities.create_key(f"{prefix}-{index}", max_priority="high")[0] for index in range(count)]


def api_client(base_url: str, key: str | None = None, **options) -> httpx.Client:
    """An HTTP client of the app as one caller: an API key's, or anonymous from loopback (None)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=options.pop("timeout", 30), **options)


def wait_ended(job_ids: list[str], timeout: float, stall_s: float = 10.0) -> list[str]:
    """Wait until every job has ended, or none has ended nor written to its stream for ``stall_s`` seconds (or
    ``timeout`` passed); return those still not ended. A job that stays running after its last token (an engine
    hang seen in these runs) must not take the whole run with it: the caller reports it."""
    store = sync_store()
    left, deadline, last_progress, written = list(job_ids), time.monotonic() + timeout, time.monotonic(), -1
    while left and time.monotonic() < deadline and time.monotonic() - last_progress < stall_s:
        time.sleep(0.2)
        still = [job_id for job_id in left if not store.job(job_id).finished]
        pipe = store.client.pipeline(transaction=False)
        for job_id in still:
            pipe.xlen(keys.stream(job_id))
        now_written = sum(pipe.execute())
        if len(still) < len(left) or now_written != written:
            last_progress, written = time.monotonic(), now_written
        left = still
    return left
