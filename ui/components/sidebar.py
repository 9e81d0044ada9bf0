"""The sidebar: New chat, model and priority for the next message, this user's conversations and task history.

Both lists follow Redis live: a new job of this user shows up when the head of their history list changes
(checked on every queue change), and a listed task is re-read when the bus says that job changed.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from nicegui import background_tasks, run, ui
from redis.exceptions import RedisError

import i18n
from tasks import jobs
from tasks.connection import get_async_redis
from tasks.settings import settings
from ui import bus, theme
from ui.state import PRIORITIES, PageState

log = logging.getLogger('queuechat.ui.sidebar')

HISTORY_LIMIT = 50
REFRESH_SECONDS = 0.5


def create(state: PageState) -> Sidebar:
    return Sidebar(state)


class Sidebar:
    def __init__(self, state: PageState) -> None:
        self.state = state
        self.docked = True  # False while the drawer overlays the page (narrow screens)
        self.conversations: list[dict] = []
        self.history: list[dict] = []
        self.history_items: dict[str, HistoryItem] = {}
        self.conversation_items: dict[str, ConversationItem] = {}
        self._head: str | None = None
        self._loaded = False
        self._refreshing = False
        self._again = False
        self._ticks = 0

        self.drawer = ui.left_drawer(value=False).props("show-if-above").props(f'width={theme.SIDEBAR_WIDTH} bordered') \
            .classes('qc-sidebar p-0').props('data-testid=sidebar')
        self.drawer.on('on-layout', lambda e: setattr(self, 'docked', bool(e.args)))
        with self.drawer, ui.column().classes('w-full h-full no-wrap gap-0'):
            with ui.column().classes('w-full gap-3 p-3 pb-2 no-wrap'):
                new_chat = ui.button(icon='edit_square', on_click=self._new_chat) \
                    .props('unelevated no-caps color=primary data-testid=new-chat') \
                    .classes('w-full rounded-xl h-10 text-[14px] font-semibold')
                i18n.text(new_chat, 'sidebar.new_chat')
                self._model_picker()
                self._priority_selector()
            with ui.tabs(value='chats').props('dense no-caps align=justify active-color=primary '
                                              'indicator-color=primary narrow-indicator') \
                    .classes('w-full px-3 text-slate-500') as self.tabs:
                chats_tab = ui.tab('chats').props('data-testid=tab-chats')
                history_tab = ui.tab('history').props('data-testid=tab-history')
                i18n.prop(chats_tab, 'label', 'sidebar.chats')
                i18n.prop(history_tab, 'label', 'sidebar.history')
            ui.separator().classes('bg-slate-200')
            with ui.tab_panels(self.tabs, value='chats').props('animated=false') \
                    .classes('w-full flex-1 min-h-0 overflow-y-auto'):
                with ui.tab_panel('chats'):
                    self.chats_box = ui.column().classes('w-full gap-0.5 p-2 no-wrap') \
                        .props('data-testid=conversation-list')
                with ui.tab_panel('history'):
                    self.history_box = ui.column().classes('w-full gap-0.5 p-2 no-wrap') \
                        .props('data-testid=history-list')
        self._render_conversations()
        self._render_history()

        bus.queue_changed.subscribe(self._on_queue_changed)
        bus.job_changed.subscribe(self._on_job_changed)
        bus.reconnected.subscribe(self.schedule_refresh)
        bus.health_changed.subscribe(self._update_models)
        self.state.conversation_changed.subscribe(self._mark_active)
        self.state.priority_changed.subscribe(self._show_priority)
        i18n.on_change(self._on_language)
        ui.timer(1.0, self._tick)
        ui.timer(0.05, self.schedule_refresh, once=True)

    # --- controls ---------------------------------------------------------------------------------

    def _model_picker(self) -> None:
        with ui.column().classes('w-full gap-1'):
            i18n.text(ui.label(), 'sidebar.model').classes('qc-section-title')
            self.model = ui.select(self._model_options(), value=self.state.model,
                                   on_change=lambda e: self.state.set_model(e.value)) \
                .props('dense outlined options-dense bg-color=white data-testid=model-picker') \
                .classes('w-full')
            self.model.props('dropdown-icon=unfold_more')

    def _model_options(self) -> list[str]:
        models = list(bus.health.models)
        for name in (self.state.model, settings.ollama_model):
            if name and name not in models:
                models.append(name)
        return models

    def _update_models(self) -> None:
        options = self._model_options()
        if options != self.model.options:
            self.model.set_options(options, value=self.state.model)

    def _priority_selector(self) -> None:
        with ui.column().classes('w-full gap-1'):
            with ui.row().classes('w-full items-baseline justify-between no-wrap'):
                i18n.text(ui.label(), 'sidebar.priority').classes('qc-section-title')
                i18n.text(ui.label(), 'sidebar.priority_hint').classes('text-[11px] text-slate-400 qc-ellipsis')
            with ui.element('div').classes('grid grid-cols-3 gap-1 p-1 rounded-xl bg-slate-200/70 w-full') \
                    .props('data-testid=priority-selector role=radiogroup'):
                self.priority_buttons = {}
                for priority in PRIORITIES:
                    button = ui.button(on_click=lambda p=priority: self.state.set_priority(p)) \
                        .props(f'flat dense no-caps data-testid=priority-{priority} role=radio '
                               f'data-priority={priority}') \
                        .classes('rounded-lg h-8 text-[13px] font-semibold')
                    i18n.text(button, f'priority.{priority}')
                    self.priority_buttons[priority] = button
        self._show_priority()

    def _show_priority(self) -> None:
        for priority, button in self.priority_buttons.items():
            active = priority == self.state.priority
            theme.restyle(button, {'on': 'bg-white text-indigo-700 shadow-sm', 'off': 'text-slate-500'},
                          'on' if active else 'off')
            button.props['aria-checked'] = 'true' if active else 'false'
            button.props['data-selected'] = 'true' if active else 'false'
            button.update()

    def _new_chat(self) -> None:
        self._close_if_overlay()
        ui.navigate.to('/')

    def _close_if_overlay(self) -> None:
        if not self.docked:
            self.drawer.hide()

    # --- live lists ----------------------------------------------------------------------------------

    async def _on_queue_changed(self) -> None:
        try:
            head = await get_async_redis().lindex(jobs.history_key(self.state.user), 0)
        except RedisError:
            return
        if head != self._head:
            self.schedule_refresh()

    def _on_job_changed(self, job_id: str) -> None:
        if job_id in self.history_items:
            self.schedule_refresh()

    def schedule_refresh(self) -> None:
        if self._refreshing:
            self._again = True
            return
        self._refreshing = True
        background_tasks.create(self._refresh(), name='sidebar refresh', context=self.drawer)

    async def _refresh(self) -> None:
        try:
            while True:
                self._again = False
                loaded = await run.io_bound(_load, self.state.user)
                if loaded is None or self.drawer.is_deleted:
                    return
                self.conversations, self.history = loaded
                self._head = self.history[0]['job_id'] if self.history else None
                self._loaded = True
                self._render_conversations()
                self._render_history()
                if not self._again:
                    return
                await asyncio.sleep(REFRESH_SECONDS)
        except RedisError as error:
            log.debug('sidebar refresh failed: %s', error)
        finally:
            self._refreshing = False

    def _render_conversations(self) -> None:
        ids = [c['id'] for c in self.conversations]
        if ids == list(self.conversation_items) and ids:
            for conversation in self.conversations:
                self.conversation_items[conversation['id']].update(conversation)
            return
        self.chats_box.clear()
        self.conversation_items = {}
        with self.chats_box:
            if not self.conversations:
                _empty(self._loaded, 'chat_bubble_outline', 'sidebar.no_chats', 'empty-conversations')
            for conversation in self.conversations:
                self.conversation_items[conversation['id']] = ConversationItem(self, conversation)
        self._mark_active()

    def _render_history(self) -> None:
        ids = [h['job_id'] for h in self.history]
        if ids == list(self.history_items) and ids:
            for task in self.history:
                self.history_items[task['job_id']].update(task)
            return
        self.history_box.clear()
        self.history_items = {}
        with self.history_box:
            if not self.history:
                _empty(self._loaded, 'history', 'sidebar.no_history', 'empty-history')
            for task in self.history:
                self.history_items[task['job_id']] = HistoryItem(self, task)

    def _mark_active(self) -> None:
        for conversation_id, item in self.conversation_items.items():
            item.element.classes(add='qc-active' if conversation_id == self.state.conversation_id else None,
                                 remove=None if conversation_id == self.state.conversation_id else 'qc-active')

    def _tick(self) -> None:
        """Every second the clocks of waiting and running tasks; every half minute all relative times."""
        self._ticks += 1
        now = datetime.now(timezone.utc)
        everything = self._ticks % 30 == 0
        for item in self.history_items.values():
            if everything or item.task['status'] in ('queued', 'running'):
                item.show_times(now)
        if everything:
            for conversation in self.conversation_items.values():
                conversation.update(conversation.conversation)

    def _on_language(self) -> None:
        for item in self.conversation_items.values():
            item.update(item.conversation)
        for item in self.history_items.values():
            item.update(item.task)
        if not self.conversations:
            self._render_conversations()
        if not self.history:
            self._render_history()

    def open(self, url: str) -> None:
        self._close_if_overlay()
        ui.navigate.to(url)


class ConversationItem:
    def __init__(self, sidebar: Sidebar, conversation: dict) -> None:
        self.conversation = conversation
        with ui.column().classes('qc-list-item') \
                .props(f'data-testid=conversation-item data-conversation-id={conversation["id"]}') \
                .on('click', lambda: sidebar.open(f'/c/{self.conversation["id"]}')) as self.element:
            self.title = ui.label().classes('qc-ellipsis w-full text-[14px] text-slate-800')
            self.when = ui.label().classes('text-[11.5px] text-slate-400')
        self.update(conversation)

    def update(self, conversation: dict) -> None:
        self.conversation = conversation
        self.title.set_text(conversation.get('title') or i18n.t('sidebar.untitled'))
        self.when.set_text(i18n.relative_time(conversation.get('updated_at')))


class HistoryItem:
    def __init__(self, sidebar: Sidebar, task: dict) -> None:
        self.task = task
        with ui.column().classes('qc-list-item gap-1') \
                .props(f'data-testid=history-item data-job-id={task["job_id"]}') \
                .on('click', self._open) as self.element:
            with ui.row().classes('w-full items-center gap-2 no-wrap'):
                self.status = theme.status_badge(task['status'])
                self.title = ui.label().classes('qc-ellipsis flex-1 text-[13.5px] text-slate-800')
            with ui.row().classes('w-full items-center gap-1.5 no-wrap text-[11.5px] text-slate-400'):
                self.priority = ui.label().classes('qc-badge')
                self.model = ui.label().classes('qc-ellipsis')
                ui.label('·')
                self.elapsed = ui.label().classes('whitespace-nowrap').props('data-testid=history-elapsed')
                ui.space()
                self.when = ui.label().classes('whitespace-nowrap')
        self.sidebar = sidebar
        self.update(task)

    def _open(self) -> None:
        conversation_id = self.task.get('conversation_id')
        if conversation_id:
            self.sidebar.open(f'/c/{conversation_id}?m={self.task["job_id"]}')

    def update(self, task: dict) -> None:
        self.task = task
        theme.set_status_badge(self.status, task['status'])
        self.title.set_text(task.get('prompt', '').strip().replace('\n', ' ')[:120] or i18n.t('sidebar.untitled'))
        priority = task.get('priority', 'normal')
        theme.restyle(self.priority, theme.PRIORITY_CLASSES,
                      priority if priority in theme.PRIORITY_CLASSES else 'normal')
        self.priority.set_text(i18n.t(f'priority.{priority}'))
        self.model.set_text(task.get('model') or '')
        self.element.props['data-status'] = task['status']
        self.element.update()
        self.show_times(datetime.now(timezone.utc))

    def show_times(self, now: datetime) -> None:
        self.elapsed.set_text(i18n.duration(elapsed_seconds(self.task, now)))
        self.when.set_text(i18n.relative_time(self.task.get('created_at'), now=now))


def elapsed_seconds(job: dict, now: datetime | None = None) -> float | None:
    """From submission to the end (or to now while it waits or runs)."""
    created = i18n.parse_time(job.get('created_at'))
    if created is None:
        return None
    end = i18n.parse_time(job.get('finished_at')) or now or datetime.now(timezone.utc)
    return max(0.0, (end - created).total_seconds())


def _load(user: str) -> tuple[list[dict], list[dict]] | None:
    return jobs.list_conversations(user), jobs.history(user, limit=HISTORY_LIMIT)


def _empty(loaded: bool, icon: str, key: str, testid: str) -> None:
    with ui.column().classes('w-full items-center text-center gap-2 px-4 py-8').props(f'data-testid={testid}'):
        if loaded:
            ui.icon(icon, size='28px').classes('text-slate-300')
            i18n.text(ui.label(), key).classes('text-[13px] text-slate-400 leading-snug')
        else:
            ui.spinner(size='24px', color='grey-5')

