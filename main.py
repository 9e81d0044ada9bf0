"""Start queuechat: the embedded Redis (unless REDIS_URL is set), the Dramatiq workers, and the UI + API.

    uv run main.py                 # everything, on http://127.0.0.1:8080
    uv run main.py --no-workers    # UI + API only; workers run elsewhere: `dramatiq tasks.actors`
    uv run main.py demo [--offline]   # the scripted demo in Chromium (demo/), screenshots in docs/demo/

Ctrl-C stops every child process. Workers that die are restarted (the `dramatiq` CLI exits when one of
its processes dies, so the supervisor restarts the whole CLI).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tasks.broker import worker_environment
from tasks.settings import settings

log = logging.getLogger("queuechat")
ROOT = Path(__file__).resolve().parent


class WorkerSupervisor:
    """Runs `dramatiq tasks.actors` and starts it again whenever it exits, until stopped."""

    def __init__(self, processes: int, threads: int) -> None:
        self.command = [sys.executable, "-m", "dramatiq", "tasks.actors", "--processes", str(processes),
                        "--threads", str(threads)]
        self.env = {**worker_environment(threads), **os.environ}
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self.thread.start()
        return self

    def _run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, start_new_session=True)
            code = self.process.wait()
            if self.stopping.is_set():
                return
            # A worker that ran a while and died is restarted at once; one that dies at start backs off.
            delay = 0.5 if time.monotonic() - started > 5 else min(delay * 2, 30.0)
            log.warning("workers exited with %s; restarting in %.0f s", code, delay)
            self.stopping.wait(delay)

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()  # the dramatiq master forwards it to its children (a second signal kills them)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_redis():
    """The embedded Redis, when REDIS_URL is unset; its URL goes to every child through the environment."""
    from tasks.redis_server import RedisServer, RedisServerError

    try:
        server = RedisServer(settings.data_dir / "redis").start()
    except RedisServerError as error:
        sys.exit(f"queuechat: {error}")
    settings.redis_url = os.environ["REDIS_URL"] = server.url
    log.info("embedded Redis on %s (data in %s)", server.url, server.data_dir)
    return server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="queuechat: a queue-fronted AI chat",
                                     epilog="uv run main.py demo [--offline]: the scripted demo (demo/tour.py)")
    parser.add_argument("--no-workers", action="store_true", help="run the UI and API only")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the health poll would log every 2 s
    redis_server = None if settings.redis_url else start_redis()
    workers = None if args.no_workers else WorkerSupervisor(settings.worker_processes, settings.worker_threads).start()

    # Browser sessions (user id, language) are kept beside the Redis data, not in the working directory.
    os.environ.setdefault("NICEGUI_STORAGE_PATH", str(settings.data_dir.resolve() / "sessions"))
    from nicegui import app, ui

    from ui import api, bus, pages

    def stop_children() -> None:
        if workers:
            workers.stop()
        if redis_server:
            redis_server.stop()

    api.create(app)
    bus.create()
    pages.create()
    app.on_shutdown(stop_children)
    print(f"queuechat: open http://{settings.host}:{settings.port}", flush=True)
    try:
        ui.run(host=settings.host, port=settings.port, title="queuechat", favicon="💬", reload=False, show=False,
               storage_secret=settings.storage_secret, show_welcome_message=False, uvicorn_logging_level="warning",
               fastapi_docs=True)
    finally:
        stop_children()


if __name__ in {"__main__", "__mp_main__"}:
    if sys.argv[1:2] == ["demo"]:
        from demo.tour import main as demo

        sys.exit(demo(sys.argv[2:]))
    run(parse_args())
