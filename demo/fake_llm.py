"""The offline demo's LLM server: ``python -m demo.fake_llm --port N``.

It is the devtools fake LLM (:mod:`devtools.fake_llm`: Ollama's HTTP protocol as the app speaks it), with two
changes:

* instead of echoing, it answers each prompt of the tour with that prompt's scripted markdown
  (``demo/script.py``), at its own pace. The answer is chosen by the prompt, not by the order of requests, so
  the queue may run the messages in any order it likes. A reply sent to ``POST /_demo/script`` (the tour's
  injected error) comes first.
* an answer whose turn has ``hold_after`` streams that many tokens and then hangs until the tour sends
  ``POST /_demo/release``. So a scene never races the model: the answer that must still be streaming while
  the others queue up, or that must be stopped halfway, is still there however slow the machine is.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from demo import script
from devtools.fake_llm import FakeLLM, Reply, prompt_of


class ScriptedLLM(FakeLLM):
    def __init__(self, *, pace: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pace = pace
        """How many times faster than the script's own token delays the answers stream (``--pace``)."""

    def unscripted(self, body: dict[str, Any]) -> Reply:
        turn = script.turn_for(prompt_of(body))
        thinking = script.tokens(turn.thinking)
        hold = None if turn.hold_after is None else len(thinking) + turn.hold_after  # thinking chunks count too
        return Reply(tokens=script.tokens(turn.answer), thinking=thinking, token_delay=turn.token_delay / self.pace,
                     hang_after=hold)

    def routes(self) -> list[Route]:
        async def inject(request: Request) -> Response:
            self.script(Reply(**await request.json()))
            return JSONResponse({"queued": True})

        async def release(request: Request) -> Response:
            self.release()
            return JSONResponse({"released": True})

        return [*super().routes(), Route("/_demo/script", inject, methods=["POST"]),
                Route("/_demo/release", release, methods=["POST"])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo's offline LLM: scripted answers over Ollama's API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pace", type=float, default=1.0, help="stream N times faster than the script says")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its graceful shutdown
        ScriptedLLM(host=args.host, port=args.port, pace=args.pace).serve_forever()


if __name__ == "__main__":
    main()
