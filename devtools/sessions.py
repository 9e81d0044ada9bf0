"""Who a page is: the browser session id inside the app's session cookie, read as the app reads it.

Starlette's session cookie is ``base64(JSON).timestamp.signature``; the JSON holds NiceGUI's session ``id``, and a
page's identity is ``b:<id>`` (``ui/identity.py``). A benchmark or test that needs jobs owned by a page's user
(to open that page on a conversation that streams) reads it here; it forges nothing, the signature is left alone.
"""

from __future__ import annotations

import base64
import json

COOKIE = "session"


def session_id(cookie_value: str) -> str:
    """The NiceGUI session id in a signed session cookie's value."""
    payload = cookie_value.strip('"').split(".", 1)[0]
    return json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))["id"]


def browser_user(cookie_value: str) -> str:
    """The owner id of the jobs that a page with this session cookie submits and may see."""
    return "b:" + session_id(cookie_value)
