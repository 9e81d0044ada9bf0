"""Who is asking: one function per kind of caller, resolving an :class:`~tasks.identities.Identity` once per request
or page; everything below receives it and passes its ``id`` to the job store.

* An API call: ``Authorization: Bearer qc_…`` (an API key); else, from a trusted proxy, the signed-in user named
  by AUTH_TRUSTED_HEADER; else an anonymous caller — only when API_ANONYMOUS allows it (by default from this
  machine only), each client address its own identity. No header lets a caller become someone else: keys are
  checked, and the proxy header and X-Forwarded-For are believed from TRUSTED_PROXIES only.
* A page: the browser's session (NiceGUI's signed session cookie, a random id per browser), or the proxy's user.
"""

from __future__ import annotations

import ipaddress

from fastapi import Request
from starlette.requests import HTTPConnection

from tasks.identities import Identity, find_key
from tasks.settings import settings
from tasks.store import JobError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def for_api(request: HTTPConnection) -> Identity:
    """The identity of an API request, or a 401 JobError saying what to send."""
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        key = await find_key(token.strip()) if scheme.lower() == "bearer" else None
        if key is None:
            raise JobError("bad_api_key", "This API key is not valid (unknown, revoked or mistyped).", status=401)
        return key.identity()
    proxied = proxy_user(request)
    if proxied:
        return proxied
    address = client_address(request)
    if settings.api_anonymous == "always" or (settings.api_anonymous == "loopback" and is_loopback(address)):
        return Identity("anonymous", "a:" + address, address, max_priority=settings.ui_max_priority)
    raise JobError("api_key_required", "An API key is required: send 'Authorization: Bearer <key>' "
                   "(an administrator makes one with `uv run main.py keys create NAME`).", status=401)


def for_browser(request: Request, session_id: str) -> Identity:
    """The identity of a page: the proxy's signed-in user, else this browser's session."""
    return proxy_user(request) or Identity("browser", "b:" + session_id, "browser",
                                           max_priority=settings.ui_max_priority)


def proxy_user(request: HTTPConnection) -> Identity | None:
    """The user a trusted reverse proxy says is signed in (AUTH_TRUSTED_HEADER), if any."""
    header = settings.auth_trusted_header
    if not header or not trusted(peer(request)):
        return None
    name = request.headers.get(header, "").strip()
    if not name or len(name) > 200:
        return None
    return Identity("proxy", "p:" + name, name, max_priority=settings.ui_max_priority, admin=name in settings.admins)


def client_address(request: HTTPConnection) -> str:
    """The caller's address: the peer, or — when the peer is a trusted proxy — the last untrusted address of
    X-Forwarded-For (main.py tells uvicorn to believe nobody, so that this is the one place that decides)."""
    address = peer(request)
    if trusted(address):
        for hop in reversed(request.headers.get("x-forwarded-for", "").split(",")):
            hop = hop.strip()
            if hop and not trusted(hop):
                return hop
    return address


def peer(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"


def trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in settings.proxies:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address in LOOPBACK
