"""The admin board, ``/admin``: every waiting and running job (whose, which priority and model, how long, where
in line, which attempt — never what was asked), cancel any, move a waiting one to another priority, hold or
resume admission, and each identity's use of the last 24 hours. Live, in both languages.

Who may see it: a user a trusted proxy names and ADMIN_USERS lists, or a browser signed in at ``/admin/login``
with an admin API key (``uv run main.py keys create NAME --admin``). Everyone else gets 404, as if there were
no such page.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import HTTPException
from nicegui import app, ui
from nicegui.context import context
from redis.exceptions import RedisError

import i18n
from tasks import identities
from tasks.identities import Identity
from tasks.queue import PRIORITY_LEVELS
from tasks.store import async_store
from ui import bus, design, identity

log = logging.getLogger('queuechat.ui.admin')

REFRESH_SECONDS = 2.0


def create() -> None:
    """Register ``/admin`` and ``/admin/login`` (call once, before ``ui.run``)."""
    ui.page('/admin')(board_page)
    ui.page('/admin/login')(login_page)


def admin_of_this_page() -> Identity | None:
    """The admin this browser is, or None: a proxy user in ADMIN_USERS, or a browser signed in with an admin key."""
    request = context.client.request
    proxied = identity.proxy_user(request)
    if proxied is not None:
        return proxied if proxied.admin else None
    key_id = app.storage.user.get('admin_key')
    key = next((k for k in identities.list_keys() if k.key_id == key_id), None) if key_id else None
    return key.identity() if key and not key.revoked and key.identity().admin else None


def login_page() -> None:
    lang = i18n.init_language()
    design.apply()
    ui.query('html').props(f'lang={i18n.QUASAR_LANGUAGES[lang]}')
    ui.page_title('queuechat · admin')
    with ui.column().classes('w-full max-w-md mx-auto mt-24 gap-3 px-4'):
        i18n.text(ui.label(), 'admin.login_title').classes(design.HEADLINE)
        i18n.text(ui.label(), 'admin.login_hint').classes(design.BODY)
        key = ui.input(password=True).props('outlined dense data-testid=admin-key').classes('w-full')
        i18n.prop(key, 'label', 'admin.key')
        error = ui.label().classes('text-red-600 text-[13px]').props('data-testid=admin-login-error')
        error.set_visibility(False)

        async def sign_in() -> None:
            found = await identities.find_key((key.value or '').strip())
            if found is None or not found.identity().admin:
                error.set_text(i18n.t('admin.login_refused'))
                error.set_visibility(True)
                return
            app.storage.user['admin_key'] = found.key_id
            log.info('admin %s signed in', found.name)
            ui.navigate.to('/admin')

        key.on('keydown.enter', sign_in)
        button = ui.button(on_click=sign_in).props('unelevated no-caps color=primary data-testid=admin-sign-in')
        i18n.text(button, 'admin.sign_in')


def board_page() -> None:
    admin = admin_of_this_page()
    if admin is None:
        raise HTTPException(status_code=404, detail='Not Found')
    lang = i18n.init_language()
    design.apply()
    ui.query('html').props(f'lang={i18n.QUASAR_LANGUAGES[lang]}')
    ui.page_title('queuechat · admin')
    Board(admin)


class Board:
    """The board of one admin's page: re-read every REFRESH_SECONDS and whenever the queue moves.

    A section's rows are rebuilt only when what they show changes (an open priority menu would otherwise close
    under the admin's pointer every refresh); the ages in them are updated in place. Each action checks first that
    the key the browser signed in with is still an admin's (a revoked key's open board can do nothing more).
    """

    def __init__(self, admin: Identity) -> None:
        self.admin = admin
        self.names: dict[str, str] = {}
        self.ages: dict[str, tuple[ui.label, dict, bool]] = {}
        with ui.column().classes('w-full max-w-6xl mx-auto gap-4 p-4').props('data-testid=admin-board'):
            with ui.row().classes('w-full items-center gap-x-3 gap-y-1'):
                i18n.text(ui.label(), 'admin.title').classes(design.HEADLINE + ' mr-auto')
                self.state = ui.label().classes(design.SMALL_MUTED).props('data-testid=admin-state')
                with ui.row().classes('items-center gap-2 no-wrap'):
                    self.pause_button = ui.button(on_click=self.toggle_pause) \
                        .props('unelevated no-caps data-testid=admin-pause').classes(design.PILL_BUTTON)
                    language = ui.button(on_click=lambda: i18n.set_language(
                        'en' if i18n.current_language() == 'zh' else 'zh')) \
                        .props('flat dense no-caps data-testid=lang-toggle color=secondary')
                    i18n.text(language, 'header.language')
            self.running = Section('admin.running', 'admin-running')
            self.waiting = Section('admin.waiting', 'admin-waiting')
            self.usage = Section('admin.usage', 'admin-usage')
        self.paused = False
        ui.timer(REFRESH_SECONDS, self.refresh)
        ui.timer(0.05, self.refresh, once=True)
        bus.queue_changed.subscribe(self.refresh)
        i18n.on_change(self.refresh)

    async def refresh(self) -> None:
        store = async_store()
        try:
            board = await store.board()
            usage = await store.usage()
            keys = await asyncio.to_thread(identities.list_keys)
        except RedisError:
            self.state.set_text(i18n.t('error.unavailable'))
            return
        self.names = {f'k:{key.key_id}': key.name for key in keys}
        self.paused = board['paused']
        self.state.set_text(i18n.t('admin.paused' if self.paused else 'admin.admitting'))
        self.pause_button.set_text(i18n.t('admin.resume' if self.paused else 'admin.pause'))
        self.pause_button.props(f'color={"positive" if self.paused else "warning"}')
        now = time.time() * 1000
        lang = i18n.current_language()
        shown = {row['job_id'] for row in board['running'] + board['waiting']}
        self.ages = {job_id: age for job_id, age in self.ages.items() if job_id in shown}
        self.running.show(board['running'], lambda row: self.job_row(row, now, waiting=False),
                          key=lambda row: (lang, self.signature(row)))
        self.waiting.show(board['waiting'], lambda row: self.job_row(row, now, waiting=True),
                          more=board['waiting_total'] - len(board['waiting']),
                          key=lambda row: (lang, self.signature(row), row['position']))
        self.usage.show(usage, self.usage_row, key=lambda row: (lang, self.who(row['user']), tuple(row.items())))
        for label, row, waiting in self.ages.values():
            label.set_text(self.meta(row, now, waiting))

    def signature(self, row: dict) -> tuple:
        """What a job's row shows, but its age."""
        return (row['job_id'], self.who(row['user']), row['priority'], row['model'], row['attempts'],
                row['backend'], row['started_at'])

    def who(self, user: str) -> str:
        kind, _, rest = user.partition(':')
        if kind == 'k':
            return i18n.t('admin.who_key', name=self.names.get(user, rest))
        if kind == 'b':
            return i18n.t('admin.who_browser', id=rest[-6:])
        if kind == 'a':
            return i18n.t('admin.who_anonymous', address=rest)
        return rest or user

    def meta(self, row: dict, now: float, waiting: bool) -> str:
        """The second line of a job's row: model, how long it has waited or run, its attempt, its server."""
        since = row['created_at'] if waiting else (row['started_at'] or row['created_at'])
        age = i18n.duration((now - int(since)) / 1000) if since else ''
        parts = [row['model'], i18n.t('admin.age_waiting' if waiting else 'admin.age_running', duration=age)]
        if int(row['attempts'] or 0) > 0:
            parts.append(i18n.t('chat.attempt', attempt=row['attempts']))
        if not waiting and row['backend']:
            parts.append(row['backend'])
        return ' · '.join(parts)

    def job_row(self, row: dict, now: float, waiting: bool) -> None:
        """Two lines, so that a phone has room for whose it is: who and priority, then the details."""
        with ui.row().classes('w-full items-center gap-3 no-wrap qc-list-item') \
                .props(f'data-testid=admin-job data-job-id={row["job_id"]}'):
            if waiting:  # 1 = the next to start
                ui.label(f'#{int(row["position"]) + 1}').classes('font-semibold w-9 shrink-0') \
                    .props('data-testid=admin-position')
            with ui.column().classes('flex-1 min-w-0 gap-0'):
                with ui.row().classes('w-full items-center gap-2 no-wrap'):
                    ui.label(self.who(row['user'])).classes('qc-ellipsis ' + design.LIST_TITLE) \
                        .props('data-testid=admin-who')
                    design.badge(design.PRIORITY_BADGES, row['priority'], i18n.t(f'priority.{row["priority"]}')) \
                        .classes('shrink-0').props('data-testid=admin-priority')
                age = ui.label(self.meta(row, now, waiting)).classes('w-full ' + design.LIST_META) \
                    .props('data-testid=admin-meta')
                self.ages[row['job_id']] = (age, row, waiting)
            if waiting:
                ui.select({p: i18n.t(f'priority.{p}') for p in PRIORITY_LEVELS}, value=row['priority'],
                          on_change=lambda e, job=row['job_id']: self.move(job, e.value)) \
                    .props('dense outlined options-dense data-testid=admin-move').classes('w-28 shrink-0')
            cancel = ui.button(icon='close', on_click=lambda job=row['job_id']: self.cancel(job)) \
                .props('flat round dense color=negative data-testid=admin-cancel').classes('shrink-0')
            i18n.tooltip(cancel, 'chat.stop')

    def usage_row(self, row: dict) -> None:
        with ui.column().classes('w-full gap-0 qc-list-item').props('data-testid=admin-usage-row'):
            ui.label(self.who(row['user'])).classes('qc-ellipsis w-full ' + design.LIST_TITLE)
            wait = row['wait_p50_ms']
            parts = [i18n.t('admin.jobs', count=row['jobs']), i18n.t('admin.tokens', count=row['tokens'])]
            if wait is not None:
                parts.append(i18n.t('admin.wait_p50', duration=i18n.duration_ms(wait)))
            ui.label(' · '.join(parts)).classes('qc-ellipsis w-full ' + design.LIST_META)

    async def allowed(self) -> bool:
        """Whether this page may still act: a proxy's admin was checked at page load; a key may since be revoked."""
        if self.admin.kind != 'key':
            return True
        keys = await asyncio.to_thread(identities.list_keys)
        if any(f'k:{key.key_id}' == self.admin.id and not key.revoked for key in keys):
            return True
        log.warning('admin %s: key revoked, board closed', self.admin.name)
        ui.navigate.to('/admin/login')
        return False

    async def cancel(self, job_id: str) -> None:
        if not await self.allowed():
            return
        outcome = await async_store().cancel(job_id)
        log.info('admin %s cancelled job %s: %s', self.admin.name, job_id, outcome)
        await self.refresh()

    async def move(self, job_id: str, priority: str) -> None:
        if not await self.allowed():
            return
        moved = await async_store().reprioritize(job_id, priority)
        log.info('admin %s moved job %s to %s: %s', self.admin.name, job_id, priority, moved)
        await self.refresh()

    async def toggle_pause(self) -> None:
        if not await self.allowed():
            return
        await async_store().pause(not self.paused)
        log.info('admin %s %s admission', self.admin.name, 'resumed' if self.paused else 'paused')
        await self.refresh()


class Section:
    """A titled list, rebuilt when what it shows changes (``key`` of each row)."""

    def __init__(self, title: str, testid: str) -> None:
        self.shown: object = None
        with ui.column().classes('w-full gap-1 qc-metric').props(f'data-testid={testid}'):
            with ui.row().classes('w-full items-baseline gap-2'):
                i18n.text(ui.label(), title).classes(design.TITLE)
                self.count = ui.label().classes(design.SMALL_MUTED).props('data-testid=admin-count')
            self.rows = ui.column().classes('w-full gap-0.5')

    def show(self, rows: list[dict], build, key, more: int = 0) -> None:
        shown = ([key(row) for row in rows], more)
        if shown == self.shown:
            return
        self.shown = shown
        self.count.set_text(str(len(rows) + more))
        self.rows.clear()
        with self.rows:
            if not rows:
                i18n.text(ui.label(), 'admin.none').classes(design.SMALL_MUTED)
            for row in rows:
                build(row)
            if more > 0:
                ui.label(i18n.t('admin.more', count=more)).classes(design.SMALL_MUTED)
