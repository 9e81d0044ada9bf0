"""``python -m devtools.fake_llm --port N [--models …] [--slots N] [--token-delay S]``: the fake LLM in its own
process, for a stack that needs it there (it answers with the echo: ``[[tokens=N]]``, ``[[delay=S]]``)."""

from __future__ import annotations

import argparse
import contextlib

from devtools.fake_llm import DEFAULT_MODELS, FakeLLM


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fake LLM server speaking Ollama's and OpenAI's API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--slots", type=int, help="answers served at once (default: no limit)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after its graceful shutdown
        FakeLLM(models=args.models, slots=args.slots, token_delay=args.token_delay, host=args.host,
                port=args.port).serve_forever()


if __name__ == "__main__":
    main()
