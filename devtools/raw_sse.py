"""A Server-Sent Events client on a bare asyncio socket, for a thousand at once in one process.

Why not httpx (``devtools/sse.py``): a thousand httpx streams cost this process more CPU than the server being
measured, on a 2-core machine. This speaks just enough HTTP/1.1 for the app's SSE responses: one GET, the status
line and headers, a chunked body, events split on blank lines.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self):
        return json.loads(self.data) if self.data else None


@dataclass
class SseResult:
    """What one client saw."""

    status: int = 0
    events: list[SseEvent] = field(default_factory=list)
    error: str = ""


def parse_events(text: str) -> tuple[list[SseEvent], str]:
    """The complete events in ``text`` (an SSE body so far) and the incomplete rest."""
    text = text.replace("\r\n", "\n")
    *blocks, rest = text.split("\n\n")
    events = []
    for block in blocks:
        event, data, seen = SseEvent(), [], False
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event.event, seen = value, True
            elif name == "data":
                data.append(value)
                seen = True
            elif name == "id":
                event.id = value
        if seen:  # a comment (": ping") is no event
            event.data = "\n".join(data)
            events.append(event)
    return events, rest


async def read_chunked(reader: asyncio.StreamReader):
    """The pieces of a chunked HTTP body as they arrive."""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        piece = await reader.readexactly(size)
        await reader.readexactly(2)
        yield piece


async def follow(host: str, port: int, path: str, headers: dict[str, str], connected: asyncio.Event | None = None,
                 until: str = "done", result: SseResult | None = None) -> SseResult:
    """GET ``path`` and collect its events into ``result`` (so that a client cancelled midway shows what it got)
    until one named ``until`` (or the end of the body)."""
    result = result if result is not None else SseResult()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream",
                 *(f"{name}: {value}" for name, value in headers.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        result.status = int((await reader.readline()).split()[1])
        head = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            head[name.strip().lower()] = value.strip()
        if connected is not None:
            connected.set()
        if result.status != 200 or "chunked" not in head.get("transfer-encoding", ""):
            result.error = f"HTTP {result.status}, {head.get('transfer-encoding', 'not chunked')}"
            return result
        buffer = ""
        async for piece in read_chunked(reader):
            events, buffer = parse_events(buffer + piece.decode())
            result.events += events
            if any(event.event == until for event in events):
                return result
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        writer.close()
    return result
