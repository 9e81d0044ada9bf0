"""The API's short way through the app: its requests skip the middlewares NiceGUI adds for its pages.

NiceGUI wraps every request in three ``BaseHTTPMiddleware`` (a redirect under a path prefix, cache headers for
its static files, the request tracking that ``app.storage.user`` needs). Each runs the rest of the request in a
task of its own and hands every chunk of the body on through a memory stream: for each SSE token or door line
three more task switches, and a few milliseconds on every submit (docs/benchmarks.md, a and f). The API and the
doors read no page storage, so their routes get the app's stack without those three: Starlette's error
middleware, the pure ASGI middlewares (sessions, gzip, security headers, body size), FastAPI's exception
handlers, the router. Pages, NiceGUI's own routes and the docs keep the whole stack.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

PREFIXES = ("/api/", "/stream/", "/v1/", "/ollama/", "/health", "/metrics")


def install(app: FastAPI, prefixes: tuple[str, ...] = PREFIXES) -> None:
    """From now on ``app`` builds two middleware stacks and sends each request to one by its path."""
    build = app.build_middleware_stack

    def build_both() -> ASGIApp:
        whole = build()
        every = app.user_middleware
        app.user_middleware = [m for m in every if not _page_only(m.cls)]
        try:
            short = build()
        finally:
            app.user_middleware = every

        async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"].startswith(prefixes):
                await short(scope, receive, send)
            else:
                await whole(scope, receive, send)
        return dispatch

    app.build_middleware_stack = build_both


def _page_only(cls: object) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware)
