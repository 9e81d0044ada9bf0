"""Browser sessions' storage (NiceGUI's ``app.storage.user``: language, priority, model, admin sign-in) in Redis,
on the app's one connection pool.

NiceGUI's own Redis storage gives every session a Redis client, a pub/sub subscription and a listener task, made
at the first request of each browser — and a request without a cookie is a new browser: every API call, every
``/health`` probe, every cookie-less ``GET /`` held a Redis connection for 10 s to a minute (a flood of them
exhausts Redis for everyone, workers included), and every open page two more for its tab storage. Here a
session's storage is read once, with the shared pool, and written only when it changes (deleted when emptied):
nothing is held between requests, and a visit that changes nothing writes nothing. Tab storage, which the app does
not use, stays in memory. What this gives up: a change is not pushed live to pages of the same browser on
another app instance; they read it at their next page load.

:func:`install` hooks NiceGUI's storage factory (``Storage._create_persistent_dict``, the one place where it makes
a user's storage); ``tests/ui/test_security.py`` notices if a NiceGUI upgrade bypasses it.
"""

from __future__ import annotations

import json
import logging

from nicegui import background_tasks
from nicegui.persistence import PersistentDict
from nicegui.storage import USER_PREFIX, Storage
from redis.exceptions import RedisError

from tasks.connection import get_async_redis, get_redis

log = logging.getLogger('queuechat.ui.sessions')

KEY_PREFIX = 'qc-session:'


class SessionStorage(PersistentDict):
    """One browser's storage: the JSON object at ``qc-session:user-{session id}``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._loading = False
        super().__init__(data={}, on_change=self._changed)

    async def initialize(self) -> None:
        try:
            self._load(await get_async_redis().get(self.key))
        except RedisError as error:  # the page still works, with defaults; /health tells what is wrong
            log.warning('session %s not loaded: %s', self.key, error)

    def initialize_sync(self) -> None:
        try:
            self._load(get_redis().get(self.key))
        except RedisError as error:
            log.warning('session %s not loaded: %s', self.key, error)

    def _load(self, raw: str | None) -> None:
        if raw:
            self._loading = True
            try:
                self.update(json.loads(raw))
            finally:
                self._loading = False

    def _changed(self) -> None:
        if not self._loading:
            background_tasks.create_lazy_or_defer(self._save(), name=f'save-{self.key}')

    async def _save(self) -> None:
        try:
            if self:
                await get_async_redis().set(self.key, json.dumps(self))
            else:
                await get_async_redis().delete(self.key)
        except RedisError as error:
            log.warning('session %s not saved: %s', self.key, error)


def install() -> None:
    """Make NiceGUI keep every browser's user storage in a :class:`SessionStorage` (call before ``ui.run``)."""
    make = Storage._create_persistent_dict  # noqa: SLF001 - NiceGUI's only hook for where user storage lives

    def create(id: str) -> PersistentDict:  # noqa: A002 - NiceGUI's name
        return SessionStorage(KEY_PREFIX + id) if id.startswith(USER_PREFIX) else make(id)

    Storage._create_persistent_dict = staticmethod(create)  # noqa: SLF001
