"""What both benchmark scripts share: devtools' private stack with a clock on the LLM's wire, a time bound,
statistics and the report's formatting.

:class:`Stack` is :class:`devtools.stack.Stack` (a private Redis in a temporary folder on a free port, the fake LLM
in this process, and on request ``main.py`` and the ``dramatiq`` CLI as subprocesses with the environment
``main.py`` gives them), with :class:`WireClock` around the fake LLM and the benchmarks' settings. Leaving the
``with`` block stops every one of them, on success, error or Ctrl-C alike; and every child dies with this process
however it ends (``tasks.supervisor.spawn``). :func:`time_bound` puts a hard limit on a whole run.

Nothing here touches the user's Redis or port 8080: every port is a free one on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from devtools import stack
from devtools.fake_llm import FakeLLM

#: Settings every benchmark process shares: no start-rate limit and no per-client request limit, so that we
#: measure the queue and not the limits that protect it.
BASE_ENV = {"QUEUE_RATE_PER_MIN": "0", "API_RATE_PER_MIN": "0"}


# --- the time bound ---------------------------------------------------------------------------------------

class TimeUp(Exception):
    """The run exceeded its time bound."""


@contextlib.contextmanager
def time_bound(seconds: float, grace: float = 45.0) -> Iterator[None]:
    """Raise :class:`TimeUp` after ``seconds``; the first Ctrl-C or SIGTERM raises KeyboardInterrupt, later
    ones are ignored so that they cannot cut the clean-up short.

    The alarm lets the ordinary ``finally`` clean-up run. If that clean-up itself hangs (a child that ignores
    signals, a wedged browser), a watchdog thread ends this process ``grace`` seconds after the bound (or after
    an interruption) with 124, and the kernel takes every child with it, so the bound holds whatever happens.
    """
    finished, interrupted = threading.Event(), threading.Event()

    def on_alarm(signum, frame):
        interrupted.set()
        raise TimeUp(f"the run took longer than its bound of {seconds:.0f} s")

    def on_interrupt(signum, frame):
        if interrupted.is_set():
            print("benchmarks: stopping, please wait for the clean-up", file=sys.stderr)
            return
        interrupted.set()
        raise KeyboardInterrupt

    def watchdog() -> None:
        deadline = time.monotonic() + seconds
        while not finished.wait(0.5):
            if interrupted.is_set() or time.monotonic() > deadline:
                break
        if finished.wait(grace):
            return
        print("\nbenchmarks: clean-up hung; exiting (every child process dies with this one)", file=sys.stderr)
        os._exit(124)

    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGALRM, on_alarm), (signal.SIGINT, on_interrupt), (signal.SIGTERM, on_interrupt))}
    signal.setitimer(signal.ITIMER_REAL, seconds)
    threading.Thread(target=watchdog, name="benchmark-watchdog", daemon=True).start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        finished.set()


def exit_code(main: Callable[[], int | None]) -> int:
    """Run a script's body: Ctrl-C and the time bound end it with a message and an exit status, not a traceback
    (the clean-up has run by then: every process the script started is gone)."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        print("\nbenchmarks: interrupted; every process started by this run has been stopped", file=sys.stderr)
        return 130
    except TimeUp as error:
        print(f"\nbenchmarks: stopped, {error}; every process started by this run has been stopped", file=sys.stderr)
        return 124


# --- the stack --------------------------------------------------------------------------------------------

class WireClock:
    """ASGI middleware around the fake LLM: the wall-clock time each chat request arrived, each chat response
    sent its first body chunk, and a chunk containing ``marker`` left: the LLM's side of the hops the benchmarks
    break time down into."""

    def __init__(self, app, marker: bytes = b"ENDMARK") -> None:
        self.app, self.marker = app, marker
        self.received: list[float] = []
        self.first_chunk: list[float] = []
        self.marker_sent: list[float] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/api/chat":
            return await self.app(scope, receive, send)
        self.received.append(time.time())
        first = True

        async def timed_send(message) -> None:
            nonlocal first
            await send(message)
            body = message.get("body", b"") if message["type"] == "http.response.body" else b""
            if body and first:
                first = False
                self.first_chunk.append(time.time())
            if self.marker in body:
                self.marker_sent.append(time.time())

        await self.app(scope, receive, timed_send)


class Stack(stack.Stack):
    """A private queuechat on loopback, ``with Stack("run", QUEUE_CONCURRENCY="16") as stack: ...``, whose fake
    LLM (serving ``self.app``: wrapped before it starts) has a :class:`WireClock` in front."""

    def __init__(self, name: str, **settings_env: str) -> None:
        fake = FakeLLM()
        self.clock = fake.app = WireClock(fake.app)
        super().__init__(name, fake, **{**BASE_ENV, **settings_env})


class BareWorkers(stack.Workers):
    """``dramatiq benchmarks.noop_actor``: no queuechat janitor, so no heartbeat; ready when Dramatiq says so."""

    READY = "Worker process is ready for action."

    def __init__(self, env: dict[str, str], log_dir: Path, processes: int, threads: int) -> None:
        super().__init__(env, log_dir, processes, threads, module="benchmarks.noop_actor")

    def wait_ready(self, timeout: float = 30) -> None:
        self._wait(lambda: self.output().count(self.READY) >= self.processes, timeout,
                   f"{self.processes} worker processes to be ready")


# --- logs ------------------------------------------------------------------------------------------------

_LOG_START = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d")  # app: "2026-… INFO …", dramatiq: "[2026-…] […]"


def log_problems(text: str) -> list[str]:
    """ERROR records and tracebacks of a log, each with the lines that belong to it (up to the next record)."""
    problems: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        starts_record = bool(_LOG_START.match(line))
        if " ERROR " in line or "[ERROR]" in line or (line.startswith("Traceback") and current is None):
            current = [line]
            problems.append(current)
        elif current is not None and not starts_record:
            current.append(line)
        else:
            current = None
    return ["\n".join(block) for block in problems]


# --- statistics and formatting ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p95: float
    mean: float
    p99: float = math.nan


def nearest_rank(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of sorted values (no interpolation: a value that was observed)."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summarize(values: list[float]) -> Summary:
    """Median, nearest-rank 95th and 99th percentiles, and the mean."""
    if not values:
        return Summary(0, math.nan, math.nan, math.nan)
    ordered = sorted(values)
    return Summary(len(values), statistics.median(ordered), nearest_rank(ordered, 0.95),
                   statistics.fmean(ordered), nearest_rank(ordered, 0.99))


def ratio(value: float, baseline: float) -> str:
    if not baseline or math.isnan(value) or math.isnan(baseline):
        return "—"
    share = value / baseline
    return f"{share:.2g}×" if share < 1 else f"{share:.2f}×" if share < 100 else f"{share:.0f}×"


def fmt_ms(seconds: float, digits: int = 1) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.{digits}f} ms"


def fmt_mb(size: float) -> str:
    return f"{size / 2**20:.0f} MB"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):  # the CPU's name is in no portable API
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = psutil.virtual_memory().total
    return {"cores": str(os.cpu_count()), "cpu": model, "memory": f"{memory / 2**30:.1f} GiB",
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    """The command as the user would type it (``uv run python -m benchmarks.run --quick``)."""
    module = Path(sys.argv[0]).stem
    return " ".join(["uv run python -m", f"benchmarks.{module}", *sys.argv[1:]])
