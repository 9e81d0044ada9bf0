"""The chat: a conversation's messages, streamed live, and the composer that sends the next one.

``create(state, conversation_id, focus)`` builds the thread of one conversation (the content of the
``/`` and ``/c/{id}`` sub pages); ``composer(state)`` builds the input below it, which stays put while the
thread changes. A pending message follows its job through the bus: the Stream read so far is folded first
(a reload mid-answer shows the answer so far), then new entries arrive from the bus's single XREAD loop and
the markdown is re-rendered at most ten times a second.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial

from nicegui import Event, background_tasks, run, ui
from nicegui.context import context
from redis.exceptions import RedisError

import i18n
from tasks import jobs, queue
from tasks.connection import get_async_redis, get_redis
from tasks.settings import settings
from ui import bus, limits, theme
from ui.state import PageState

log = logging.getLogger('queuechat.ui.chat')

RENDER_SECONDS = 0.1  # markdown re-render throttle (~10 Hz)
EXAMPLES = ('chat.example_1', 'chat.example_2', 'chat.example_3')


def create(state: PageState, conversation_id: str | None = None, focus: str | None = None) -> ChatView:
    """The thread of one conversation (None: a new chat), scrolled to the message ``focus`` if given."""
    return ChatView(state, conversation_id, focus)


def composer(state: PageState) -> Composer:
    """The message input: send, the AI suggestion button, the priority of the next message and the limits."""
    return Composer(state)


class ChatView(ui.column):
    """The messages of one conversation, kept in sync with Redis while the page shows it."""

    def __init__(self, state: PageState, conversation_id: str | None, focus: str | None) -> None:
        super().__init__()
        self.classes('qc-scroller').props('data-testid=chat-thread')
        self.state, self.conversation_id, self.focus = state, conversation_id, focus
        self.messages: dict[str, Message] = {}
        self.following: dict[str, Message] = {}
        self.known_length = 0
        self.loaded = False
        self._syncing = self._sync_again = self._positions_busy = self._positions_again = False
        state.set_conversation(conversation_id)
        with self:
            self.thread = ui.column().classes('qc-thread')
        with self.thread:
            self.placeholder = ui.column().classes('w-full gap-0')
        if conversation_id is not None:
            self._show_loading()

        # unsubscribed in _handle_delete: this view can go long before its client does
        for event, handler in self._subscriptions():
            event.subscribe(handler, unsubscribe_on_delete=False)
        i18n.on_change(self._on_language, owner=self)
        with self:
            ui.timer(RENDER_SECONDS, self._flush)
            ui.timer(1.0, self._tick)
        if conversation_id is None:
            self._show_empty()
        else:
            background_tasks.create(self._load(), name='chat load', context=self)

    def _subscriptions(self) -> list[tuple[Event, Callable]]:
        return [(bus.entries, self._on_entries), (bus.job_changed, self._on_job_changed),
                (bus.queue_changed, self._on_queue_changed), (bus.reconnected, self._on_reconnected),
                (self.state.submitted, self._on_submitted)]

    def _handle_delete(self) -> None:
        for event, handler in self._subscriptions():
            event.unsubscribe(handler)
        for message in self.following.values():
            if message.watching:
                bus.unwatch(message.job_id)
        self.following.clear()
        super()._handle_delete()

    # --- loading ------------------------------------------------------------------------------------

    async def _load(self) -> None:
        try:
            loaded = await run.io_bound(_load_conversation, self.conversation_id, self.state.user)
        except jobs.JobError as error:
            if error.code == 'conversation_not_found':
                self.state.set_conversation(None)
                self._show_notice('search_off', 'chat.not_found_title', 'chat.not_found_hint', 'not-found',
                                  action=True)
                return
            raise
        except RedisError as error:
            log.info('loading a conversation failed: %s', error)
            self._show_notice('cloud_off', 'chat.unavailable_title', 'chat.unavailable_hint', 'unavailable')
            return
        if loaded is None or self.is_deleted:
            return
        raws, self.known_length = loaded
        self.loaded = True
        self.placeholder.clear()
        self.placeholder.set_visibility(False)
        if not raws:
            self._show_empty()
        for raw in raws:
            self._add(raw)
        if self.focus in self.messages:
            self.messages[self.focus].element.classes('qc-focus')
            ui.navigate.to(f'/c/{self.conversation_id}?m={self.focus}#m-{self.focus}')

    async def _sync(self) -> None:
        """Add the conversation's jobs this view does not show yet (sent from here or from another tab)."""
        if self.conversation_id is None or not self.loaded:
            return
        if self._syncing:
            self._sync_again = True
            return
        self._syncing = True
        try:
            while True:
                self._sync_again = False
                loaded = await run.io_bound(_conversation, self.conversation_id)
                if loaded is None or self.is_deleted:
                    return
                raws, self.known_length = loaded
                for raw in raws:
                    if raw['id'] not in self.messages:
                        self._add(raw)
                if not self._sync_again:
                    return
        except RedisError as error:
            log.debug('sync failed: %s', error)
        finally:
            self._syncing = False

    def _add(self, raw: dict) -> None:
        self.placeholder.clear()
        self.placeholder.set_visibility(False)
        message = Message(self, raw)
        self.messages[message.job_id] = message
        if not message.finished:
            self._follow(message)

    def _follow(self, message: Message) -> None:
        message.buffer = []
        self.following[message.job_id] = message
        background_tasks.create(self._start_following(message), name='follow job', context=self)

    async def _start_following(self, message: Message) -> None:
        try:
            items = await run.io_bound(jobs.read_stream, message.job_id)
        except RedisError:
            items = []  # the bus reads the whole Stream once Redis answers again
        if self.is_deleted or message.job_id not in self.following:
            return
        message.apply(items or [])
        bus.watch(message.job_id, after=message.cursor or '0-0')
        message.watching = True
        buffered, message.buffer = message.buffer or [], None
        message.apply(buffered)
        await self._refresh_positions()

    # --- live updates -----------------------------------------------------------------------------------

    def _on_entries(self, job_id: str, items: list) -> None:
        message = self.following.get(job_id)
        if message is None:
            return
        if message.buffer is not None:
            message.buffer.extend(items)
        else:
            message.apply(items)

    async def _on_job_changed(self, job_id: str) -> None:
        message = self.following.get(job_id)
        if message is None:
            return
        try:
            cancel = await get_async_redis().hget(queue.job_key(job_id), 'cancel')
        except RedisError:
            return
        if cancel == '1' and not message.cancelling:
            message.cancelling = True
            message.dirty = True

    async def _on_queue_changed(self) -> None:
        if self.conversation_id and self.loaded:
            try:
                length = await get_async_redis().llen(jobs.conversation_key(self.conversation_id))
            except RedisError:
                return
            if length != self.known_length:
                await self._sync()
        await self._refresh_positions()

    async def _on_reconnected(self) -> None:
        if self.conversation_id and not self.loaded:
            self._show_loading()
            await self._load()
            return
        await self._sync()
        await self._refresh_positions()

    async def _on_submitted(self, job_id: str) -> None:
        if job_id not in self.messages:
            await self._sync()

    async def _refresh_positions(self) -> None:
        """Queue positions and ETAs of this view's waiting messages (one ZRANK each)."""
        if self._positions_busy:
            self._positions_again = True
            return
        self._positions_busy = True
        try:
            while True:
                self._positions_again = False
                client = get_async_redis()
                for message in list(self.following.values()):
                    if message.status == 'queued':
                        position = await queue.position(client, message.job_id)
                        message.set_position(position, await bus.eta(position))
                if not self._positions_again:
                    return
        except RedisError:
            pass
        finally:
            self._positions_busy = False

    def _flush(self) -> None:
        for message in list(self.following.values()):
            if message.dirty:
                message.render()
            if message.finished and message.buffer is None:
                self.following.pop(message.job_id, None)
                if message.watching:
                    bus.unwatch(message.job_id)
                    message.watching = False
                background_tasks.create(message.finalize(), name='finalize message', context=self)

    def _tick(self) -> None:
        for message in self.following.values():
            message.render_status()

    def _on_language(self) -> None:
        for message in self.messages.values():
            message.render(force=True)

    # --- empty states -------------------------------------------------------------------------------------

    def _show_loading(self) -> None:
        self.placeholder.clear()
        self.placeholder.set_visibility(True)
        with self.placeholder, ui.column().classes('w-full items-center py-16').props('data-testid=chat-loading'):
            ui.spinner(size='28px', color='grey-5')

    def _show_empty(self) -> None:
        self.placeholder.clear()
        self.placeholder.set_visibility(True)
        with self.placeholder, ui.column().classes('w-full items-center text-center gap-3 pt-[10vh] pb-8 px-2') \
                .props('data-testid=chat-empty'):
            ui.label('q').classes('qc-logo qc-empty-icon')
            i18n.text(ui.label(), 'chat.empty_title').classes('text-[26px] font-semibold tracking-tight '
                                                               'text-slate-900 leading-tight')
            i18n.text(ui.label(), 'chat.empty_hint').classes('text-[14.5px] text-slate-500 max-w-[30rem] '
                                                              'leading-relaxed')
            with ui.element('div').classes('grid grid-cols-1 sm:grid-cols-3 gap-2 w-full max-w-[42rem] mt-4'):
                for key in EXAMPLES:
                    with ui.column().classes('qc-list-item border border-slate-200 bg-white text-left p-3 gap-1 '
                                             'hover:border-indigo-200') \
                            .props('data-testid=example-prompt') \
                            .on('click', lambda k=key: self.state.fill_input.emit(i18n.t(k))):
                        ui.icon('lightbulb', size='18px').classes('text-indigo-400')
                        i18n.text(ui.label(), key).classes('text-[13.5px] text-slate-700 leading-snug')

    def _show_notice(self, icon: str, title: str, hint: str, testid: str, action: bool = False) -> None:
        self.placeholder.clear()
        self.placeholder.set_visibility(True)
        with self.placeholder, ui.column().classes('w-full items-center text-center gap-3 pt-[14vh] px-4') \
                .props(f'data-testid=chat-{testid}'):
            with ui.element('div').classes('qc-empty-icon flex items-center justify-center bg-slate-100'):
                ui.icon(icon, size='28px').classes('text-slate-400')
            i18n.text(ui.label(), title).classes('text-[20px] font-semibold text-slate-900')
            i18n.text(ui.label(), hint).classes('text-[14px] text-slate-500 max-w-[28rem]')
            if action:
                button = ui.button(icon='edit_square', on_click=lambda: ui.navigate.to('/')) \
                    .props('unelevated no-caps color=primary').classes('rounded-xl mt-2')
                i18n.text(button, 'sidebar.new_chat')


