"""Whose are Redis' connections: ``CLIENT LIST`` matched with the local sockets of processes (TCP on loopback).

A total alone can't tell the app's connections from the workers' (whose pools grow with the jobs they run at once):
a benchmark that asks "does the app hold a connection per SSE client, and let them go?" needs the app's share.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter

import psutil
import redis

from devtools.figures import tree


def owners(client: redis.Redis, groups: dict[str, int]) -> Counter[str]:
    """Redis' connections counted per group (name -> the root pid of a process tree); the rest as 'other'."""
    pids = {pid: name for name, root in groups.items() for pid in (p.pid for p in tree(root))}
    pids[os.getpid()] = "this process"
    redis_port = client.connection_pool.connection_kwargs.get("port")
    by_port: dict[int, int] = {}
    for connection in psutil.net_connections(kind="tcp"):
        with contextlib.suppress(AttributeError, TypeError):
            if connection.raddr and connection.raddr.port == redis_port and connection.pid:
                by_port[connection.laddr.port] = connection.pid
    counts: Counter[str] = Counter()
    for entry in client.client_list():
        port = int(str(entry.get("addr", ":0")).rsplit(":", 1)[-1] or 0)
        counts[pids.get(by_port.get(port, -1), "other")] += 1
    return counts
