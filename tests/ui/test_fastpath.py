"""The API's short way: its routes skip the page middlewares (BaseHTTPMiddleware) and keep everything else."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware.base import BaseHTTPMiddleware

from ui import fastpath
from ui.security import SecurityHeaders


class Boom(Exception):
    pass


def app_with_both_kinds() -> FastAPI:
    app = FastAPI()

    @app.get("/api/thing")
    def thing() -> dict:
        return {"ok": True}

    @app.get("/api/boom")
    def boom() -> dict:
        raise Boom()

    @app.get("/stream/lines")
    def lines() -> StreamingResponse:
        return StreamingResponse(iter(["a\n", "b\n"]), media_type="text/plain")

    @app.get("/page")
    def page() -> dict:
        return {"page": True}

    async def page_middleware(request: Request, call_next):
        response = await call_next(request)
        response.headers["x-page-middleware"] = "1"
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=page_middleware)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(Boom, lambda request, error: JSONResponse({"error": "boom"}, status_code=418))
    fastpath.install(app, prefixes=("/api/", "/stream/"))
    return app


def test_api_routes_skip_the_page_middlewares_and_keep_the_rest() -> None:
    async def test() -> None:
        transport = httpx.ASGITransport(app=app_with_both_kinds())
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            api, page = await client.get("/api/thing"), await client.get("/page")
            assert api.json() == {"ok": True} and "x-page-middleware" not in api.headers
            assert page.json() == {"page": True} and page.headers["x-page-middleware"] == "1"
            for response in (api, page):
                assert response.headers["x-frame-options"] == "DENY"  # a pure ASGI middleware: on both
            boom = await client.get("/api/boom")
            assert boom.status_code == 418 and boom.json() == {"error": "boom"}  # the app's error handlers
            lines = await client.get("/stream/lines")
            assert lines.text == "a\nb\n" and "x-page-middleware" not in lines.headers
    asyncio.run(test())
