"""The embedded Redis: AOF persistence, clean stop, and a second start on the same data refused clearly."""

import subprocess
import sys
import time

import httpx
import pytest
import redis

from devtools.processes import ROOT, clean_environ
from devtools.stack import App
from tasks.redis_server import RedisServer, RedisServerError

pytestmark = pytest.mark.redis  # each test starts a Redis of its own


def test_data_survives_a_restart_and_a_second_server_on_the_same_folder_is_refused(tmp_path):
    first = RedisServer(tmp_path).start()
    try:
        redis.Redis(port=first.port).set("kept", "yes")
        with pytest.raises(RedisServerError, match="already uses"):
            RedisServer(tmp_path).start()
    finally:
        first.stop()
    assert first.process.poll() is not None
    again = RedisServer(tmp_path).start()
    try:
        assert redis.Redis(port=again.port).get("kept") == b"yes"
    finally:
        again.stop()


def test_a_second_main_py_on_the_same_data_dir_exits_with_a_clear_message(tmp_path):
    running = RedisServer(tmp_path / "redis").start()
    try:
        env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "PORT": "0"}
        done = subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode != 0
        assert "Another queuechat Redis" in done.stderr and "REDIS_URL" in done.stderr
        assert redis.Redis(port=running.port).ping()  # the first one is untouched
    finally:
        running.stop()


@pytest.mark.workers
def test_main_py_with_its_embedded_redis_stops_on_ctrl_c_at_once_without_a_traceback(tmp_path):
    # NiceGUI closes its sessions' Redis connections in a shutdown handler of its own: Redis must outlive it; and
    # a worker must get one SIGTERM (a second makes it exit in its signal handler, and it then hung until killed).
    env = clean_environ(REDIS_URL="", OLLAMA_HOST="http://127.0.0.1:9", WORKER_PROCESSES="1",
                        NICEGUI_STORAGE_PATH=str(tmp_path / "sessions"), API_RATE_PER_MIN="60")
    app = App(env, tmp_path).start()
    try:
        httpx.get(app.url + "/", timeout=10).raise_for_status()  # a browser session, kept in Redis
        assert app.health()["redis"]
        # the request budget is counted in the embedded Redis too, over its unix socket (limits' asyncio storage)
        accepted = httpx.post(app.url + "/api/chat", json={"message": "hello"}, timeout=10)
        assert accepted.status_code == 202, accepted.text
    finally:
        asked = time.monotonic()
        app.stop()
    assert app.process.returncode in (0, 130), app.log_tail()  # not killed after the 15 s stop() allows
    assert time.monotonic() - asked < 12, app.log_tail()
    assert "Traceback" not in app.output() and " ERROR " not in app.output(), app.log_tail()
