"""What the fake LLM answers: a scripted :class:`Reply`, or the echo derived from the request.

A Reply says what to stream (thinking, then content tokens), how fast, and which fault to play on the way.
Unscripted requests get the echo: ``You said: <prompt>``, or ``[[tokens=N]]`` tokens ``t0 t1 …`` and a
``[[delay=S]]`` between them when the prompt asks for them (load tests and slow answers without scripting). A prompt
may also ask for a fault (``[[wrong_shape_after=N]]``, any of FAULTS) or an error status (``[[status=503]]``): a job
that always fails that way, whatever other requests arrive meanwhile (a script is played in arrival order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODELS = ("qwen3:latest", "llama3.2:latest")
FAULTS = ("malformed", "wrong_shape", "too_deep", "disconnect", "hang")  # the order in which a tie is broken

_WORD = re.compile(r"\s*\S+|\s+")
_TOKENS = re.compile(r"\[\[tokens=(\d+)\]\]")
_DELAY = re.compile(r"\[\[delay=(\d+(?:\.\d*)?|\.\d+)\]\]")
_FAULT = re.compile(r"\[\[(" + "|".join(FAULTS) + r")_after=(\d+)\]\]")
_STATUS = re.compile(r"\[\[status=(\d{3})\]\]")


def split_words(text: str) -> list[str]:
    """Word tokens that keep their leading whitespace, so that joining them gives the text back."""
    return _WORD.findall(text)


def canonical_model(name: str) -> str:
    """Ollama treats "qwen3" and "qwen3:latest" as the same model."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass
class Reply:
    """How the fake answers one request.

    Fault positions count streamed chunks, thinking included; ``0`` is "before the first chunk". The first
    fault due ends the stream, except a hang that :meth:`FakeLLM.release` ends: the answer then goes on.
    """

    text: str = ""
    tokens: list[str] | None = None
    """Content tokens; None: the words of ``text``."""
    thinking: list[str] = field(default_factory=list)
    """Thinking tokens, streamed before the content."""
    token_delay: float | None = None
    """Seconds between chunks; None: the server's default."""
    first_token_delay: float = 0.0
    """Seconds before the response starts (no headers either: a model loading)."""
    status: int = 200
    error: str = ""
    """The error message of a non-200 ``status``."""
    malformed_after: int | None = None
    """After N chunks send a line that is not JSON, and end."""
    wrong_shape_after: int | None = None
    """After N chunks send JSON of the wrong shape, and end."""
    too_deep_after: int | None = None
    """After N chunks send a line of JSON nested too deep for a parser (Python's raises RecursionError), and end."""
    hang_after: int | None = None
    """After N chunks go silent until the client leaves, the server stops or the fake releases held answers."""
    disconnect_after: int | None = None
    """After N chunks drop the connection without an end."""
    done_reason: str = "stop"
    usage: bool = True
    """False: a streamed OpenAI answer says nothing of its tokens, even when asked (llama-cpp-python's server)."""

    def __post_init__(self) -> None:
        """Fail where a bad script is written, not in the middle of a test."""
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        for name in ("token_delay", "first_token_delay", *(f"{fault}_after" for fault in FAULTS)):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value!r}")

    def content_tokens(self) -> list[str]:
        return list(self.tokens) if self.tokens is not None else split_words(self.text)

    def fault_at(self, sent: int) -> str | None:
        """The fault due once ``sent`` chunks are out, if any."""
        return next((fault for fault in FAULTS if getattr(self, f"{fault}_after") == sent), None)


def prompt_of(body: dict[str, Any]) -> str:
    """What the echo answers: the prompt (``/api/generate``) or the last user message (chat)."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    messages = body.get("messages")
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            return message["content"] if isinstance(message.get("content"), str) else ""
    return ""


def echo(body: dict[str, Any]) -> Reply:
    """The unscripted answer: deterministic, and shaped by ``[[tokens=N]]`` / ``[[delay=S]]`` in the prompt."""
    prompt = prompt_of(body)
    delay = _DELAY.search(prompt)
    count = _TOKENS.search(prompt)
    status = _STATUS.search(prompt)
    shape: dict[str, Any] = {"token_delay": float(delay.group(1)) if delay else None,
                             **{f"{fault}_after": int(after) for fault, after in _FAULT.findall(prompt)}}
    if status:
        shape.update(status=int(status.group(1)), error=f"scripted error (HTTP {status.group(1)})")
    if count:
        return Reply(tokens=[f" t{i}" if i else "t0" for i in range(int(count.group(1)))], **shape)
    return Reply(text=f"You said: {prompt}", **shape)
