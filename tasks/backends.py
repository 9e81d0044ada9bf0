"""The LLM servers queuechat routes to: their configuration, their discovered models, and their health.

Configured in one place, ``LLM_BACKENDS``: the path of a TOML file, or the same as inline JSON::

    # backends.toml
    [[backend]]
    name = "gpu1"                  # how users and metrics see it (never the address)
    kind = "ollama"                # native /api/chat; or "openai": any OpenAI-compatible /v1/chat/completions
    url = "http://gpu1:11434"
    slots = 2                      # requests it really runs at once (Ollama: its OLLAMA_NUM_PARALLEL)
    # models = ["qwen3:latest"]    # what it serves; unset = discovered (/api/tags, /v1/models)
    # rate_per_min = 30            # optional start-rate limit of this server
    # api_key_env = "OPENAI_API_KEY"   # the name of the environment variable holding its key

    [aliases]
    fast = ["qwen3:0.6b", "gemma3:270m"]   # a job for "fast" runs on whichever server has one of them

Unset, there is one backend, ``ollama``, at ``OLLAMA_HOST`` with ``QUEUE_CONCURRENCY`` slots, as before.
``slots`` unset means: what the server says (llama.cpp's ``/props``), else 1 — a CPU server answers one request
at a time, and a larger cap only makes jobs wait inside the server, out of the queue's order.

What is learnt at run time lives in Redis (``backend:{name}``), written by whichever process checked last, so
that every app instance and worker agrees: ``state`` (up / down), ``models`` and ``loaded`` (JSON lists),
``slots`` (detected), ``failures`` in a row, ``down_until`` (ms), ``checked_at``. The circuit breaker: a server
that can't be reached or goes silent is down at once, one that answers 5xx ``BREAKER_FAILURES`` times in a row too;
then one job may try it (half-open); its success closes the breaker, its failure opens it again. The cool-down
is ``LLM_BREAKER_COOLDOWN_SECONDS``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tasks import keys
from tasks.llm import LLMError, OllamaClient, OpenAIClient
from tasks.llm.base import Client
from tasks.settings import settings

log = logging.getLogger("queuechat.backends")

BREAKER_FAILURES = 2


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    kind: str = "ollama"
    slots: int | None = None
    models: tuple[str, ...] | None = None
    rate_per_min: int = 0
    api_key_env: str | None = None

    def client(self) -> Client:
        if self.kind == "openai":
            return OpenAIClient(self.name, self.url, os.environ.get(self.api_key_env) if self.api_key_env else None)
        return OllamaClient(self.name, self.url)


@dataclass(frozen=True)
class Fleet:
    backends: tuple[Backend, ...]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def get(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)


class BackendConfigError(ValueError):
    pass


def fleet() -> Fleet:
    """The configured fleet (parsed once per value of LLM_BACKENDS, OLLAMA_HOST and QUEUE_CONCURRENCY)."""
    return _parse(settings.llm_backends, settings.ollama_host, settings.queue_concurrency)


@cache
def _parse(value: str | None, ollama_host: str, concurrency: int) -> Fleet:
    if not value:
        return Fleet((Backend("ollama", ollama_host, "ollama", slots=concurrency),))
    text = value.strip()
    try:
        data = json.loads(text) if text[:1] in "[{" else tomllib.loads(Path(text).read_text())
    except (OSError, ValueError) as error:
        raise BackendConfigError(f"LLM_BACKENDS: cannot read {text[:80]!r}: {error}") from error
    entries = data if isinstance(data, list) else data.get("backend") or data.get("backends") or []
    aliases = {} if isinstance(data, list) else data.get("aliases") or {}
    backends = []
    for entry in entries:
        try:
            models = entry.get("models")
            backend = Backend(name=str(entry["name"]), url=str(entry["url"]), kind=entry.get("kind", "ollama"),
                              slots=int(entry["slots"]) if entry.get("slots") else None,
                              models=tuple(models) if models else None,
                              rate_per_min=int(entry.get("rate_per_min") or 0), api_key_env=entry.get("api_key_env"))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise BackendConfigError(f"LLM_BACKENDS: a backend needs a name and a url ({entry!r})") from error
        if backend.kind not in ("ollama", "openai"):
            raise BackendConfigError(f"LLM_BACKENDS: backend {backend.name!r} has kind {backend.kind!r}; "
                                     "use 'ollama' or 'openai'")
        backends.append(backend)
    if not backends:
        raise BackendConfigError("LLM_BACKENDS names no backend")
    if len({b.name for b in backends}) != len(backends):
        raise BackendConfigError("LLM_BACKENDS: backend names must be unique")
    return Fleet(tuple(backends), {str(k): tuple(v) for k, v in aliases.items()})


async def discover(store) -> None:
    """Check every backend that no process checked in the last ``LLM_CHECK_SECONDS`` (a Redis lock shares the work
    between app instances and workers): is it up, what does it serve and have loaded, how many slots does it
    say it has. ``store`` is an asyncio :class:`~tasks.store.JobStore`."""
    await asyncio.gather(*(_check(store, backend) for backend in fleet().backends))


async def _check(store, backend: Backend) -> None:
    lock = f"{keys.PREFIX}discovery:{backend.name}"
    if not await store.client.set(lock, "1", nx=True, px=int(settings.llm_check_seconds * 900)):
        return
    client = backend.client()
    models = loaded = slots = ""
    try:
        up = await client.is_up()
        if up:
            models = json.dumps(sorted(await client.models()))
            loaded = json.dumps(sorted(await client.loaded(max_age=0)))
            found = await client.slots()
            slots = str(found) if found else ""
    except LLMError as error:
        if error.code == "llm_busy":  # took the check, busy answering someone: its calls say whether it is down
            log.debug("backend %s (%s) is busy; not checked this time", backend.name, backend.url)
            return
        log.warning("backend %s (%s): %s", backend.name, backend.url, error)
        up = False
    state, was = await store.scripts.backend_seen(backend.name, "1" if up else "0", models, loaded, slots)
    if state != was:
        log.log(logging.WARNING if state == "down" else logging.INFO, "backend %s (%s) is %s", backend.name,
                backend.url, state)
