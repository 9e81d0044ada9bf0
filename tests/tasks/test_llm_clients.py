"""Both LLM clients (tasks/llm/ollama.py, tasks/llm/openai.py) against the fake LLM, a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from devtools.fake_llm import DEFAULT_MODELS, Reply
from tasks.llm import LLMError, Options
from tasks.llm.base import classify, close_shared_http, read_to_end
from tasks.llm.ollama import OllamaClient
from tasks.llm.openai import OpenAIClient

CHAT_PATHS = {OllamaClient: "/api/chat", OpenAIClient: "/v1/chat/completions"}


# --- servers written by hand, and a client's answer or failure ------------------------------------------------

def ndjson(text: str, done: bool = False) -> bytes:
    payload = {"message": {"content": text}, "done": done}
    if done:
        payload.update(done_reason="stop", prompt_eval_count=1, eval_count=1)
    return (json.dumps(payload) + "\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


ANSWER = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(ndjson("hi") + ndjson("", True))
          + b"0\r\n\r\n")


def read_request(connection: socket.socket) -> bytes | None:
    """The head of the next request on the connection (its body read and dropped); None once it closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        got = connection.recv(65536)
        if not got:
            return None
        data += got
    head, body = data.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        body += connection.recv(65536)
    return head


@contextlib.contextmanager
def raw_server(handle: Callable[[socket.socket, list[bytes]], None]) -> Iterator[tuple[str, list[bytes]]]:
    """A server that gives each connection to ``handle`` (in a thread of its own), with the request heads seen."""
    listener, heads = socket.create_server(("127.0.0.1", 0)), []

    def serve(connection: socket.socket) -> None:
        with contextlib.suppress(OSError), connection:
            handle(connection, heads)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        listener.close()


async def answer(client: OllamaClient | OpenAIClient) -> str | BaseException:
    text = ""
    try:
        async for part in client.chat(DEFAULT_MODELS[0], [{"role": "user", "content": "hi"}], Options()):
            text += part.text
        return text
    except Exception as error:  # noqa: BLE001 - what escapes is the point
        return error


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
        outcome = await answer(kind("fake", url))
        await close_shared_http()
        assert isinstance(outcome, Exception), "the answer did not fail"
        return classify(outcome, "fake")

    def drop(connection: socket.socket, heads: list[bytes]) -> None:
        connection.recv(64)  # a little of the request, then closed without a word

    fake_llm.script(Reply(tokens=["a", "b", "c"], disconnect_after=1))
    with raw_server(drop) as (dropping, _):
        url = {"refused": closed_port(), "dropped": f"http://{dropping}", "cut mid-answer": fake_llm.url}[fault]
        assert asyncio.run(failure(url)).code == code


# --- replies httpx read as HTTP failures, and aiohttp's parser names in its own terms --------------------------

@pytest.mark.parametrize("reply", [
    b"-ERR unknown command 'POST'\r\n",                                      # not an HTTP server (a wrong port)
    b"HTTP/1.1 200 OK\r\nNo colon in this header\r\n\r\n",                  # a broken header line
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(ndjson("t0")) + b"zz\r\nbad\r\n",
    ANSWER.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 1),  # past aiohttp's header limit
], ids=["not-http", "bad-header", "bad-chunk-in-first-read", "header-too-long"])
def test_a_reply_that_is_not_http_is_a_dropped_connection_and_the_server_is_down(reply):
    # Found by an adversary of the move to aiohttp's connections: its parser's errors escaped the clients (an
    # "unexpected" failure with a traceback, every attempt) and the health check raised instead of answering False,
    # so that the server was never marked down. httpx named them RemoteProtocolError: a dropped connection.
    def handle(connection: socket.socket, heads: list[bytes]) -> None:
        if read_request(connection) is not None:
            connection.sendall(reply)
            time.sleep(0.2)

    async def main() -> tuple[BaseException | str, bool | BaseException]:
        with raw_server(handle) as (address, _):
            client = OllamaClient("raw", f"http://{address}")
            failure = await answer(client)
            try:
                up: bool | BaseException = await client.is_up()
            except Exception as problem:  # noqa: BLE001
                up = problem
            await close_shared_http()
            return failure, up

    failure, up = asyncio.run(main())
    assert isinstance(failure, LLMError) and failure.code == "llm_disconnected", repr(failure)
    assert up is False


@pytest.mark.parametrize("kind", [OllamaClient, OpenAIClient], ids=["ollama", "openai"])
def test_credentials_in_the_servers_url_are_sent_as_basic_auth_and_kept_out_of_its_name(kind):
    # An LLM server behind a proxy with Basic auth: http://user:secret@host. httpx sent them; aiohttp refused the
    # URL beside httpx's Authorization header (every call failed, before anything was sent).
    def handle(connection: socket.socket, heads: list[bytes]) -> None:
        while (head := read_request(connection)) is not None:
            heads.append(head)
            body = ndjson("hi") + ndjson("", True) if kind is OllamaClient else (
                b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
                b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')
            kind_header = b"application/x-ndjson" if kind is OllamaClient else b"text/event-stream"
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind_header +
                               b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(body) + b"0\r\n\r\n")

    async def main() -> tuple[str | BaseException, list[bytes], str]:
        with raw_server(handle) as (address, heads):
            client = kind("raw", f"http://us%40er:se:cret@{address}")
            text = await answer(client)
            await close_shared_http()
            return text, heads, client.url

    text, heads, url = asyncio.run(main())
    assert text == "hi", repr(text)
    assert b"authorization: basic dxnazxi6c2u6y3jlda==" in heads[0].lower()  # us@er:se:cret, base64, lower case
    assert "cret" not in url  # what logs and messages may show of the server