class Message:
    """One turn: the user's prompt and the assistant's answer with its live queue/progress panel."""

    def __init__(self, view: ChatView, raw: dict) -> None:
        self.view = view
        self.job_id: str = raw['id']
        self.raw = raw
        self.status: str = raw.get('status', 'queued')
        self.phase: str = raw.get('phase') or self.status
        self.progress = int(float(raw.get('progress') or 0))
        self.attempts = int(raw.get('attempts') or 0)
        self.error: str = raw.get('error') or ''
        self.error_code: str | None = raw.get('error_code') or None
        self.finished = self.status in queue.TERMINAL
        self.answer: str = raw.get('answer', '') if self.finished else ''
        self.thinking: str = raw.get('thinking', '') if self.finished else ''
        self.cancelling = raw.get('cancel') == '1'
        self.cursor: str | None = None
        self.buffer: list | None = None
        self.watching = False
        self.dirty = False
        self.position: int | None = None
        self.eta: int | None = None
        self._shown_answer: str | None = None
        self._shown_thinking: str | None = None
        self._build()
        self.render(force=True)

    def _build(self) -> None:
        priority = self.raw.get('priority', 'normal')
        with self.view.thread, ui.column().classes('w-full gap-3 no-wrap') \
                .props(f'data-testid=message data-job-id={self.job_id}') as self.element:
            ui.link_target(f'm-{self.job_id}')
            with ui.column().classes('w-full items-end gap-1'):
                ui.label(self.raw.get('prompt', '')).classes('qc-user-bubble') \
                    .props(f'data-testid=bubble-user-{self.job_id} data-job-id={self.job_id}')
                with ui.row().classes('items-center gap-1.5'):
                    theme.priority_badge(priority).props(f'data-testid=message-priority data-priority={priority}')
            with ui.row().classes('w-full no-wrap items-start gap-3') \
                    .props(f'data-testid=bubble-assistant-{self.job_id} data-job-id={self.job_id}') \
                    as self.assistant:
                ui.label('q').classes('qc-avatar mt-0.5')
                with ui.column().classes('flex-1 min-w-0 gap-2 no-wrap'):
                    with ui.row().classes('items-center gap-2 no-wrap min-h-[28px]'):
                        ui.label(self.raw.get('model') or '').classes('text-[13px] font-semibold text-slate-600 '
                                                                      'qc-ellipsis')
                        self.badge = theme.status_badge(self.status).props('data-testid=message-status')
                        self.meta = ui.label().classes('text-[12px] text-slate-400 whitespace-nowrap') \
                            .props('data-testid=message-meta')
                    with ui.expansion(icon='psychology').classes('qc-thinking w-full') \
                            .props('dense data-testid=thinking') as self.thinking_box:
                        self.thinking_md = ui.markdown().classes('qc-answer px-3 pb-2')
                    self.answer_md = ui.markdown().classes('qc-answer').props('data-testid=answer')
                    with ui.column().classes('qc-pending no-wrap').props('data-testid=pending') as self.pending:
                        with ui.row().classes('w-full items-center gap-2 no-wrap'):
                            self.spinner = ui.spinner('dots', size='18px', color='primary')
                            self.status_text = ui.label().classes('text-[13.5px] text-slate-700 font-medium '
                                                                  'qc-ellipsis') \
                                .props('data-testid=queue-position')
                            ui.space()
                            self.stop_button = ui.button(icon='stop_circle', on_click=self._stop) \
                                .props('flat dense no-caps color=negative data-testid=stop-button') \
                                .classes('rounded-lg text-[13px] px-2')
                        self.progress_bar = ui.linear_progress(value=0, show_value=False, size='6px') \
                            .props('rounded track-color=indigo-1 data-testid=progress animation-speed=300')
                        with ui.row().classes('w-full items-center gap-2 text-[12px] text-slate-500 no-wrap'):
                            self.phase_text = ui.label().props('data-testid=phase').classes('qc-ellipsis')
                            self.attempt_text = ui.label().classes('qc-badge bg-amber-50 text-amber-800 '
                                                                   'border-amber-200') \
                                .props('data-testid=attempt')
                            ui.space()
                            self.eta_text = ui.label().props('data-testid=eta').classes('whitespace-nowrap')
                    with ui.row().classes('qc-error no-wrap items-start gap-2') \
                            .props('data-testid=message-error role=alert') as self.error_box:
                        ui.icon('error_outline', size='20px').classes('text-red-500 mt-0.5')
                        with ui.column().classes('gap-0.5 min-w-0'):
                            self.error_title = ui.label().classes('font-semibold')
                            self.error_detail = ui.label().classes('text-[12.5px] text-red-700/80 break-words')
                    self.note = ui.label().classes('qc-note').props('data-testid=message-note')

    # --- state ------------------------------------------------------------------------------------------

    def apply(self, items: list) -> None:
        """Fold Stream entries newer than the cursor into the message (a 'reset' starts the answer over)."""
        for entry_id, fields in items:
            if not bus.newer(entry_id, self.cursor):
                continue
            self.cursor = entry_id
            kind = fields.get('k')
            if kind == 'reset':
                self.answer, self.thinking = '', ''
            elif kind == 'token':
                self.answer += fields.get('d', '')
            elif kind == 'think':
                self.thinking += fields.get('d', '')
            elif kind in ('status', 'done'):
                snapshot = jobs.snapshot_of(fields)
                self.status = snapshot.get('status') or self.status
                self.phase = snapshot.get('phase') or self.phase
                self.progress = int(float(snapshot.get('progress') or 0))
                self.attempts = int(snapshot.get('attempts') or 0)
                self.error = snapshot.get('error') or ''
                self.error_code = snapshot.get('error_code')
                if self.status != 'queued':
                    self.position = self.eta = None
                if kind == 'done' or self.status in queue.TERMINAL:
                    self.finished = True
            self.dirty = True

    def set_position(self, position: int | None, eta: int | None) -> None:
        if (position, eta) != (self.position, self.eta):
            self.position, self.eta = position, eta
            self.render_status()

    async def finalize(self) -> None:
        """After the end: the stored answer (suggest-style cleanup, cancelled partials) and timings."""
        try:
            raw = await run.io_bound(jobs.get_raw, self.job_id)
        except RedisError:
            raw = None
        if raw:
            self.raw = raw
            self.status = raw.get('status', self.status)
            self.error = raw.get('error') or self.error
            self.error_code = raw.get('error_code') or self.error_code
            if self.status == 'completed' and raw.get('answer'):
                self.answer = raw['answer']
                self.thinking = raw.get('thinking', '') or self.thinking
        self.render(force=True)

    async def _stop(self) -> None:
        self.cancelling = True
        self.render_status()
        try:
            outcome = await run.io_bound(jobs.cancel, self.job_id)
        except RedisError:
            self.cancelling = False
            self.render_status()
            ui.notify(i18n.t('error.unavailable'), type='negative')
            return
        if outcome in ('final', 'missing'):
            self.cancelling = False
        self.render_status()

    # --- rendering --------------------------------------------------------------------------------------

    def render(self, force: bool = False) -> None:
        self.dirty = False
        if force or self.answer != self._shown_answer:
            self.answer_md.set_content(self.answer if self.finished else close_open_fence(self.answer))
            self._shown_answer = self.answer
        self.answer_md.set_visibility(bool(self.answer))
        if force or self.thinking != self._shown_thinking:
            self.thinking_md.set_content(self.thinking)
            self._shown_thinking = self.thinking
        self.thinking_box.set_visibility(bool(self.thinking))
        thinking_now = self.status == 'running' and not self.answer
        self.thinking_box.props['label'] = i18n.t('chat.thinking_now' if thinking_now else 'chat.thinking')
        self.thinking_box.update()
        theme.set_status_badge(self.badge, self.status)
        self.badge.set_visibility(self.status != 'completed')
        self.assistant.props['data-status'] = self.status
        self.assistant.update()
        self.pending.set_visibility(not self.finished)
        self._render_end()
        self.render_status()

    def _render_end(self) -> None:
        failed = self.finished and self.status == 'failed'
        self.error_box.set_visibility(failed)
        if failed:
            title, detail = job_error_text(self.error, self.error_code)
            self.error_title.set_text(title)
            self.error_detail.set_text(detail)
            self.error_detail.set_visibility(bool(detail))
        cancelled = self.finished and self.status == 'cancelled'
        self.note.set_visibility(cancelled)
        if cancelled:
            self.note.set_text(i18n.t('chat.cancelled_partial' if self.answer else 'chat.cancelled_note'))

    def render_status(self) -> None:
        """The pending panel and the meta line; also called every second for the clocks."""
        now = datetime.now(timezone.utc)
        elapsed = _elapsed(self.raw, now)
        if self.finished:
            self.meta.set_text(i18n.duration(elapsed) if elapsed is not None else '')
            return
        self.meta.set_text('')
        t = i18n.t
        running = self.status == 'running'
        if self.cancelling:
            text = t('chat.stopping')
        elif running:
            text = t(f'phase.{self.phase}') if self.phase in PHASES else t('status.running')
        elif self.phase == 'retrying':
            text = t('chat.retrying', attempt=self.attempts + 1)
        elif self.position is None:
            text = t('chat.waiting')
        elif self.position == 0:
            text = t('chat.ahead_zero')
        elif self.position == 1:
            text = t('chat.ahead_one')
        else:
            text = t('chat.ahead_many', count=self.position)
        self.status_text.set_text(text)
        self.stop_button.set_text(t('chat.stopping') if self.cancelling else t('chat.stop'))
        self.stop_button.set_enabled(not self.cancelling)
        self.progress_bar.set_value(self.progress / 100 if running else 0)
        self.progress_bar.props['indeterminate'] = not running and not self.cancelling
        self.progress_bar.props['data-value'] = str(self.progress if running else 0)
        self.progress_bar.update()
        if running:
            phase = t('chat.progress', progress=self.progress)
        else:
            phase = t(f'phase.{self.phase}') if self.phase in PHASES else t('status.queued')
        self.phase_text.set_text(phase)
        self.attempt_text.set_text(t('chat.attempt', attempt=self.attempts))
        self.attempt_text.set_visibility(self.attempts > 1)
        if self.status == 'queued' and self.eta is not None and self.phase != 'retrying':
            self.eta_text.set_text(t('chat.eta', duration=i18n.duration(self.eta, precise=False)))
        else:
            self.eta_text.set_text(t('chat.elapsed', duration=i18n.duration(elapsed)) if elapsed is not None else '')


