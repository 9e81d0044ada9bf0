"""The sidebar: New chat, model and priority for the next message, this user's conversations and task history.

Both lists are read through the job store and re-read when the bus says this user's jobs changed (Redis
publishes that on every status change of their jobs, so a status badge here is never stale for long).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from nicegui import background_tasks, ui

import i18n
from tasks.fold import JobState
from tasks.settings import settings
from tasks.store import async_store
from ui import bus, design
from ui.bus import REDIS_ERRORS
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
        self.history: list[JobState] = []
        self.history_items: dict[str, HistoryItem] = {}
        self.conversation_items: dict[str, ConversationItem] = {}
        self._loaded = False
        self._refreshing = False
        self._again = False

        self.drawer = ui.left_drawer(value=False).props('show-if-above') \
            .props(f'width={design.SIDEBAR_WIDTH} bordered data-testid=sidebar').classes('qc-sidebar p-0')
        self.drawer.on('on-layout', lambda e: setattr(self, 'docked', bool(e.args)))
        with self.drawer, ui.column().classes('w-full h-full no-wrap gap-0'):
            with ui.column().classes('w-full gap-3 p-3 pb-2 no-wrap'):
                new_chat = ui.button(icon='edit_square', on_click=self._new_chat) \
                    .props('unelevated no-caps color=primary data-testid=new-chat') \
                    .classes(f'w-full {design.PILL_BUTTON} h-10 text-[14px] font-semibold')
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
        # the clocks of waiting and running tasks, while there are any (an idle page wakes the app for nothing)
        self.clocks = ui.timer(1.0, self._tick_clocks, active=False)
        self._render_conversations()
        self._render_history()

        bus.user_changed.subscribe(self._on_user_changed)
        bus.reconnected.subscribe(self.schedule_refresh)
        bus.health_changed.subscribe(self._update_models)
        self.state.conversation_changed.subscribe(self._mark_active)
        self.state.priority_changed.subscribe(self._show_priority)
        i18n.on_change(self._on_language)
        i18n.on_change(self._update_models)
        ui.timer(30.0, self._tick_all, immediate=False)  # every relative time ('5 minutes ago')
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

    def _model_options(self) -> dict[str, str]:
        """Every model some server offers (with the servers, when there are several), then the chosen and the
        default model if no server offers them — marked, so that nobody picks a model that can't answer."""
        health = bus.health
        servers: dict[str, list[str]] = {}
        for view in health.backends:
            for model in view['models'] or []:
                servers.setdefault(model, []).append(view['name'])
        several = len(health.backends) > 1
        options = {model: f'{model} · {", ".join(servers[model])}' if several and model in servers else model
                   for model in health.models}
        for name in (self.state.model, settings.ollama_model):
            if name and name not in options:
                missing = health.checked and bool(health.models)
                options[name] = i18n.t('sidebar.model_missing', model=name) if missing else name
        return options

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
                    if not self.state.may_use(priority):
                        button.disable()
                        i18n.tooltip(button, 'sidebar.priority_not_allowed')
                    self.priority_buttons[priority] = button
        self._show_priority()

    def _show_priority(self) -> None:
        for priority, button in self.priority_buttons.items():
            active = priority == self.state.priority
            design.restyle(button, design.SEGMENT, 'on' if active else 'off')
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

    def _on_user_changed(self, user: str) -> None:
        if user == self.state.user:
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
                store = async_store()
                self.conversations = await store.conversations(self.state.user)
                self.history = await store.history(self.state.user, HISTORY_LIMIT)
                if self.drawer.is_deleted:
                    return
                self._loaded = True
                self._render_conversations()
                self._render_history()
                if not self._again:
                    return
                await asyncio.sleep(REFRESH_SECONDS)
        except REDIS_ERRORS as error:
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
        self.clocks.active = any(not job.finished for job in self.history)
        ids = [job.job_id for job in self.history]
        if ids == list(self.history_items) and ids:
            for job in self.history:
                self.history_items[job.job_id].update(job)
            return
        self.history_box.clear()
        self.history_items = {}
        with self.history_box:
            if not self.history:
                _empty(self._loaded, 'history', 'sidebar.no_history', 'empty-history')
            for job in self.history:
                self.history_items[job.job_id] = HistoryItem(self, job)

    def _mark_active(self) -> None:
        for conversation_id, item in self.conversation_items.items():
            item.element.classes(add='qc-active' if conversation_id == self.state.conversation_id else None,
                                 remove=None if conversation_id == self.state.conversation_id else 'qc-active')

    def _tick_clocks(self) -> None:
        now = datetime.now(timezone.utc)
        for item in self.history_items.values():
            if not item.job.finished:
                item.show_times(now)

    def _tick_all(self) -> None:
        now = datetime.now(timezone.utc)
        for item in self.history_items.values():
            item.show_times(now)
        for conversation in self.conversation_items.values():
            conversation.update(conversation.conversation)

    def _on_language(self) -> None:
        for item in self.conversation_items.values():
            item.update(item.conversation)
        for item in self.history_items.values():
            item.update(item.job)
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
            self.title = ui.label().classes(f'qc-ellipsis w-full {design.LIST_TITLE}')
            self.when = ui.label().classes(design.LIST_META)
        self.update(conversation)

    def update(self, conversation: dict) -> None:
        self.conversation = conversation
        self.title.set_text(conversation.get('title') or i18n.t('sidebar.untitled'))
        self.when.set_text(i18n.relative_time(conversation.get('updated_at')))


