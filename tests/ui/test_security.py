"""The locked-down surface (ui/security.py, main.py's secret and embedded Redis, sessions in Redis) and bad input
with clear errors, against running apps: headers on every response, nothing left behind by visits, a private
Redis, a refused weak secret, 422/400 instead of 5xx, no internal address in what users see."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

import main
from devtools import sse
from devtools.fake_llm import Reply
from devtools.processes import ROOT, clean_environ
from devtools.stack import App
from tasks.redis_server import RedisServer
from devtools.waiting import wait_for
from tasks.settings import settings
from tests.ui.conftest import bearer, client, discovered, job

SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def assert_locked_down(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{where}: {name}"
    policy = response.headers.get("content-security-policy", "")
    for directive in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "form-action 'self'",
                      "img-src 'self' data: blob:"):
        assert directive in policy, f"{where}: CSP lacks {directive!r}"


def test_every_response_carries_the_security_headers(app, keys, fake_llm, r):
    key = keys("alice")
    with client(app) as anonymous, client(app, key) as alice:
        page = anonymous.get("/")
        assert page.status_code == 200
        asset = next(part.split('"')[0] for part in page.text.split('src="')[1:] if part.startswith("/_nicegui"))
        job_id = alice.post("/api/chat", json={"message": "hi"}).json()["job_id"]
        wait_for(lambda: job(r, job_id).get("status") == "completed", what="the answer")
        responses = [
            page, anonymous.get(asset), anonymous.get("/c/" + "0" * 32), anonymous.get("/no/such/page"),
            anonymous.get("/admin"), anonymous.get("/admin/login"), anonymous.get("/health"),
            anonymous.get("/metrics"), anonymous.get("/docs"), anonymous.get("/openapi.json"),
            anonymous.get("/api/queue/stats"), anonymous.get("/api/models"),
            anonymous.post("/api/chat", json={}), anonymous.post("/api/chat", content=b"x" * 3_000_000),
            anonymous.delete("/api/queue/stats"), anonymous.get("/api/jobs/" + "0" * 32),
            alice.get(f"/api/jobs/{job_id}"), alice.get(f"/stream/status/{job_id}"),
            anonymous.get("/v1/models", headers=bearer("qc_wrong")), alice.get("/v1/models"),
            alice.post("/v1/chat/completions", json={"model": "qwen3:latest", "messages": [
                {"role": "user", "content": "hi"}]}),
            alice.post("/ollama/api/chat", json={"model": "qwen3:latest", "messages": [
                {"role": "user", "content": "hi"}]}),
            alice.get("/ollama/api/tags"), alice.get("/ollama/api/version"),
        ]
    assert {response.status_code for response in responses} >= {200, 401, 404, 405, 413, 422}
    for response in responses:
        assert_locked_down(response)


def test_cookie_less_visits_leave_no_files_no_session_keys_and_no_redis_connections(app, r):
    data_dir = Path(app.env["DATA_DIR"])
    places = [data_dir, ROOT, ROOT / ".nicegui"]
    files_before = {p for place in places if place.exists() for p in place.glob("storage-*")}
    connections_before = len(r.client_list())
    for _ in range(20):
        assert httpx.get(app.url + "/").status_code == 200
    for _ in range(20):
        assert httpx.get(app.url + "/api/queue/stats").status_code == 200
    files_after = {p for place in places if place.exists() for p in place.glob("storage-*")}
    assert files_after == files_before and not list(data_dir.rglob("storage-user-*"))
    assert not r.keys("qc-session:*"), "a visit that changes nothing writes nothing"
    opened = len(r.client_list()) - connections_before
    assert opened < 10, f"{opened} Redis connections held after 40 cookie-less requests"


def test_the_storage_secret_is_random_per_install_and_only_its_owner_can_read_it(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "storage_secret", None)
    secrets = []
    for install in ("one", "two"):
        monkeypatch.setattr(settings, "data_dir", tmp_path / install)
        first = main.storage_secret()
        assert main.storage_secret() == first, "kept across restarts"
        path = tmp_path / install / "secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == first
        secrets.append(first)
    assert secrets[0] != secrets[1] and all(len(secret) >= 40 for secret in secrets)
    assert secrets[0] not in main.WEAK_SECRETS


def test_a_secret_file_others_can_read_or_cut_short_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "storage_secret", None)
    monkeypatch.setattr(settings, "data_dir", tmp_path)
    path = tmp_path / "secret"
    path.write_text("a-long-enough-secret-made-by-an-older-version-0123456789")
    path.chmod(0o644)
    assert main.storage_secret() == "a-long-enough-secret-made-by-an-older-version-0123456789"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "no longer readable by others"
    path.write_text("")  # a crash between creating the file and writing it
    secret = main.storage_secret()
    assert len(secret) >= 40 and path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("secret", ["queuechat-dev-secret", "changeme", "short"])
def test_a_guessable_secret_on_a_public_address_refuses_to_start(tmp_path, secret):
    env = {name: value for name, value in clean_environ().items() if name != "REDIS_URL"}
    env.update(HOST="0.0.0.0", STORAGE_SECRET=secret, DATA_DIR=str(tmp_path / "data"), PORT="0")
    done = subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "STORAGE_SECRET is too easy to guess for an app listening on 0.0.0.0" in done.stderr
    assert "16+ random characters" in done.stderr
    assert not (tmp_path / "data" / "redis").exists(), "it stopped before starting anything"


def test_the_embedded_redis_is_private_to_this_user(stack_env, tmp_path):
    env = {name: value for name, value in stack_env.items() if name != "REDIS_URL"}
    app = App({**env, "WORKER_PROCESSES": "1", "WORKER_THREADS": "2"}, tmp_path).start()
    try:
        wait_for(lambda: app.health().get("workers", 0) >= 1, timeout=30, what="main.py's worker")
        processes = app.descendants()
        server = next(p for p in processes if "redis-server" in p.name())
        assert not [c for c in server.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN], \
            "no TCP port"
        socket_path = RedisServer(Path(app.env["DATA_DIR"]) / "redis", private=True).socket_path
        assert socket_path.is_socket() and stat.S_IMODE(socket_path.stat().st_mode) & 0o077 == 0
        folder = socket_path.parent.stat()
        assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
        for process in [psutil.Process(app.pid), *processes]:
            command_line = " ".join(process.cmdline())
            assert "unix://" not in command_line and "redis://" not in command_line, command_line
            if process.pid != server.pid:  # redis-server's title names its socket, in a folder only we can enter
                assert str(socket_path) not in command_line, command_line
        workers = [p for p in processes if "dramatiq" in " ".join(p.cmdline())]
        assert workers and all(p.environ().get("REDIS_URL", "").startswith("unix://") for p in workers)
        redis_dir = Path(app.env["DATA_DIR"]) / "redis"
        assert stat.S_IMODE(redis_dir.stat().st_mode) == 0o700
        wait_for(lambda: list(redis_dir.rglob("*.aof")), what="the append-only file")
        for path in redis_dir.rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            if path.is_dir():
                assert mode == 0o700, path
            elif not path.is_socket():
                assert mode == 0o600, f"{path}: {oct(mode)}"
        assert stat.S_IMODE((Path(app.env["DATA_DIR"]) / "secret").stat().st_mode) == 0o600
    finally:
        app.stop()


# --- bad input, clear errors -------------------------------------------------------------------------------------

SURROGATE = "\\ud800"  # JSON's escape for a lone surrogate: valid JSON, not valid text


@pytest.mark.parametrize("path, body", [
    ("/api/chat", '{"message": "hi %s there"}'),
    ("/api/chat", '{"message": "hi", "model": "q%s"}'),
    ("/v1/chat/completions", '{"model": "qwen3:latest", "messages": [{"role": "user", "content": "a%sb"}]}'),
    ("/v1/chat/completions", '{"model": "qwen3:latest", "messages": [{"role": "system", "content": "%s"}, '
                             '{"role": "user", "content": "hi"}]}'),
    ("/v1/chat/completions", '{"model": "q%s", "messages": [{"role": "user", "content": "hi"}]}'),
    ("/ollama/api/chat", '{"model": "qwen3:latest", "messages": [{"role": "user", "content": "%s"}]}'),
    ("/ollama/api/chat", '{"model": "qwen3:latest", "messages": [{"role": "assistant", "content": "%s"}, '
                         '{"role": "user", "content": "hi"}]}'),
    ("/ollama/api/generate", '{"model": "qwen3:latest", "prompt": "hi", "system": "%s"}'),
])
def test_a_lone_surrogate_is_a_readable_422(app, r, path, body):
    response = httpx.post(app.url + path, content=(body % SURROGATE).encode(),
                          headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail" if path.startswith("/api") else "error"]
    detail = detail["message"] if isinstance(detail, dict) else detail
    assert "not valid text" in detail or "unable to parse raw data as a unicode string" in detail, detail
    assert not r.keys("qc:job:*")


def test_last_event_id_is_checked_and_one_from_the_future_still_ends_with_done(app, r):
    with client(app) as caller:
        job_id = caller.post("/api/chat", json={"message": "hello"}).json()["job_id"]
        wait_for(lambda: job(r, job_id).get("status") == "completed", what="the answer")
        for bad in ("abc", "1-2-3", "-1-0", "1700000000000", "99999999999999999999-0", "1-18446744073709551616"):
            refused = caller.get(f"/stream/status/{job_id}", headers={"Last-Event-ID": bad})
            assert refused.status_code == 400 and refused.json()["code"] == "bad_event_id"
            assert "Last-Event-ID must be an event id" in refused.json()["detail"]
        for future in ("9999999999999-0", "18446744073709551615-18446744073709551615"):
            events = list(sse.events(caller, f"/stream/status/{job_id}", last_event_id=future))
            assert events and events[-1].event == "done", future
            assert events[-1].data["status"] == "completed" and events[-1].data["answer"] == "You said: hello"
            assert not [e for e in events if e.event == "token"], "nothing after the future is replayed"


def test_job_errors_never_show_the_llm_servers_address(app, module_workers, keys, fake_llm, r):
    address = fake_llm.url.removeprefix("http://")
    fake_llm.script(Reply(status=400, error=f'invalid request to http://{address}/api/chat from 10.0.0.3'),
                    *[Reply(status=502, error=f'Post "http://{address}/completion": dial tcp {address}: EOF')] * 4)
    with client(app, keys("alice")) as alice:
        jobs = [alice.post("/api/chat", json={"message": f"fail {i}"}).json()["job_id"] for i in range(2)]
        for job_id in jobs:
            body = wait_for(lambda: (b := alice.get(f"/api/jobs/{job_id}").json())["status"] == "failed" and b,
                            timeout=30, what="the job to fail")
            events = list(sse.events(alice, f"/stream/status/{job_id}"))
            shown = json.dumps([body, [e.data for e in events]])
            assert body["error"] and address not in shown and fake_llm.url not in shown, body["error"]
            assert "10.0.0.3" not in shown
        fake_llm.script(Reply(status=400, error=f"no route to {address}"))
        door = alice.post("/v1/chat/completions", json={"model": "qwen3:latest", "messages": [
            {"role": "user", "content": "fail again"}]})
        assert door.status_code >= 400 and address not in door.text and door.json()["error"]["message"]
    assert f'said: Post "http://{address}/completion"' in module_workers.output(), "the log keeps the details"


def test_the_models_list_does_not_ask_the_llm_server_per_request(app, keys, fake_llm, r):
    key = keys("alice")
    discovered(app, r, fake_llm)
    before = fake_llm.hits["/api/tags"]
    with client(app, key) as alice:
        for _ in range(20):
            assert alice.get("/api/models").json()["models"] == ["llama3.2:latest", "qwen3:latest"]
            assert alice.get("/v1/models").status_code == 200
            assert alice.get("/ollama/api/tags").status_code == 200
    assert fake_llm.hits["/api/tags"] - before <= 1, "60 model lists, at most one periodic check"


def test_session_cookies_are_http_only_and_carry_nothing_but_a_random_id(app):
    response = httpx.get(app.url + "/")
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    value = response.cookies["session"]
    payload = json.loads(base64.b64decode(value.split(".")[0] + "=="))
    assert list(payload) == ["id"] and len(payload["id"]) >= 32