PHASES = ('queued', 'starting', 'loading', 'prompt', 'generating', 'retrying', 'recovering', 'done', 'failed',
          'cancelled')


class Composer:
    """The input at the bottom: Enter sends, Shift+Enter breaks the line, limits are shown before sending."""

    def __init__(self, state: PageState) -> None:
        self.state = state
        self.sending = False
        self.suggest_job: str | None = None
        limit = settings.max_prompt_chars
        with ui.column().classes('qc-composer-wrap gap-1.5 no-wrap') as self.element:
            with ui.row().classes('qc-error no-wrap items-center gap-2 py-2') \
                    .props('data-testid=composer-error role=alert') as self.error_box:
                ui.icon('error_outline', size='18px').classes('text-red-500')
                self.error_text = ui.label().classes('flex-1 min-w-0')
                ui.button(icon='close', on_click=self._clear_error).props('flat round dense size=sm color=negative')
            self.error_box.set_visibility(False)
            with ui.column().classes('qc-composer w-full gap-0 px-2 pt-1.5 pb-2 no-wrap'):
                self.input = ui.textarea(on_change=self._on_text) \
                    .props('autogrow borderless dense rows=1 data-testid=message-input '
                           'input-class="max-h-[40vh] px-2 py-1.5"') \
                    .classes('w-full')
                i18n.prop(self.input, 'placeholder', 'chat.placeholder')
                self.input.on('keydown.enter.exact.prevent', self._on_enter, ['isComposing'])
                with ui.row().classes('w-full items-center gap-1.5 no-wrap px-1'):
                    self.suggest_button = ui.button(icon='auto_awesome', on_click=self._suggest) \
                        .props('flat dense no-caps no-wrap rounded color=accent data-testid=suggest-button') \
                        .classes('px-2.5 text-[13px] font-medium')
                    self.priority = ui.label().classes('qc-badge max-sm:!hidden').props('data-testid=composer-priority')
                    ui.space()
                    self.counter = ui.label().classes('text-[12px] text-slate-400 whitespace-nowrap') \
                        .props(f'data-testid=char-counter data-limit={limit}')
                    self.send_button = ui.button(icon='arrow_upward', on_click=self.send) \
                        .props('round unelevated dense color=primary data-testid=send-button size=md')
                    i18n.prop(self.send_button, 'aria-label', 'chat.send')
                    i18n.tooltip(self.send_button, 'chat.send')
            i18n.text(ui.label(), 'chat.hint').classes('w-full text-center text-[11.5px] text-slate-400 max-sm:hidden')
        bus.entries.subscribe(self._on_entries)
        context.client.on_delete(self._release)
        state.priority_changed.subscribe(self._show_priority)
        state.fill_input.subscribe(self._fill)
        i18n.on_change(self._on_language)
        self._show_priority()
        self._on_text()
        self._show_suggesting()

    # --- sending --------------------------------------------------------------------------------------

    async def send(self) -> None:
        text = self.input.value or ''
        if self.sending or not text.strip():
            return
        if len(text) > settings.max_prompt_chars:
            self._show_error(i18n.t('error.message_too_long', length=len(text), limit=settings.max_prompt_chars),
                             kind='too_long')
            return
        self.sending = True
        self._on_text()
        try:
            submitted = await self._submit(text, conversation_id=self.state.conversation_id, kind='chat')
        finally:
            self.sending = False
            self._on_text()
        if submitted is None:
            return
        self._clear_error()
        if self.input.value == text:  # text typed while the message was being sent stays in the box
            self.input.set_value('')
        if submitted.conversation_id != self.state.conversation_id:
            ui.navigate.to(f'/c/{submitted.conversation_id}')
        else:
            self.state.submitted.emit(submitted.job_id)

    async def _submit(self, text: str, **options) -> jobs.Submitted | None:
        """Submit with this page's user, priority, model and language; refusals are shown, not raised."""
        try:
            return await run.io_bound(partial(
                limits.submit_for_user, text, user=self.state.user, priority=self.state.priority,
                model=self.state.model, lang=i18n.current_language(), **options))
        except jobs.JobError as error:
            self._show_error(job_error_message(error))
        except RedisError:
            self._show_error(i18n.t('error.unavailable'))
        return None

    async def _on_enter(self, event) -> None:
        if isinstance(event.args, dict) and event.args.get('isComposing'):
            return
        await self.send()

    def _on_text(self) -> None:
        text = self.input.value or ''
        limit = settings.max_prompt_chars
        too_long = len(text) > limit
        self.send_button.set_enabled(bool(text.strip()) and not too_long and not self.sending)
        show_counter = len(text) >= limit * 0.8
        self.counter.set_visibility(show_counter)
        if show_counter:
            self.counter.set_text(i18n.t('chat.too_long' if too_long else 'chat.counter', length=len(text),
                                         limit=limit))
            theme.restyle(self.counter, {'over': 'text-red-600 font-medium', 'ok': 'text-slate-400'},
                          'over' if too_long else 'ok')
        if not too_long and self.error_box.visible and self.error_kind == 'too_long':
            self._clear_error()

    def _fill(self, text: str) -> None:
        self.input.set_value(text)
        self.input.run_method('focus')

    # --- suggest ----------------------------------------------------------------------------------------

    async def _suggest(self) -> None:
        if self.suggest_job is not None:
            with contextlib.suppress(RedisError):
                await run.io_bound(jobs.cancel, self.suggest_job)
            return
        submitted = await self._submit(i18n.t('chat.suggest_request'), kind='suggest')
        if submitted is None:
            return
        self.suggest_job = submitted.job_id
        bus.watch(submitted.job_id, after='0-0')
        self._show_suggesting()

    def _release(self) -> None:
        if self.suggest_job is not None:
            bus.unwatch(self.suggest_job)
            self.suggest_job = None

    def _on_entries(self, job_id: str, items: list) -> None:
        if job_id != self.suggest_job:
            return
        for _, fields in items:
            if fields.get('k') == 'done':
                self.suggest_job = None
                bus.unwatch(job_id)
                self._show_suggesting()
                background_tasks.create(self._finish_suggest(job_id, jobs.snapshot_of(fields)),
                                        name='suggestion', context=self.element)
                return

    async def _finish_suggest(self, job_id: str, snapshot: dict) -> None:
        if snapshot.get('status') == 'completed':
            try:
                raw = await run.io_bound(jobs.get_raw, job_id)
            except RedisError:
                raw = None
            answer = (raw or {}).get('answer', '').strip()
            if answer:
                self._fill(answer)
        elif snapshot.get('status') == 'failed':
            title, _ = job_error_text(snapshot.get('error') or '', snapshot.get('error_code'))
            self._show_error(i18n.t('chat.suggest_failed', reason=title))

    def _show_suggesting(self) -> None:
        busy = self.suggest_job is not None
        self.suggest_button.set_text(i18n.t('chat.suggesting' if busy else 'chat.suggest'))
        self.suggest_button.props['loading'] = False
        self.suggest_button.props['icon'] = 'hourglass_top' if busy else 'auto_awesome'
        self.suggest_button.props['data-busy'] = 'true' if busy else 'false'
        self.suggest_button.update()

    # --- bits -------------------------------------------------------------------------------------------

    error_kind = ''

    def _show_error(self, text: str, kind: str = '') -> None:
        self.error_kind = kind
        self.error_text.set_text(text)
        self.error_box.set_visibility(True)

    def _clear_error(self) -> None:
        self.error_kind = ''
        self.error_box.set_visibility(False)

    def _show_priority(self) -> None:
        priority = self.state.priority
        theme.restyle(self.priority, theme.PRIORITY_CLASSES, priority)
        self.priority.set_text(i18n.t('chat.priority_readout', priority=i18n.t(f'priority.{priority}')))

    def _on_language(self) -> None:
        self._show_priority()
        self._show_suggesting()
        self._on_text()


