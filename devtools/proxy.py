"""A TCP proxy that cuts a link the ways a network does: silently, or outright.

``with Proxy(("127.0.0.1", redis_port)) as proxy:`` — clients connect to ``proxy.port`` instead. :meth:`pause`
is a partition: every connection stays open and nothing more is forwarded, either way, so a client notices only
through its own timeouts; :meth:`resume` heals it (what was sent meanwhile arrives then, as TCP would deliver
it). :meth:`drop` resets every open connection at once. ``delay`` makes it a slow link: every byte arrives that
many seconds late, either way, in order (a Redis across a network). The proxy runs an asyncio loop in a thread of
its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Proxy:
    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0, delay: float = 0.0) -> None:
        self.target, self.host, self.port, self.delay = target, host, port, delay
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy", daemon=True)
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    def start(self) -> Proxy:
        self.thread.start()
        self.server = self._call(self._serve)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self) -> asyncio.Server:
        self.flowing = asyncio.Event()
        self.flowing.set()
        return await asyncio.start_server(self._connect, self.host, self.port)

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self._drop()
            pipes = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

        self._call(close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        return len(self.pairs)

    def pause(self) -> None:
        self._call(self._set_flowing, False)

    def resume(self) -> None:
        self._call(self._set_flowing, True)

    def drop(self) -> None:
        self._call(self._drop)

    async def _set_flowing(self, flowing: bool) -> None:
        self.flowing.set() if flowing else self.flowing.clear()

    async def _drop(self) -> None:
        for client, server in list(self.pairs):
            client.transport.abort()
            server.transport.abort()
        self.pairs.clear()

    def _call(self, function: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run ``function`` in the proxy's loop and wait for it: once this returns, it has taken effect."""
        return asyncio.run_coroutine_threadsafe(function(*args), self.loop).result(10)

    async def _connect(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # at stop; asyncio 3.11 would log it as an error
            await self._forward(client_reader, client)

    async def _forward(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        await self.flowing.wait()  # a connection made during a partition reaches the server once it heals
        try:
            server_reader, server = await asyncio.open_connection(*self.target)
        except OSError:
            client.transport.abort()
            return
        pair = (client, server)
        self.pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(client_reader, server), self._pipe(server_reader, client))
        finally:
            self.pairs.discard(pair)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction until either side closes (each piece ``delay`` late); then close the other side."""
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while data := (item := await late.get())[1]:
                await asyncio.sleep(item[0] - time.monotonic())
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                late.put_nowait((time.monotonic() + self.delay, data))
        late.put_nowait((0.0, b""))
        with contextlib.suppress(OSError):
            await sender
        writer.transport.abort()
