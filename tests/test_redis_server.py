"""The embedded Redis: AOF persistence, clean stop, and a second start on the same data refused clearly."""

import subprocess
import sys

import pytest
import redis

from tasks.redis_server import RedisServer, RedisServerError
from tests.conftest import ROOT


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
