"""The offline demo's LLM server: ``python -m demo.fake_llm --port N``.

It is the tests' fake Ollama (``tests/fake_ollama.py``: Ollama's real HTTP protocol, NDJSON streaming, and the
``/_fake/*`` control endpoints the tour uses to inject an error), with two changes:

* instead of echoing, it answers each prompt of the tour with that prompt's scripted markdown
  (``demo/script.py``), at its own pace. The answer is chosen by the prompt, not by the order of requests, so
  the queue may run the messages in any order it likes. Replies queued through ``POST /_fake/script`` still
  come first.
* an answer whose turn has ``hold_after`` streams that many tokens and then waits until the tour sends
  ``POST /_demo/release``. So a scene never races the model: the answer that must still be streaming while
  the others queue up, or that must be stopped halfway, is still there however slow the machine is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterable
from typing import Any

import anyio
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from demo import script
from tests.fake_ollama import DEFAULT_MODELS, FakeOllama, Reply, _last_user_content, _State, build_app


class ScriptedState(_State):
    """The fake's state, answering from the demo script when no reply was queued over HTTP."""

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self.queue:
                return self.queue.popleft()
        turn = script.turn_for(_last_user_content(body))
        return Reply(tokens=script.tokens(turn.answer), thinking=script.tokens(turn.thinking),
                     token_delay=turn.token_delay)


class Holds:
    """ASGI wrapper around the fake: holds answers at their turn's ``hold_after``; ``POST /_demo/release``."""

    def __init__(self, app: ASGIApp, state: _State) -> None:
        self.app, self.state = app, state
        self.release: anyio.Event | None = None  # replaced at each release: a later hold waits for the next one
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_demo/release" and scope["method"] == "POST":
            await self._release(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == "/api/chat":
            await self._chat(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = bytearray()
        sent = 0
        hold_at: int | None = -1  # -1: not known yet (the request body is read before the first chunk)

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def send_or_hold(message: Message) -> None:
            nonlocal sent, hold_at
            if message["type"] == "http.response.body" and message.get("body"):
                if hold_at == -1:
                    hold_at = _hold_point(bytes(body))
                if sent == hold_at:
                    await self._hold()
                sent += 1
            await send(message)

        await self.app(scope, receive_and_keep, send_or_hold)

    async def _hold(self) -> None:
        release = self._current()
        self.held += 1
        try:
            while not release.is_set() and not (self.state.stopping and self.state.stopping.is_set()):
                with anyio.move_on_after(0.1):
                    await release.wait()
        finally:
            self.held -= 1

    async def _release(self, scope: Scope, receive: Receive, send: Send) -> None:
        released, self.release = self._current(), anyio.Event()
        held = self.held
        released.set()
        await JSONResponse({"released": held})(scope, receive, send)

    def _current(self) -> anyio.Event:
        if self.release is None:
            self.release = anyio.Event()
        return self.release


def _hold_point(body: bytes) -> int | None:
    """How many chunks (thinking included) the answer to this request sends before it waits; None: never."""
    try:
        turn = script.turn_for(_last_user_content(json.loads(body)))
    except (ValueError, AttributeError):
        return None
    if turn.hold_after is None:
        return None
    return len(script.tokens(turn.thinking)) + turn.hold_after


class ScriptedLLM(FakeOllama):
    """``FakeOllama`` serving :class:`ScriptedState` behind :class:`Holds` (the fake builds both in __init__)."""

    def __init__(self, host: str, port: int, models: Iterable[str] = DEFAULT_MODELS) -> None:
        super().__init__(host, port, models=models)
        self._state = ScriptedState(models, (), 0.0)
        self.app = Holds(build_app(self._state), self._state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo's offline LLM: scripted answers over Ollama's API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its graceful shutdown
        ScriptedLLM(args.host, args.port).serve_forever()


if __name__ == "__main__":
    main()
