"""Tests for the fake Ollama server, over real HTTP with httpx (no mocks)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fake_ollama import FakeOllama, Reply, split_words

MODEL = "qwen3:latest"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOllama]:
    """One server for the module: starting one per test would dominate run time."""
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOllama) -> Iterator[FakeOllama]:
    server.reset()
    yield server
    assert server.wait_idle(), "a test left a /api/chat response in flight"


@pytest.fixture
def client(fake: FakeOllama) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5.0) as c:
        yield c


def chat_body(content: str = "hello", model: str = MODEL, **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def stream_chunks(client: httpx.Client, body: dict) -> list[dict]:
    with client.stream("POST", "/api/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines() if line]


def content_of(chunks: list[dict]) -> str:
    return "".join(c["message"]["content"] for c in chunks)


# --------------------------------------------------------------------------- #
# Ollama protocol
# --------------------------------------------------------------------------- #


def test_split_words_keeps_spaces() -> None:
    assert split_words("Hello world") == ["Hello", " world"]
    assert "".join(split_words("  a  b \n c ")) == "  a  b \n c "


def test_streaming_tokens_reassemble_text(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="Hello brave new world"))
    chunks = stream_chunks(client, chat_body())

    *tokens, final = chunks
    assert [c["message"]["content"] for c in tokens] == ["Hello", " brave", " new", " world"]
    assert all(c["done"] is False and c["model"] == MODEL and c["created_at"] for c in tokens)
    assert all(c["message"]["role"] == "assistant" for c in chunks)
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["eval_count"] == 4
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert final["prompt_eval_count"] >= 1


def test_default_reply_echoes_last_user_message(client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "You said: first"},
            {"role": "user", "content": "second question"},
        ],
    }
    assert content_of(stream_chunks(client, body)) == "You said: second question"


def test_explicit_tokens_and_done_reason(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(tokens=["a", "b", "c"], done_reason="length"))
    chunks = stream_chunks(client, chat_body())
    assert content_of(chunks) == "abc"
    assert chunks[-1]["done_reason"] == "length"


def test_num_predict_truncates(client: httpx.Client) -> None:
    chunks = stream_chunks(client, chat_body("[[tokens=10]]", options={"num_predict": 3}))
    assert content_of(chunks) == "t0 t1 t2"
    assert chunks[-1]["done_reason"] == "length"


def test_thinking_chunks_come_first(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(thinking=["Let me", " think"], text="Answer here"))
    chunks = stream_chunks(client, chat_body(think=True))

    assert [c["message"].get("thinking") for c in chunks[:2]] == ["Let me", " think"]
    assert all(c["message"]["content"] == "" for c in chunks[:2])
    assert all("thinking" not in c["message"] for c in chunks[2:])
    assert content_of(chunks) == "Answer here"


def test_think_false_suppresses_thinking(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(thinking=["hmm"], text="ok"))
    chunks = stream_chunks(client, chat_body(think=False))
    assert not any("thinking" in c["message"] for c in chunks)
    assert content_of(chunks) == "ok"


def test_non_stream_mode(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(thinking=["pondering"], text="The whole answer"))
    response = client.post("/api/chat", json=chat_body(stream=False))

    assert response.status_code == 200
    data = response.json()
    assert data["done"] is True
    assert data["done_reason"] == "stop"
    assert data["message"] == {"role": "assistant", "content": "The whole answer", "thinking": "pondering"}
    assert data["eval_count"] == 4


def test_unknown_model_is_404(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="kept for the next valid request"))
    response = client.post("/api/chat", json=chat_body(model="nope"))

    assert response.status_code == 404
    assert response.json() == {"error": 'model "nope" not found, try pulling it first'}
    assert content_of(stream_chunks(client, chat_body())) == "kept for the next valid request"


def test_model_without_tag_means_latest(client: httpx.Client) -> None:
    assert content_of(stream_chunks(client, chat_body("x", model="qwen3"))) == "You said: x"


def test_scripted_503(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(status=503, error="server busy"), Reply(status=500))
    first = client.post("/api/chat", json=chat_body())
    second = client.post("/api/chat", json=chat_body())

    assert (first.status_code, first.json()) == (503, {"error": "server busy"})
    assert second.status_code == 500 and second.json()["error"]
    assert client.post("/api/chat", json=chat_body("back")).status_code == 200


def test_malformed_line(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="one two three", malformed_after=2))
    with client.stream("POST", "/api/chat", json=chat_body()) as response:
        lines = list(response.iter_lines())

    assert [json.loads(line)["message"]["content"] for line in lines[:2]] == ["one", " two"]
    assert lines[2] == '{"broken'
    assert len(lines) == 3
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[2])


def test_hang_then_client_closes(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="a b c d", hang_after=2))
    with client.stream("POST", "/api/chat", json=chat_body()) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["message"]["content"] == "a"
        assert json.loads(next(lines))["message"]["content"] == " b"
        assert fake.active == 1
    # Leaving the block closes the half-read response, i.e. the connection.

    assert fake.wait_until(lambda: fake.cancelled == 1)
    assert fake.wait_idle()
    assert fake.active == 0


def test_hang_times_out_on_client_side(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="a b", hang_after=1))
    with pytest.raises(httpx.ReadTimeout):
        with client.stream("POST", "/api/chat", json=chat_body(), timeout=0.3) as response:
            for _ in response.iter_lines():
                pass
    assert fake.wait_until(lambda: fake.cancelled == 1)
    assert fake.wait_idle()


def test_stop_releases_hanging_stream() -> None:
    fake = FakeOllama().start()
    fake.script(Reply(text="a b", hang_after=1))
    with httpx.Client(base_url=fake.url, timeout=5.0) as client:
        with client.stream("POST", "/api/chat", json=chat_body()) as response:
            next(response.iter_lines())
            started = time.monotonic()
            fake.stop()
            assert time.monotonic() - started < 2.0
    assert fake.active == 0


def test_disconnect_after(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="a b c", disconnect_after=1))
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/api/chat", json=chat_body()) as response:
            for line in response.iter_lines():
                received.append(json.loads(line))

    assert [c["message"]["content"] for c in received] == ["a"]
    assert fake.wait_idle()
    assert fake.cancelled == 0  # the server hung up, not the client
    assert client.post("/api/chat", json=chat_body("fine")).status_code == 200


def test_max_active_counts_concurrent_requests(fake: FakeOllama) -> None:
    fake.set_default(Reply(text="x y z", token_delay=0.05))

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=fake.url, timeout=5.0) as client:

            async def one(i: int) -> str:
                response = await client.post("/api/chat", json=chat_body(str(i), stream=False))
                return response.json()["message"]["content"]

            return await asyncio.gather(*(one(i) for i in range(4)))

    assert asyncio.run(run()) == ["x y z"] * 4
    assert fake.max_active == 4
    assert fake.active == 0
    assert len(fake.requests) == 4


def test_first_token_and_token_delays(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(tokens=["a", "b", "c"], first_token_delay=0.15, token_delay=0.05))
    started = time.monotonic()
    content_of(stream_chunks(client, chat_body()))
    assert time.monotonic() - started >= 0.15 + 3 * 0.05


def test_tokens_marker(client: httpx.Client) -> None:
    chunks = stream_chunks(client, chat_body("load test [[tokens=5]]"))
    assert [c["message"]["content"] for c in chunks[:-1]] == ["t0", " t1", " t2", " t3", " t4"]
    assert chunks[-1]["eval_count"] == 5


def test_delay_marker(client: httpx.Client) -> None:
    started = time.monotonic()
    chunks = stream_chunks(client, chat_body("[[tokens=4]] [[delay=0.05]]"))
    assert content_of(chunks) == "t0 t1 t2 t3"
    assert time.monotonic() - started >= 4 * 0.05


def test_script_is_fifo_then_default(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script(Reply(text="first"), Reply(text="second"))
    fake.set_default(Reply(text="default"))
    replies = [content_of(stream_chunks(client, chat_body())) for _ in range(4)]
    assert replies == ["first", "second", "default", "default"]

    fake.set_default(None)
    assert content_of(stream_chunks(client, chat_body("echo"))) == "You said: echo"


def test_requests_are_recorded(fake: FakeOllama, client: httpx.Client) -> None:
    body = chat_body("remember me", options={"num_predict": 50})
    client.post("/api/chat", json=body)
    assert fake.requests == [body]

    fake.requests.clear()  # a copy: the server's record is untouched
    assert len(fake.requests) == 1


# --------------------------------------------------------------------------- #
# Other Ollama endpoints
# --------------------------------------------------------------------------- #


def test_root_and_version(client: httpx.Client) -> None:
    assert client.get("/").text == "Ollama is running"
    assert client.get("/api/version").json() == {"version": "0.0.0-fake"}


def test_tags(fake: FakeOllama, client: httpx.Client) -> None:
    models = client.get("/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["qwen3:latest", "llama3.2:latest"]
    for m in models:
        assert m["model"] == m["name"]
        assert {"modified_at", "size", "digest", "details"} <= m.keys()
        assert {"format", "family", "parameter_size", "quantization_level"} <= m["details"].keys()

    fake.set_models(["mistral", "phi4:14b"])
    assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ["mistral:latest", "phi4:14b"]
    assert client.post("/api/chat", json=chat_body(model=MODEL)).status_code == 404


def test_ps_lists_models_after_first_chat(fake: FakeOllama, client: httpx.Client) -> None:
    assert client.get("/api/ps").json() == {"models": []}
    client.post("/api/chat", json=chat_body(model="llama3.2", stream=False))

    loaded = client.get("/api/ps").json()["models"]
    assert [m["name"] for m in loaded] == ["llama3.2:latest"]
    assert {"model", "size", "digest", "details", "expires_at", "size_vram"} <= loaded[0].keys()

    fake.set_loaded(["qwen3"])
    assert fake.loaded == ["qwen3:latest"]


# --------------------------------------------------------------------------- #
# HTTP control
# --------------------------------------------------------------------------- #


def test_http_control(fake: FakeOllama, client: httpx.Client) -> None:
    queued = client.post("/_fake/script", json=[{"text": "scripted one"}, {"status": 503, "error": "busy"}])
    assert queued.json() == {"queued": 2}
    assert fake.queued == 2

    assert content_of(stream_chunks(client, chat_body())) == "scripted one"
    assert client.post("/api/chat", json=chat_body()).status_code == 503

    assert client.post("/_fake/default", json={"tokens": ["d"]}).status_code == 200
    assert content_of(stream_chunks(client, chat_body())) == "d"

    state = client.get("/_fake/state").json()
    assert len(state["requests"]) == 3
    assert state["requests"][0]["messages"][0]["content"] == "hello"
    assert (state["active"], state["max_active"], state["cancelled"]) == (0, 1, 0)

    assert client.post("/_fake/models", json=["only:1b"]).status_code == 200
    assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ["only:1b"]

    assert client.post("/_fake/reset").status_code == 200
    state = client.get("/_fake/state").json()
    assert (state["requests"], state["queued"], state["max_active"]) == ([], 0, 0)
    assert state["models"] == ["qwen3:latest", "llama3.2:latest"]
    assert content_of(stream_chunks(client, chat_body("again"))) == "You said: again"


def test_http_control_rejects_bad_input(fake: FakeOllama, client: httpx.Client) -> None:
    bad = client.post("/_fake/script", json=[{"txet": "typo"}])
    assert bad.status_code == 400 and "txet" in bad.json()["error"]
    assert client.post("/_fake/script", json=[{"hang_after": -1}]).status_code == 400
    assert client.post("/_fake/models", json="qwen3").status_code == 400
    assert fake.queued == 0


def test_python_and_http_share_state(fake: FakeOllama, client: httpx.Client) -> None:
    fake.script({"text": "from python dict"})
    client.post("/_fake/script", json={"text": "from http"})
    assert [content_of(stream_chunks(client, chat_body())) for _ in range(2)] == [
        "from python dict",
        "from http",
    ]
    assert len(fake.requests) == len(client.get("/_fake/state").json()["requests"]) == 2


# --------------------------------------------------------------------------- #
# Standalone process
# --------------------------------------------------------------------------- #


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_standalone_process(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"text": "from the script file"}]))
    port = _free_port()
    path = Path(__file__).with_name("fake_ollama.py")
    proc = subprocess.Popen(
        [sys.executable, str(path), "--port", str(port), "--script-file", str(script)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.get("/")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.05)

            assert content_of(stream_chunks(client, chat_body())) == "from the script file"
            client.post("/_fake/script", json=[{"tokens": ["remote"]}])
            assert content_of(stream_chunks(client, chat_body())) == "remote"
            assert len(client.get("/_fake/state").json()["requests"]) == 2
    finally:
        proc.terminate()
        # uvicorn re-raises the captured SIGTERM after a graceful shutdown.
        assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
