"""queuechat in front of the real model, as a user runs it, and the tour's three ways of looking at it.

* :func:`start` runs ``main.py`` exactly as ``uv run main.py`` does — its embedded Redis and its own workers —
  in a temporary DATA_DIR, with ``LLM_BACKENDS`` naming the model server (one slot) and ``OLLAMA_MODEL`` its
  alias. A devtools :class:`~devtools.stack.App`: it and all it starts die with the tour.
* :class:`ApiUser`: one person with an API key of their own (made on the app's Redis, as ``main.py keys create``
  does), submitting over ``POST /api/chat`` and following each answer over SSE (:class:`Watch`).
* :class:`Observer`: the job store on the same Redis, for what no client of a job can see of another's (the
  record of a browser's job, its token stream, the suggestion's raw answer).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from benchmarks.real_model.llama import ALIAS, Call
from devtools import sse
from devtools.processes import clean_environ
from devtools.stack import App, apply_settings
from devtools.waiting import wait_for
from tasks import connection, identities, keys
from tasks.fold import JobState
from tasks.redis_server import RedisServer
from tasks.store import JobStore, sync_store

#: What the tour changes from a user's defaults: no start-rate limit and no request budget (the tour measures
#: the queue in front of the model, not the limits that protect it). The slots are the default, 1.
SETTINGS = {"QUEUE_RATE_PER_MIN": "0", "API_RATE_PER_MIN": "0"}


def app(llm_url: str, workdir: Path) -> App:
    """``main.py`` with its embedded Redis and workers in ``workdir``, not started yet."""
    data = workdir / "data"
    backends = [{"name": "llama", "kind": "openai", "url": f"{llm_url}/v1", "slots": 1}]
    env = clean_environ(REDIS_URL="", DATA_DIR=str(data), NICEGUI_STORAGE_PATH=str(data / "sessions"),
                        HOST="127.0.0.1", STORAGE_SECRET=secrets.token_hex(16), LLM_BACKENDS=json.dumps(backends),
                        OLLAMA_MODEL=ALIAS, PYTHONUNBUFFERED="1", **SETTINGS)
    the_app = App(env, workdir)
    the_app.name = "queuechat (main.py)"
    return the_app


def start(app: App, say) -> None:
    """Start it; return once ``/health`` says ok (Redis, workers, the model server up, the default model offered)."""
    say("starting queuechat: main.py with its embedded Redis and workers, LLM_BACKENDS = the model server")
    app.start()
    try:
        wait_for(lambda: app.check_alive() or app.health().get("status") == "ok", timeout=90, interval=0.3,
                 what="queuechat's /health to say ok")
    except AssertionError as error:
        raise AssertionError(f"{error}: {app.health()}\n{app.log_tail()}") from None
    app.note_descendants()  # its Redis and workers, found again at the end even if main.py has died by then
    say(f"queuechat on {app.url}: {app.health()}")


def observe(app: App) -> Observer:
    """Point this process's settings at the app's embedded Redis (a private unix socket) and read through it."""
    url = RedisServer(Path(app.env["DATA_DIR"]) / "redis", private=True).url
    apply_settings({"REDIS_URL": url, "OLLAMA_MODEL": ALIAS, "LLM_BACKENDS": app.env["LLM_BACKENDS"]})
    connection.reset_connections()
    return Observer(sync_store())


@dataclass
class Observer:
    store: JobStore

    def job(self, job_id: str) -> JobState:
        job = self.store.job(job_id)
        assert job is not None, f"job {job_id} is gone"
        return job

    def pieces(self, job_id: str) -> list[str]:
        """The answer's pieces as its token stream carries them (what every page and SSE client folds), from the
        last reset."""
        pieces: list[str] = []
        for _, entry in self.store.stream(job_id):
            if entry.get("k") == "reset":
                pieces.clear()
            elif entry.get("k") == "token":
                pieces.append(entry.get("d", ""))
        return pieces

    def streamed(self, job_id: str) -> str:
        return "".join(self.pieces(job_id))

    def timeline(self, job_id: str) -> dict[str, float]:
        """When the job was written and first reached each phase, and its first token: seconds since the epoch,
        on Redis' clock (the stream entries' ids), the same machine's clock as the tour's."""
        job = self.job(job_id)
        marks = {"submitted": (job.created_at or 0) / 1000}
        for entry_id, entry in self.store.stream(job_id):
            seconds = int(entry_id.split("-")[0]) / 1000
            if entry.get("k") == "status":
                marks.setdefault(json.loads(entry.get("d") or "{}").get("phase", ""), seconds)
            elif entry.get("k") == "token":
                marks.setdefault("token", seconds)
        return marks

    def jobs_of_kind(self, kind: str) -> list[JobState]:
        """Every job of a kind (the Redis is the tour's own), oldest first."""
        client, found = self.store.client, []
        for name in client.scan_iter(keys.job("*")):
            name = name.decode() if isinstance(name, bytes) else name
            if client.hget(name, "kind") in (kind, kind.encode()):
                found.append(self.job(name.removeprefix(keys.job(""))))
        return sorted(found, key=lambda job: job.created_at or 0)


def make_key(name: str, max_priority: str) -> str:
    """An API key, as ``main.py keys create NAME --max-priority P`` makes it (on the observed Redis)."""
    plaintext, _ = identities.create_key(name, max_priority=max_priority)
    return plaintext


class ApiUser:
    """One person using the HTTP API with their own key."""

    def __init__(self, name: str, app_url: str, max_priority: str) -> None:
        self.name = name
        self.http = httpx.Client(base_url=app_url, timeout=httpx.Timeout(10.0, read=600.0),
                                 headers={"Authorization": f"Bearer {make_key(name, max_priority)}"})

    def ask(self, prompt: str, priority: str, options: dict, label: str) -> Watch:
        """Submit, then follow the answer over SSE in a thread of its own."""
        sent = time.time()
        response = self.http.post("/api/chat", json={"message": prompt, "priority": priority, "options": options})
        response.raise_for_status()
        return Watch(self, response.json()["job_id"], label, priority, sent).begin()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/api/jobs/{job_id}").raise_for_status().json()

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.http.delete(f"/api/jobs/{job_id}")

    def close(self) -> None:
        self.http.close()


@dataclass
class Watch:
    """One job followed over ``/stream/status/{id}``: the positions and ETAs it was shown while it waited (each
    with the time it arrived), its tokens, its final record."""

    user: ApiUser
    job_id: str
    label: str
    priority: str
    sent: float
    statuses: list[tuple[float, int | None, int | None]] = field(default_factory=list)  # (time, position, eta)
    call: Call | None = None
    final: dict = field(default_factory=dict)
    resets: int = 0
    error: str = ""
    thread: threading.Thread | None = None

    def begin(self) -> Watch:
        self.call = Call(self.label, self.sent)
        self.thread = threading.Thread(target=self._follow, name=f"watch {self.label}", daemon=True)
        self.thread.start()
        return self

    def _follow(self) -> None:
        try:
            for event in sse.events(self.user.http, f"/stream/status/{self.job_id}",
                                    timeout=httpx.Timeout(10.0, read=600.0)):
                now = time.time()
                if event.event == "status" and event.data.get("status") in ("queued", "retrying"):
                    self.statuses.append((now, event.data.get("position"), event.data.get("eta_seconds")))
                elif event.event == "token":
                    self.call.pieces.append((now, event.data["text"]))
                elif event.event == "reset":
                    self.resets += 1
                    self.call.pieces.clear()
                elif event.event == "done":
                    self.final = event.data
                    self.call.reason = event.data.get("done_reason")
                    return
        except Exception as error:  # noqa: BLE001 - reported with the job, never a silent thread death
            self.error = f"{type(error).__name__}: {error}"

    def wait(self, timeout: float = 600) -> Watch:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"{self.label}: no end of its answer in {timeout:.0f} s")
        if self.error:
            raise AssertionError(f"{self.label}: its SSE stream failed: {self.error}")
        return self

    @property
    def first_token(self) -> float | None:
        return self.call.pieces[0][0] if self.call.pieces else None

    @property
    def started(self) -> float | None:
        return epoch(self.final.get("started_at"))


def epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None
