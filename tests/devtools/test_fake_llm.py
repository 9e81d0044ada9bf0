"""The fake LLM does what the product tests rely on: both protocols' shapes as a client reads them, the scripted
faults, slots and the counts the tests observe. Over real HTTP with httpx."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from devtools.fake_llm import Blackhole, FakeLLM, Reply

MODEL = "qwen3:latest"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeLLM) -> Iterator[FakeLLM]:
    server.reset()
    yield server
    assert server.wait_idle(), "a test left an answer in flight"


@pytest.fixture
def client(fake: FakeLLM) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as c:
        yield c


def chat(content: str = "hello", **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def ndjson(client: httpx.Client, path: str, body: dict) -> list[dict]:
    with client.stream("POST", path, json=body) as response:
        assert (response.status_code, response.headers["content-type"]) == (200, "application/x-ndjson")
        return [json.loads(line) for line in response.iter_lines() if line]


def sse_data(client: httpx.Client, body: dict) -> list[str]:
    """The ``data:`` payloads of an OpenAI-style stream, ``[DONE]`` included."""
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        text = response.read().decode()
    assert text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in text.split("\n\n") if event]


def test_ollama_chat_streams_thinking_then_content_and_a_done_line_with_counts(fake, client):
    fake.script(Reply(thinking=["Let me", " think"], text="Hello brave world"))
    *chunks, done = ndjson(client, "/api/chat", chat())
    assert [c["message"].get("thinking") for c in chunks[:2]] == ["Let me", " think"]
    assert [c["message"]["content"] for c in chunks] == ["", "", "Hello", " brave", " world"]
    assert all(c["done"] is False and c["message"]["role"] == "assistant" for c in chunks)
    assert (done["done"], done["done_reason"], done["eval_count"], done["prompt_eval_count"]) == (True, "stop", 5, 1)
    assert all(isinstance(done[key], int) and done[key] > 0
               for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"))
    cut = ndjson(client, "/api/chat", chat("[[tokens=10]]", think=False, options={"num_predict": 3}))
    assert "".join(c["message"]["content"] for c in cut) == "t0 t1 t2" and cut[-1]["done_reason"] == "length"


def test_ollama_whole_answers_generate_and_model_endpoints(fake, client):
    fake.script(Reply(thinking=["hm"], text="The whole answer"))
    whole = client.post("/api/chat", json=chat(stream=False)).json()
    assert whole["message"] == {"role": "assistant", "content": "The whole answer", "thinking": "hm"}
    generated = ndjson(client, "/api/generate", {"model": "qwen3", "prompt": "a prompt"})
    assert "".join(c["response"] for c in generated) == "You said: a prompt" and generated[-1]["done"] is True
    assert client.get("/api/version").json()["version"]
    assert [m["name"] for m in client.get("/api/tags").json()["models"]] == ["qwen3:latest", "llama3.2:latest"]
    assert [m["name"] for m in client.get("/api/ps").json()["models"]] == ["qwen3:latest"]  # loaded by answering
    missing = client.post("/api/chat", json=chat(model="nope"))
    assert (missing.status_code, missing.json()) == (404, {"error": 'model "nope" not found, try pulling it first'})
    assert fake.requests[0] == chat(stream=False)


def test_openai_stream_whole_answer_and_errors(fake, client):
    fake.script(Reply(thinking=["hm"], text="Hello brave world"))
    *events, usage, done = sse_data(client, chat(max_tokens=3, stream_options={"include_usage": True}))
    chunks = [json.loads(event)["choices"][0] for event in events]
    assert [c["delta"].get("reasoning_content") for c in chunks[:1]] == ["hm"]
    assert "".join(c["delta"].get("content", "") for c in chunks) == "Hello brave"
    assert [c["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert json.loads(usage)["usage"]["completion_tokens"] == 3 and done == "[DONE]"
    whole = client.post("/v1/chat/completions", json=chat()).json()
    assert (whole["choices"][0]["message"]["content"], whole["choices"][0]["finish_reason"]) == ("You said: hello",
                                                                                                 "stop")
    fake.script(Reply(status=503, error="busy"))
    refused = client.post("/v1/chat/completions", json=chat(stream=True))
    assert (refused.status_code, refused.json()) == (503, {"error": {"message": "busy", "type": "unavailable_error",
                                                                     "code": 503}})
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["qwen3:latest", "llama3.2:latest"]


def test_broken_lines_and_wrong_shapes_end_the_stream(fake, client):
    fake.script(Reply(text="one two three", malformed_after=2), Reply(text="one two", wrong_shape_after=1),
                Reply(text="one two", wrong_shape_after=1))
    with client.stream("POST", "/api/chat", json=chat()) as response:
        lines = list(response.iter_lines())
    assert [json.loads(line)["message"]["content"] for line in lines[:2]] == ["one", " two"]
    assert lines[2:] == ['{"broken']
    assert ndjson(client, "/api/chat", chat())[1] == {"message": "text"}
    assert json.loads(sse_data(client, chat())[1]) == {"choices": "x"}


def test_a_hang_ends_when_the_client_leaves_and_counts_as_cancelled(fake, client):
    fake.script(Reply(text="a b c d", hang_after=2))
    with client.stream("POST", "/api/chat", json=chat()) as response:
        lines = response.iter_lines()
        assert [json.loads(next(lines))["message"]["content"] for _ in range(2)] == ["a", " b"]
        assert fake.active == 1
    assert fake.wait_until(lambda: fake.cancelled == 1) and fake.wait_idle()


def test_a_released_hang_goes_on_and_a_disconnect_is_not_the_clients_doing(fake, client):
    fake.script(Reply(text="a b c", hang_after=1), Reply(text="a b c", disconnect_after=1))
    with client.stream("POST", "/api/chat", json=chat()) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["message"]["content"] == "a"
        assert fake.wait_until(lambda: fake.held == 1)  # the first chunk is out before the hang begins
        fake.release()
        assert "".join(json.loads(line)["message"]["content"] for line in lines) == " b c"
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/api/chat", json=chat()) as response:
            for line in response.iter_lines():
                received.append(json.loads(line))
    assert [c["message"]["content"] for c in received] == ["a"]
    assert fake.wait_idle() and fake.cancelled == 0


def test_slots_make_requests_wait_inside_the_server():
    with FakeLLM(slots=1) as fake:
        fake.set_default(Reply(text="x y z", hang_after=1))
        assert httpx.get(fake.url + "/props").json()["total_slots"] == 1
        answers = []

        def ask() -> None:
            answers.append(httpx.post(fake.url + "/api/chat", json=chat(stream=False), timeout=10).json())

        askers = [threading.Thread(target=ask) for _ in range(3)]
        for asker in askers:
            asker.start()
        assert fake.wait_until(lambda: (fake.active, fake.waiting) == (1, 2))
        for served in range(3):
            # held, not only active: a release before the answer reaches its hang would free nothing
            assert fake.wait_until(lambda: len(answers) == served and fake.held == 1)
            fake.release()
        for asker in askers:
            asker.join(10)
        assert [a["message"]["content"] for a in answers] == ["x y z"] * 3
        assert (fake.max_active, len(fake.requests)) == (1, 3)


def test_scripts_come_first_then_the_default_then_the_echo(fake, client):
    fake.script(Reply(text="first"))
    fake.set_default(Reply(text="default"))
    contents = [client.post("/api/chat", json=chat(stream=False)).json()["message"]["content"] for _ in range(3)]
    assert contents == ["first", "default", "default"]
    fake.set_default(None)
    assert client.post("/api/chat", json=chat("[[tokens=3]]", stream=False)).json()["message"]["content"] == "t0 t1 t2"


def raw_post(payload: dict) -> bytes:
    """A chat request as bytes, for a socket the test holds itself."""
    body = json.dumps(payload).encode()
    return (b"POST /api/chat HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def test_a_request_sent_before_a_reset_never_takes_the_next_tests_script(fake, client):
    """A worker killed in a test's teardown may have sent a request the server takes up only later (here: while
    its loop is held up); the next test's reset and script come meanwhile. That request gets the echo, is not
    among the next test's requests, and the script waits for the next test's own request."""
    fake._loop.call_soon_threadsafe(time.sleep, 0.5)  # the server is busy: the request waits in its socket
    with socket.create_connection((fake.host, fake.port)) as late:
        late.sendall(raw_post(chat("sent before the reset", stream=False)))
        fake.reset()
        fake.script(Reply(text="for this test"))
        late.settimeout(5)
        assert b"sent before the reset" in late.recv(65536)  # the echo
    assert fake.requests == []
    answer = client.post("/api/chat", json=chat("mine", stream=False)).json()
    assert answer["message"]["content"] == "for this test"
    assert [request["messages"][0]["content"] for request in fake.requests] == ["mine"]


def test_an_answer_of_before_a_reset_is_not_counted_after_it(fake, client):
    """The last test's answer may still stream (to a worker killed in its teardown) when the next test begins:
    it is not among this test's answers at once, nor its cancelled ones."""
    with socket.create_connection((fake.host, fake.port)) as old:
        old.sendall(raw_post(chat("[[tokens=200]][[delay=0.02]]", stream=True)))
        assert fake.wait_until(lambda: fake.active == 1)
        fake.reset()
        assert client.post("/api/chat", json=chat("mine", stream=False)).json()["message"]["content"]
    assert fake.wait_idle()
    assert (fake.max_active, fake.cancelled) == (1, 0)


