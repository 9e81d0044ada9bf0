"""The TCP proxy between a client and Redis: a pause is a silent partition, a drop resets every connection."""

from __future__ import annotations

import contextlib
import socket

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.proxy import Proxy


def test_a_pause_is_silent_until_resumed_and_a_drop_resets_the_connections(redis_server):
    with Proxy(("127.0.0.1", redis_server.port)) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        assert client.ping() and proxy.connections == 1
        proxy.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.resume()
        assert client.ping()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as raw:
            raw.sendall(b"PING\r\n")
            assert raw.recv(100) == b"+PONG\r\n"
            proxy.drop()
            assert proxy.connections == 0
            with contextlib.suppress(ConnectionResetError):
                assert raw.recv(100) == b""  # closed under it
        assert client.ping()  # a new connection goes through
