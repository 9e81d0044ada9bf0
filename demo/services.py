"""The running pieces the tour needs: an LLM server and the app, private to one run of the demo.

Each start function registers the piece's cleanup on the ExitStack it is given *before* starting it, so that
a failure or a Ctrl-C halfway through a start still stops what was started. The pieces are devtools children:
they die with the demo however it ends, and stopping one stops everything it started.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from devtools.processes import ROOT, Child, clean_environ
from devtools.stack import App
from devtools.waiting import wait_for
from tasks.redis_server import free_port

OFFLINE_MODEL = "qwen3:latest"  # one of the fake's models

Say = Callable[[str], None]

__all__ = ["ROOT", "DemoError", "check_ollama", "ollama_host", "start_app", "start_fake_llm", "stop"]


class DemoError(Exception):
    """Something the person running the demo can fix; printed without a traceback."""


def ollama_host() -> str:
    """The LLM server the app would use (OLLAMA_HOST, from the environment or .env)."""
    from tasks.settings import settings

    return settings.ollama_host.rstrip("/")


def check_ollama() -> None:
    """Fail early and clearly when there is no Ollama, or when it lacks the model the app would use."""
    from tasks.settings import settings

    host = ollama_host()
    try:
        tags = httpx.get(host + "/api/tags", timeout=3).raise_for_status().json()
    except (httpx.HTTPError, ValueError) as error:
        raise DemoError(f"Ollama is not reachable at {host} ({error}).\n  Start it (`ollama serve`), point "
                        "OLLAMA_HOST at one, or run the demo without a real LLM: uv run main.py demo --offline"
                        ) from None
    models = {model.get("name") for model in tags.get("models", [])}
    wanted = settings.ollama_model if ":" in settings.ollama_model else settings.ollama_model + ":latest"
    if wanted not in models:
        raise DemoError(f"Ollama at {host} does not have the model {wanted}: `ollama pull {wanted}`, set "
                        "OLLAMA_MODEL to one it has, or run: uv run main.py demo --offline")


def start_fake_llm(workdir: Path, stack: contextlib.ExitStack, say: Say, pace: float = 1.0) -> tuple[str, Child]:
    """The offline LLM (``demo/fake_llm.py``) in its own process, as a real Ollama would be."""
    port = free_port()
    command = [sys.executable, "-m", "demo.fake_llm", "--port", str(port), "--pace", str(pace)]
    llm = Child("the offline LLM", command, env=clean_environ(), log_path=workdir / "llm.log")
    stack.callback(stop, llm, say)
    llm.start()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        llm.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url + "/api/version", timeout=2).is_success
        return False

    wait_for(answers, timeout=30, interval=0.2, what="the offline LLM")
    say(f"offline LLM (devtools' fake LLM with the demo's scripted answers) on {url}")
    return url, llm


def start_app(workdir: Path, llm_url: str, offline: bool, stack: contextlib.ExitStack, say: Say,
              pace: float = 1.0) -> str:
    """``main.py`` with its embedded Redis and workers, private to this run; returns its URL once it is healthy.

    One LLM call at a time and no start-rate limit: a handful of messages then makes a queue whose positions
    are visible. The first retry waits 3–6 s, long enough to be seen (``pace`` times shorter, down to 1–2 s, when
    the answers are played faster). Every setting the tour relies on is set here, whatever the environment or
    .env says.
    """
    data = workdir / "data"
    env = clean_environ(
        REDIS_URL="",  # empty, not unset: the embedded Redis, even if the environment or .env names another
        DATA_DIR=str(data), NICEGUI_STORAGE_PATH=str(data / "sessions"), HOST="127.0.0.1",
        OLLAMA_HOST=llm_url, STORAGE_SECRET=secrets.token_hex(16),
        QUEUE_CONCURRENCY="1", QUEUE_RATE_PER_MIN="0", API_RATE_PER_MIN="0",
        WORKER_PROCESSES="1", WORKER_THREADS="4", QUEUE_MAX_RETRIES="3",
        RETRY_MIN_BACKOFF_MS=str(round(max(1000, 3000 / pace))),
        RETRY_MAX_BACKOFF_MS=str(round(max(2000, 6000 / pace))))
    if offline:  # the fake's model, a progress bar sized for its shorter answers, and patience with held ones
        env.update(OLLAMA_MODEL=OFFLINE_MODEL, EXPECTED_TOKENS="150", LLM_IDLE_TIMEOUT="600",
                   LLM_FIRST_TOKEN_TIMEOUT="120")
    app = App(env, workdir)
    app.name = "the app (main.py)"
    stack.callback(stop, app, say)
    say("starting the app: main.py with its own Redis and workers, one LLM call at a time")
    app.start()

    def healthy() -> bool:
        app.check_alive()
        health = app.health()
        return bool(health.get("redis") and health.get("ollama") and health.get("workers"))

    wait_for(healthy, timeout=90, interval=0.2, what="the app, its workers and the LLM to be up")
    app.note_descendants()  # its Redis and workers, found again at the end even if main.py has died by then
    say(f"app on {app.url} (log: {app.log_path})")
    return app.url


def stop(child: Child, say: Say) -> None:
    """Stop a child and all it started, saying so: the slow part of a cleanup should not be a silent one."""
    was_alive, started = child.alive, time.monotonic()
    child.stop(timeout=25)
    if was_alive:
        say(f"stopped {child.name} in {time.monotonic() - started:.1f} s")