def test_a_blackhole_times_out_on_connect():
    with Blackhole() as hole, pytest.raises(httpx.ConnectTimeout):
        httpx.get(hole.url, timeout=httpx.Timeout(5, connect=0.5))


def test_a_killed_fake_cuts_its_answers_mid_way_refuses_connections_and_comes_back_on_its_port():
    with FakeLLM(models=["m:latest"]) as fake:
        port, received = fake.port, []
        killer = threading.Thread(target=fake.kill)
        with httpx.Client(base_url=fake.url, timeout=5) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                with client.stream("POST", "/api/chat", json={**chat("[[tokens=50]][[delay=0.05]]"),
                                                              "model": "m"}) as response:
                    for line in response.iter_lines():
                        received.append(json.loads(line))
                        if len(received) == 2:
                            killer.start()
            killer.join(10)
            assert 2 <= len(received) < 50 and not any(chunk["done"] for chunk in received)
            with pytest.raises(httpx.ConnectError):
                client.get("/api/version")
        fake.start()
        assert fake.port == port and httpx.get(fake.url + "/api/version").status_code == 200


def test_a_prompt_may_ask_for_a_fault_or_an_error_status_and_a_line_can_be_too_deep_to_parse(fake, client):
    with client.stream("POST", "/api/chat", json=chat("[[tokens=3]] [[too_deep_after=1]]")) as response:
        first, deep = list(response.iter_lines())
    assert json.loads(first)["message"]["content"] == "t0" and deep == "[" * 100_000
    with pytest.raises(RecursionError):
        json.loads(deep)
    assert ndjson(client, "/api/chat", chat("x [[wrong_shape_after=0]]")) == [{"message": "text"}]
    refused = client.post("/api/chat", json=chat("x [[status=503]]"))
    assert (refused.status_code, refused.json()) == (503, {"error": "scripted error (HTTP 503)"})