class HistoryItem:
    def __init__(self, sidebar: Sidebar, job: JobState) -> None:
        self.job = job
        self.sidebar = sidebar
        with ui.column().classes('qc-list-item gap-1') \
                .props(f'data-testid=history-item data-job-id={job.job_id}') \
                .on('click', self._open) as self.element:
            with ui.row().classes('w-full items-center gap-2 no-wrap'):
                self.status = design.badge(design.STATUS_BADGES, job.status)
                self.title = ui.label().classes('qc-ellipsis flex-1 text-[13.5px] text-slate-800')
            with ui.row().classes(f'w-full items-center gap-1.5 no-wrap {design.LIST_META}'):
                self.priority = design.badge(design.PRIORITY_BADGES, job.priority)
                self.model = ui.label().classes('qc-ellipsis')
                ui.label('·')
                self.elapsed = ui.label().classes('whitespace-nowrap').props('data-testid=history-elapsed')
                ui.space()
                self.when = ui.label().classes('whitespace-nowrap')
        self.update(job)

    def _open(self) -> None:
        if self.job.conversation_id:
            self.sidebar.open(f'/c/{self.job.conversation_id}?m={self.job.job_id}')

    def update(self, job: JobState) -> None:
        self.job = job
        design.set_badge(self.status, design.STATUS_BADGES, job.status, i18n.t(f'status.{job.status}'))
        self.status.props['data-status'] = job.status
        self.title.set_text(job.prompt.strip().replace('\n', ' ')[:120] or i18n.t('sidebar.untitled'))
        design.set_badge(self.priority, design.PRIORITY_BADGES, job.priority, i18n.t(f'priority.{job.priority}'))
        self.model.set_text(job.model)
        self.element.props['data-status'] = job.status
        self.element.update()
        self.show_times(datetime.now(timezone.utc))

    def show_times(self, now: datetime) -> None:
        self.elapsed.set_text(i18n.duration(elapsed_seconds(self.job, now), clock=not self.job.finished))
        self.when.set_text(i18n.relative_time(moment(self.job.created_at), now=now))


def elapsed_seconds(job: JobState, now: datetime) -> float | None:
    """From submission to the end (or to now while it waits or runs)."""
    if not job.created_at:
        return None
    end = job.finished_at / 1000 if job.finished and job.finished_at else now.timestamp()
    return max(0.0, end - job.created_at / 1000)


def moment(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc) if ms else None


def _empty(loaded: bool, icon: str, key: str, testid: str) -> None:
    with ui.column().classes('w-full items-center text-center gap-2 px-4 py-8').props(f'data-testid={testid}'):
        if loaded:
            ui.icon(icon, size='28px').classes(design.MUTED_ICON)
            i18n.text(ui.label(), key).classes('text-[13px] text-slate-400 leading-snug')
        else:
            ui.spinner(size='24px', color='grey-5')