# --- helpers -----------------------------------------------------------------------------------------------

def job_error_message(error: jobs.JobError) -> str:
    """A refused request in the user's language, by its code (message_too_long, queue_full, ...)."""
    key = f'error.{error.code}'
    if key in i18n.catalog('en'):
        try:
            return i18n.t(key, **error.params)
        except (KeyError, IndexError):
            pass
    return i18n.t('error.unknown', detail=error.message)


def job_error_text(error: str, code: str | None) -> tuple[str, str]:
    """(translated title, original detail) of a failed job: the worker stores an error code beside its text."""
    key = f'job_error.{code}'
    return (i18n.t(key) if code and i18n.has_key(key) else i18n.t('job_error.generic')), error


def close_open_fence(markdown: str) -> str:
    """Markdown of an answer still streaming: a code fence that is open gets closed (the partial code renders
    as code, not as text) and a fence marker cut in half at the very end is held back."""
    head, _, last = markdown.rpartition('\n')
    if last.strip() in ('`', '``'):
        markdown = head
    fences = sum(1 for line in markdown.splitlines() if line.lstrip().startswith('```'))
    return markdown + '\n```' if fences % 2 else markdown


def _elapsed(raw: dict, now: datetime) -> float | None:
    created = raw.get('created_at')
    if not created:
        return None
    end = int(raw['finished_at']) / 1000 if raw.get('finished_at') else now.timestamp()
    return max(0.0, end - int(created) / 1000)


def _load_conversation(conversation_id: str, user: str) -> tuple[list[dict], int]:
    jobs.check_conversation_owner(conversation_id, user, allow_new=True)
    return _conversation(conversation_id)


def _conversation(conversation_id: str) -> tuple[list[dict], int]:
    length = get_redis().llen(jobs.conversation_key(conversation_id))
    return jobs.conversation_jobs(conversation_id), length
