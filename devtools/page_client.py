"""One live NiceGUI page without a browser: NiceGUI's own socket.io protocol, spoken by ``python-socketio``.

Why: a Chromium page costs seconds of a core to come up and hundreds of MB; the server's side of a page is the
same whoever holds the socket. This does what ``nicegui/static/nicegui.js`` does, and no more:

1. ``GET`` the page like a browser (cookies kept: the session cookie makes the page's identity), and read the
   ``createApp(parseElements(...), {query: ...})`` call of the HTML: the page's elements and the socket query
   (``client_id``, ``next_message_id``, ``implicit_handshake``);
2. connect to ``/_nicegui_ws/socket.io`` over a websocket with that query plus a ``document_id`` and ``tab_id``
   (the implicit handshake: the server accepts the page on connect, no ``handshake`` event);
3. apply every ``update`` message to its copy of the elements, as the Vue app does (``None`` deletes one), skip
   the replays of messages seen (``_id``), and ``ack`` the messages received, as the page does every 3 s;
4. reconnect when dropped, as socket.io's JS client does (counted in ``reconnects``).

:meth:`PageClient.emit_event` sends an element's event as the browser would (e.g. the metrics drawer's
``update:modelValue`` that Quasar's ``show-if-above`` sends on a wide screen).
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import uuid

import aiohttp
import socketio

_APP = re.compile(r"createApp\(parseElements\(String\.raw`(.*?)`\),\s*\{(.*?)\n\s*\}\);", re.S)
_QUERY = re.compile(r"query:\s*(\{.*?\}),\n")
_TAG = re.compile(r"<[^>]*>")
_ENTITIES = (("&#36;", "$"), ("&#96;", "`"), ("&gt;", ">"), ("&lt;", "<"), ("&amp;", "&"))


def browser_session() -> aiohttp.ClientSession:
    """An HTTP session that keeps cookies as a browser does, also from a numeric host like 127.0.0.1 (aiohttp's
    default jar drops those): one per simulated browser."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def parse_page(html: str) -> tuple[dict, dict]:
    """(elements by id, socket query) of a NiceGUI page's HTML, decoded as ``parseElements`` does."""
    found = _APP.search(html)
    if not found:
        raise ValueError("not a NiceGUI page: no createApp(parseElements(...)) call")
    raw = found.group(1)
    for entity, char in _ENTITIES:
        raw = raw.replace(entity, char)
    query = _QUERY.search(found.group(2))
    if not query:
        raise ValueError("the page's createApp options have no socket query")
    return json.loads(raw), ast.literal_eval(query.group(1))  # the template prints a Python dict


def find(elements: dict, testid: str) -> list[str]:
    """Ids of the elements whose ``data-testid`` prop is ``testid``."""
    return [eid for eid, element in elements.items()
            if element and (element.get("props") or {}).get("data-testid") == testid]


def text_below(elements: dict, eid: str) -> str:
    """The text of an element and everything below it (by ``children``), as the page shows it."""
    element = elements.get(eid) or {}
    props = element.get("props") or {}
    markup = str(props.get("innerHTML") or "") + str(props.get("content") or "")
    own = (element.get("text") or "") + _TAG.sub("", markup)
    return own + "".join(text_below(elements, str(child)) for child in element.get("children") or [])


class PageClient:
    """``async with PageClient(session, url) as page: ...`` — one page open on ``url`` until the block ends."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.base = url.split("/", 3)[:3]
        self.elements: dict = {}
        self.updates = 0           # update messages received
        self.messages = 0          # every server message of NiceGUI's protocol
        self.next_message_id = 0
        self.client_id = ""
        self.reloads = 0
        # Reconnecting as socket.io's JS client does: NiceGUI answers pings for 2 s only (ping_timeout =
        # 0.4 × reconnect_timeout), and a page that missed one is dropped; the server replays what it missed.
        self.sio = socketio.AsyncClient(http_session=session, reconnection=True, reconnection_delay=0.5,
                                        ssl_verify=False)
        self.sio.on("*", self._on_message)
        self.sio.on("connect", self._on_connect)
        self.connects = 0

    async def open(self, attempts: int = 3) -> PageClient:
        """Load the page and connect; a refused handshake (the server dropped the page before its socket came, as
        it does under load) loads the page again, as nicegui.js reloads it. ``reloads`` counts those."""
        for attempt in range(attempts):
            try:
                return await self._open()
            except socketio.exceptions.ConnectionError:
                if attempt == attempts - 1:
                    raise
                self.reloads += 1
        return self

    async def _open(self) -> PageClient:
        async with self.session.get(self.url) as response:
            response.raise_for_status()
            html = await response.text()
        self.elements, query = parse_page(html)
        self.client_id = query["client_id"]
        self.next_message_id = int(query.get("next_message_id") or 0)
        query = {**query, "document_id": str(uuid.uuid4()), "tab_id": str(uuid.uuid4())}
        params = "&".join(f"{name}={str(value).lower() if isinstance(value, bool) else value}"
                          for name, value in query.items())
        await self.sio.connect(f"{'/'.join(self.base)}?{params}", transports=["websocket"],
                               socketio_path="/_nicegui_ws/socket.io", wait_timeout=30)
        return self

    async def _on_connect(self) -> None:
        self.connects += 1

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    async def _on_message(self, event: str, *args) -> None:
        self.messages += 1
        message = args[0] if args else None
        if isinstance(message, dict) and "_id" in message:
            if message["_id"] < self.next_message_id:
                return  # a replay the page has seen already, as nicegui.js skips it
            self.next_message_id = message.pop("_id") + 1
        if event == "update" and isinstance(message, dict):
            self.updates += 1
            for eid, element in message.items():
                if element is None:
                    self.elements.pop(eid, None)
                else:
                    self.elements[eid] = element

    async def emit_event(self, testid: str, event_type: str, *args) -> bool:
        """Send ``event_type`` of the element with ``data-testid`` ``testid`` (its first listener); False when the
        page has no such element or listener."""
        for eid in find(self.elements, testid):
            for listener in self.elements[eid].get("events") or []:
                if listener.get("type") == event_type and self.sio.connected:
                    with contextlib.suppress(socketio.exceptions.BadNamespaceError):  # dropped meanwhile
                        await self.sio.emit("event", {
                            "id": int(eid), "client_id": self.client_id, "listener_id": listener["listener_id"],
                            "args": [json.dumps(arg) for arg in args]})  # each argument JSON, as nicegui.js sends
                    return True
        return False

    async def ack(self) -> None:
        if self.sio.connected:
            with contextlib.suppress(socketio.exceptions.BadNamespaceError):  # dropped meanwhile: nothing to ack
                await self.sio.emit("ack", {"client_id": self.client_id, "next_message_id": self.next_message_id})

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()

    async def __aenter__(self) -> PageClient:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
