"""What both benchmark scripts share: a private, loopback-only queuechat stack, /proc readings and statistics.

:class:`Stack` starts a private Redis (the embedded ``redis-server``, in a temporary folder, on a free port), the
fake LLM from ``tests/fake_ollama.py`` in this process, and — on request — ``main.py --no-workers`` and the
``dramatiq`` CLI as subprocesses, with ``REDIS_URL``/``OLLAMA_HOST`` in their environment (and, for the workers,
:func:`tasks.broker.worker_environment`, as ``main.py`` starts them). Leaving the ``with`` block stops every one
of them, on success, error or Ctrl-C alike. :func:`time_bound` puts a hard limit on a whole run: an alarm raises
:class:`TimeUp` (so the normal clean-up runs), and a watchdog kills the children and exits if even the clean-up hangs.

Nothing here touches the user's Redis or port 8080: every port is a free one on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import httpx
import redis

from tasks import connection
from tasks.broker import worker_environment
from tasks.redis_server import RedisServer, free_port
from tasks.settings import settings
from tests.conftest import wait_for
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync"]

#: Settings every benchmark process shares: no start-rate limit and no per-client request limit, so that we
#: measure the queue and not the limits that protect it.
BASE_ENV = {"QUEUE_RATE_PER_MIN": "0", "API_RATE_PER_MIN": "0"}

_live_groups: set[int] = set()  # process groups still running, for the watchdog's last resort


# --- the time bound ---------------------------------------------------------------------------------------

class TimeUp(Exception):
    """The run exceeded its time bound."""


@contextlib.contextmanager
def time_bound(seconds: float, grace: float = 45.0) -> Iterator[None]:
    """Raise :class:`TimeUp` after ``seconds``; the first Ctrl-C or SIGTERM raises KeyboardInterrupt, later
    ones are ignored so that they cannot cut the clean-up short.

    The alarm lets the ordinary ``finally`` clean-up run. If that clean-up itself hangs (a child that ignores
    signals, a wedged browser), a watchdog thread kills every child process group ``grace`` seconds after
    the bound (or after an interruption) and exits with 124, so the bound holds whatever happens.
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
        print(f"\nbenchmarks: clean-up hung; killing {len(_live_groups)} process group(s)", file=sys.stderr)
        for group in list(_live_groups):
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
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


# --- child processes --------------------------------------------------------------------------------------

