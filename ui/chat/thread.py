"""The thread: one conversation's messages, kept live while the page shows it.

``create(state, conversation_id, focus)`` is the content of the ``/`` and ``/c/{id}`` sub pages. The turns are
read once through the job store; every turn still live is followed through the bus (one shared state per job
for the whole process), and new turns — sent from this page or another tab — come in when the bus says the
conversation changed. One timer renders the growing answers at most five times a second, another ticks the
clocks (countdowns, ETAs, elapsed times) of the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nicegui import Event, background_tasks, ui

import i18n
from tasks.fold import JobState
from tasks.store import JobError, async_store
from ui import bus, design
from ui.bus import REDIS_ERRORS
from ui.chat.message import MessageView
from ui.chat.message_model import MessageModel
from ui.state import PageState

log = logging.getLogger('queuechat.ui.thread')

RENDER_SECONDS = 0.2  # the growing end of an answer re-renders at most this often (each costs the browser a repaint)
EXAMPLES = ('chat.example_1', 'chat.example_2', 'chat.example_3')


def create(state: PageState, conversation_id: str | None = None, focus: str | None = None) -> Thread:
    """The thread of one conversation (None: a new chat), scrolled to the message ``focus`` if given."""
    return Thread(state, conversation_id, focus)


class Thread(ui.column):
    def __init__(self, state: PageState, conversation_id: str | None, focus: str | None) -> None:
        super().__init__()
        self.classes('qc-scroller').props('data-testid=chat-thread')
        self.state, self.conversation_id, self.focus = state, conversation_id, focus
        self.messages: dict[str, MessageView] = {}
        self.live: dict[str, MessageView] = {}
        self.loaded = False
        self._syncing = self._sync_again = False
        state.set_conversation(conversation_id)
        with self:
            self.column = ui.column().classes('qc-thread')
        with self.column:
            self.placeholder = ui.column().classes('w-full gap-0')
        # unsubscribed in _handle_delete: this view can go long before its client does
        for event, handler in self._subscriptions():
            event.subscribe(handler, unsubscribe_on_delete=False)
        with self:  # running only while a message is live: an idle page wakes the app for nothing
            self.timers = (ui.timer(RENDER_SECONDS, self._flush, active=False), ui.timer(1.0, self._tick, active=False))
        if conversation_id is None:
            self._show_empty()
        else:
            self._show_loading()
            background_tasks.create(self._load(), name='chat load', context=self)

    def _subscriptions(self) -> list[tuple[Event, Callable]]:
        return [(bus.conversation_changed, self._on_conversation_changed), (bus.reconnected, self._on_reconnected),
                (self.state.submitted, self._on_submitted)]

    def _handle_delete(self) -> None:
        for event, handler in self._subscriptions():
            event.unsubscribe(handler)
        for view in self.live.values():
            bus.unfollow(view.model.job_id, view.model.update)
        self.live.clear()
        super()._handle_delete()

    # --- loading ------------------------------------------------------------------------------------------

    async def _load(self) -> None:
        """Read the conversation; while Redis can't answer (down, or too slow for the socket timeout), say so and
        try again with a growing pause — never wait for an event that a slow Redis would not send."""
        delay = 0.5
        while True:
            try:
                turns = await async_store().conversation(self.conversation_id, self.state.user)
                break
            except JobError as error:
                if error.code != 'conversation_not_found':
                    raise
                self.state.set_conversation(None)
                self._show_notice('search_off', 'chat.not_found_title', 'chat.not_found_hint', 'not-found',
                                  action=True)
                return
            except REDIS_ERRORS as error:
                log.info('loading a conversation failed: %s', error)
                self._show_notice('cloud_off', 'chat.unavailable_title', 'chat.unavailable_hint', 'unavailable')
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                if self.is_deleted or self.loaded:
                    return
        if self.is_deleted:
            return
        self.loaded = True
        self.placeholder.clear()
        self.placeholder.set_visibility(False)
        if not turns:
            self._show_empty()
        await self._add_all(turns)
        if self.focus in self.messages:
            self.messages[self.focus].classes('qc-focus')
            ui.navigate.to(f'/c/{self.conversation_id}?m={self.focus}#m-{self.focus}')

    async def _sync(self) -> None:
        """Add the conversation's turns this view does not show yet (sent from here or from another tab)."""
        if self.conversation_id is None or not self.loaded:
            return
        if self._syncing:
            self._sync_again = True
            return
        self._syncing = True
        try:
            while True:
                self._sync_again = False
                turns = await async_store().conversation(self.conversation_id, self.state.user)
                if self.is_deleted:
                    return
                await self._add_all(turns)
                if not self._sync_again:
                    return
        except (JobError, *REDIS_ERRORS) as error:
            log.debug('sync failed: %s', error)
        finally:
            self._syncing = False

    async def _add_all(self, turns: list[JobState]) -> None:
        for job in turns:
            if job.job_id not in self.messages and not self.is_deleted:
                await self._add(job)

    async def _add(self, job: JobState) -> None:
        """One turn: a finished one as it was read, a live one over the bus's shared state of its job."""
        model = MessageModel(job)
        following = False
        if not job.finished:
            with contextlib.suppress(*REDIS_ERRORS):
                shared = await bus.follow(job.job_id, model.update)
                if shared is not None:
                    model.job, following = shared, True
        if self.is_deleted or job.job_id in self.messages:
            if following:
                bus.unfollow(job.job_id, model.update)
            return
        self.placeholder.clear()
        self.placeholder.set_visibility(False)
        with self.column:
            view = MessageView(model, self.state.user)
        self.messages[job.job_id] = view
        if following:
            self._go_live(job.job_id, view)

    # --- live updates -----------------------------------------------------------------------------------------

    async def _on_conversation_changed(self, conversation_id: str) -> None:
        if conversation_id == self.conversation_id:
            await self._sync()

    async def _on_submitted(self, job_id: str) -> None:
        if job_id not in self.messages:
            await self._sync()

    async def _on_reconnected(self) -> None:
        if self.conversation_id and not self.loaded:
            self._show_loading()
            await self._load()
            return
        for job_id, view in list(self.messages.items()):  # turns that could not be followed while Redis was away
            if not view.model.finished and job_id not in self.live:
                with contextlib.suppress(*REDIS_ERRORS):
                    shared = await bus.follow(job_id, view.model.update)
                    if shared is not None:
                        self._go_live(job_id, view)
                        view.model.replace(shared)
        await self._sync()

    def _go_live(self, job_id: str, view: MessageView) -> None:
        self.live[job_id] = view
        for timer in self.timers:
            timer.activate()

    def _flush(self) -> None:
        for job_id, view in list(self.live.items()):
            view.flush()
            if view.model.finished:
                del self.live[job_id]
                bus.unfollow(job_id, view.model.update)
                background_tasks.create(self._reread(view.model), name='finished message', context=self)
        if not self.live:
            for timer in self.timers:
                timer.deactivate()

    async def _reread(self, model: MessageModel) -> None:
        """After the end: the record as stored (the finishing time, the answer as kept)."""
        try:
            job = await async_store().job(model.job_id, user=self.state.user)
        except REDIS_ERRORS:
            return
        if job is not None and job.finished:
            model.replace(job)

    def _tick(self) -> None:
        for view in self.live.values():
            view.render_clock()

    # --- in place of messages -----------------------------------------------------------------------------------

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
            i18n.text(ui.label(), 'chat.empty_title') \
                .classes('text-[26px] font-semibold tracking-tight text-slate-900 leading-tight')
            i18n.text(ui.label(), 'chat.empty_hint').classes(f'{design.BODY} max-w-[30rem] leading-relaxed')
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
            i18n.text(ui.label(), title).classes(design.HEADLINE)
            i18n.text(ui.label(), hint).classes(f'{design.BODY} max-w-[28rem]')
            if action:
                button = ui.button(icon='edit_square', on_click=lambda: ui.navigate.to('/')) \
                    .props('unelevated no-caps color=primary').classes(f'{design.PILL_BUTTON} mt-2')
                i18n.text(button, 'sidebar.new_chat')
