"""Both LLM clients (tasks/llm/ollama.py, tasks/llm/openai.py) against the fake LLM, a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from devtools.fake_llm import DEFAULT_MODELS, Reply
from tasks.llm import LLMError, Options
from tasks.llm.base import classify, close_shared_http, read_to_end
from tasks.llm.ollama import OllamaClient
from tasks.llm.openai import OpenAIClient

CHAT_PATHS = {OllamaClient: "/api/chat", OpenAIClient: "/v1/chat/completions"}


@pytest.mark.parametrize("kind", [OllamaClient, OpenAIClient], ids=["ollama", "openai"])
def test_answers_one_after_another_share_one_connection(fake_llm, kind):
    # The runner stops reading at the 'done' chunk. The client reads the response's end before it says done, so
    # that the connection goes back to the pool: otherwise every answer costs a new TCP connection.
    async def answers() -> list[str]:
        client, texts = kind("fake", fake_llm.url), []
        for number in range(5):
            text = ""
            async for chunk in client.chat(DEFAULT_MODELS[0], [{"role": "user", "content": f"[[tokens=3]] {number}"}],
                                           Options()):
                if chunk.kind == "done":
                    break
                text += chunk.text
            texts.append(text)
        await close_shared_http()
        return texts

    before = set(fake_llm.peers[CHAT_PATHS[kind]])
    assert asyncio.run(answers()) == ["t0 t1 t2"] * 5
    assert len(fake_llm.peers[CHAT_PATHS[kind]] - before) == 1


def test_a_response_held_open_after_its_last_message_is_not_waited_for():
    async def held_open():
        yield "the end of the body"
        await asyncio.Event().wait()  # a server that never ends the response
        yield "never"

    async def main() -> bool:
        await asyncio.wait_for(read_to_end(held_open()), timeout=10)
        return True

    assert asyncio.run(main())


@contextlib.contextmanager
def dropping_server() -> Iterator[str]:
    """A server that accepts each connection, reads a little of the request and closes it without a word."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                connection.recv(64)
                connection.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def closed_port() -> str:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("kind", [OllamaClient, OpenAIClient], ids=["ollama", "openai"])
@pytest.mark.parametrize("fault, code", [("refused", "llm_unreachable"), ("dropped", "llm_disconnected"),
                                         ("cut mid-answer", "llm_disconnected")])
def test_a_server_never_reached_is_told_apart_from_one_that_dropped_the_connection(fake_llm, kind, fault, code):
    # Unreachable opens the server's circuit at once; a dropped connection first asks whether the server is still
    # up (runner.server_gone). The HTTP transport underneath names both alike (see llm.base.dropped).
    async def failure(url: str) -> LLMError:
        client = kind("fake", url)
        try:
            async for _ in client.chat(DEFAULT_MODELS[0], [{"role": "user", "content": "hi"}], Options()):
                pass
        except Exception as error:  # noqa: BLE001 - what the runner does with any failure
            return classify(error, "fake")
        finally:
            await close_shared_http()
        raise AssertionError("the answer did not fail")

    fake_llm.script(Reply(tokens=["a", "b", "c"], disconnect_after=1))
    with dropping_server() as dropping:
        url = {"refused": closed_port(), "dropped": dropping, "cut mid-answer": fake_llm.url}[fault]
        assert asyncio.run(failure(url)).code == code
