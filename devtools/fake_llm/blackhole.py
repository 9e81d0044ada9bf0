"""An address where connecting times out, like an LLM host behind a firewall that drops packets.

A listening socket that never accepts, with a backlog of one that is already taken: the kernel then drops
every new SYN, so a client's connect neither succeeds nor is refused — it times out (``httpx.ConnectTimeout``),
which "connection refused" on a closed port never shows.
"""

from __future__ import annotations

import select
import socket


class Blackhole:
    """``with Blackhole() as hole: … OLLAMA_HOST=hole.url …``"""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        while self._fill_one():
            pass

    def _fill_one(self) -> bool:
        """Connect once more; False once a connect no longer completes (the backlog is full)."""
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        _, writable, _ = select.select([], [sock], [], 0.2)
        if writable and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            self.fillers.append(sock)
            return True
        sock.close()
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for sock in [*self.fillers, self.listener]:
            sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
