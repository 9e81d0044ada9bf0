"""Server-Sent Events as the app sends them on ``/stream/status/{id}``, read with httpx-sse.

Each event is ``(id, event, data)`` with ``data`` parsed from JSON. ``id`` follows the SSE rules: an event
without an id field carries the last id seen, which is what a client resumes from (``Last-Event-ID``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
from httpx_sse import connect_sse


class Event(NamedTuple):
    id: str | None
    event: str
    data: Any


def events(client: httpx.Client, url: str, *, last_event_id: str | None = None,
           timeout: float | httpx.Timeout = 30) -> Iterator[Event]:
    """The events of one response as they arrive, until the server ends it. Stop early by leaving the loop
    (the connection closes with the generator); a response that is not an event stream raises SSEError."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with connect_sse(client, "GET", url, headers=headers, timeout=timeout) as source:
        for sse in source.iter_sse():
            yield Event(sse.id or None, sse.event, json.loads(sse.data) if sse.data else None)
