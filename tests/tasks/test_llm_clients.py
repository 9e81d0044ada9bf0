"""Both LLM clients (tasks/llm/ollama.py, tasks/llm/openai.py) against the fake LLM, a real HTTP server."""

from __future__ import annotations

import asyncio

import pytest

from devtools.fake_llm import DEFAULT_MODELS
from tasks.llm import Options
from tasks.llm.base import read_to_end
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
        await client.http.aclose()
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
