"""Headers on every response that keep the page the app's own: what it may load, run, be framed by and send.

NiceGUI renders with Vue's in-browser template compiler and a few inline start-up scripts, so scripts need
'unsafe-inline' and 'unsafe-eval'; everything is loaded from the app itself. Model output is rendered as
markdown with raw HTML shown as text (ui/chat), and on top of that images may come only from the app or
``data:``, forms may post only to the app, and no other site may frame it.
"""

from __future__ import annotations

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self' ws: wss:",
    "media-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (a handler's own values win)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(n, v) for n, v in HEADERS if n not in present]]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