class Child:
    """One subprocess in its own session (so a terminal Ctrl-C reaches us, not it), logging to a file."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _live_groups.add(self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited; the end of its log:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """Ask politely (the child's own shutdown), then kill the whole process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(OSError):  # leftovers (forked workers) go with the group
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        _live_groups.discard(self.process.pid)


class App(Child):
    """``main.py --no-workers``: the UI and API (workers are started separately, so we know their pids)."""

    stop_signal = signal.SIGINT

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        super().__init__("app", [sys.executable, "main.py", "--no-workers"], {**env, "PORT": str(self.port)},
                         log_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> App:
        def answers() -> bool:
            self.check_alive()
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout, f"the app on {self.url}")
        return self


class Workers(Child):
    """The ``dramatiq`` CLI for one actor module, exactly as ``main.py``'s worker supervisor runs it."""

    READY = "Worker process is ready for action."

    def __init__(self, module: str, processes: int, threads: int, env: dict[str, str], log_dir: Path) -> None:
        self.processes = processes
        name = f"workers-{module.rsplit('.', 1)[-1]}-{time.monotonic_ns()}"
        super().__init__(name, [sys.executable, "-m", "dramatiq", module, "--processes", str(processes),
                                "--threads", str(threads)], env, log_dir)

    def wait_ready(self, timeout: float = 60.0) -> Workers:
        def ready() -> bool:
            self.check_alive()
            return self.log_text().count(self.READY) >= self.processes

        wait_for(ready, timeout, f"{self.processes} worker processes")
        return self


# --- the fake LLM, with a clock on the wire ---------------------------------------------------------------

class WireClock:
    """ASGI middleware around the fake LLM: the wall-clock time each chat response sent its first body chunk,
    and the time a chunk containing ``marker`` left. That is the LLM-side reference of the streaming lag."""

    def __init__(self, app, marker: bytes = b"ENDMARK") -> None:
        self.app, self.marker = app, marker
        self.first_chunk: list[float] = []
        self.marker_sent: list[float] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/api/chat":
            return await self.app(scope, receive, send)
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


def start_fake_llm() -> tuple[FakeOllama, WireClock]:
    fake = FakeOllama()
    clock = WireClock(fake.app)
    fake.app = clock  # FakeOllama serves ``self.app``; wrapping it before start() puts the clock on the wire
    return fake.start(), clock


# --- the stack --------------------------------------------------------------------------------------------

class Stack:
    """A private queuechat on loopback. ``with Stack("run", QUEUE_CONCURRENCY="16") as stack: ...``

    ``settings_env`` is given to every child and applied to this process too, so that code run here
    (``tasks.jobs.submit``, ``tasks.queue.position``) agrees with the app and the workers.
    """

    def __init__(self, name: str, **settings_env: str) -> None:
        self.name = name
        self.settings_env = {**BASE_ENV, **settings_env}
        self.tmp = Path(tempfile.mkdtemp(prefix=f"queuechat-{name}-"))
        self.children: list[Child] = []
        self.cleanup = contextlib.ExitStack()
        self.keep_logs = False  # set to keep the temporary folder (logs, Redis data) after a clean exit

    def __enter__(self) -> Self:
        try:
            self.redis_server = RedisServer(self.tmp / "redis").start()
            self.cleanup.callback(self.redis_server.stop)
            self.fake, self.clock = start_fake_llm()
            self.cleanup.callback(self.fake.stop)
            self._configure_here()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, kind, error, trace) -> None:
        """Stop everything, newest first (:func:`time_bound` keeps a second Ctrl-C from cutting this short)."""
        try:
            for child in reversed(self.children):
                child.stop()
        finally:
            self.cleanup.close()
        if kind is not None or self.keep_logs:
            print(f"benchmarks: logs and Redis data kept in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _configure_here(self) -> None:
        env = {"REDIS_URL": self.redis_server.url, "OLLAMA_HOST": self.fake.url, **self.settings_env}
        os.environ.update(env)
        for name, value in env.items():
            field = name.lower()
            current = getattr(settings, field)
            setattr(settings, field, value if current is None else type(current)(value))
        connection.reset_connections()

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of a child: ours (minus pytest's), this stack's Redis, LLM and settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        return {**env, "REDIS_URL": self.redis_server.url, "OLLAMA_HOST": self.fake.url,
                "DATA_DIR": str(self.tmp / "data"), "NICEGUI_STORAGE_PATH": str(self.tmp / "nicegui"),
                "PYTHONUNBUFFERED": "1", **self.settings_env, **extra}

    def start_app(self, **extra: str) -> App:
        app = App(self.child_env(**extra), self.tmp)
        self.children.append(app)
        return app.start().wait_ready()

    def start_workers(self, module: str = "tasks.actors", processes: int = 2, threads: int = 8,
                      **extra: str) -> Workers:
        """Workers with the environment ``main.py`` gives them (``worker_environment``); ours and ``extra`` win."""
        env = {**worker_environment(threads), **self.child_env(**extra)}
        workers = Workers(module, processes, threads, env, self.tmp)
        self.children.append(workers)
        return workers.start().wait_ready()

    @contextlib.contextmanager
    def workers(self, module: str = "tasks.actors", processes: int = 2, threads: int = 8,
                **extra: str) -> Iterator[Workers]:
        """Workers for one phase: ``with stack.workers(): ...`` stops them at the end of the block."""
        workers = self.start_workers(module, processes, threads, **extra)
        try:
            yield workers
        finally:
            workers.stop()
            self.children.remove(workers)

    def enter(self, context):
        """Tie another context manager (a browser, say) to this stack's clean-up."""
        return self.cleanup.enter_context(context)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url, decode_responses=True)

    def reset_data(self) -> None:
        """Empty Redis between phases, so one phase's jobs and totals don't colour the next."""
        self.redis().flushall()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless system Chromium through Playwright (sync API)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else None,
                                             args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            with contextlib.suppress(Exception):
                browser.close()


# --- Server-Sent Events ----------------------------------------------------------------------------------

@dataclass
class Event:
    event: str
    data: str
    id: str | None


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """Parse a text/event-stream response as it arrives (comments and pings skipped)."""
    kind, data, event_id = "message", [], None
    for line in response.iter_lines():
        if not line:
            if data:
                yield Event(kind, "\n".join(data), event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


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


# --- /proc -----------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the dramatiq CLI's worker processes, say)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += parents.get(current, [])
    return tree


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages divided among their users, so a sum over processes is honest."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def descendants_pss(name_part: str) -> int:
    """Summed PSS of our descendant processes whose name contains ``name_part`` (Chromium's, say)."""
    total = 0
    for pid in process_tree(os.getpid()):
        with contextlib.suppress(OSError):
            if name_part in Path(f"/proc/{pid}/comm").read_text():
                total += pss_bytes(pid)
    return total


def tree_rss(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += rss_bytes(member)
    return total


def cpu_percent(pid: int, seconds: float) -> float:
    """CPU used by ``pid`` over the next ``seconds``, in % of one core."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def established_connections(port: int) -> int:
    """TCP connections accepted on ``port`` and still open (websockets and keep-alive HTTP alike)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "01":
                    count += 1
    return count


class PeakMemory:
    """Samples the resident memory of a few process trees once a second in the background; keeps the peak."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.peak = {name: 0 for name in pids}
        self.last = dict(self.peak)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def __enter__(self) -> Self:
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sample()

    def _run(self) -> None:
        while not self.stopping.wait(1.0):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                self.last[name] = tree_rss(pid)
                self.peak[name] = max(self.peak[name], self.last[name])


# --- statistics and formatting ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p95: float
    mean: float


def summarize(values: list[float]) -> Summary:
    """Median and nearest-rank 95th percentile (no interpolation: a p95 is a value that was observed)."""
    if not values:
        return Summary(0, math.nan, math.nan, math.nan)
    ordered = sorted(values)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return Summary(len(values), statistics.median(ordered), p95, statistics.fmean(ordered))


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
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) * 1024
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
