"""The composer below the thread: Enter sends, Shift+Enter breaks the line, limits show before sending, and the
AI button asks the queue for a question to put in the box.

It is built once per page load and stays while the thread changes, so a draft survives switching
conversations and languages. A message is submitted with the page's user, priority, model and language.
"""

from __future__ import annotations

import contextlib

from nicegui import background_tasks, ui
from nicegui.context import context

import i18n
from tasks.fold import JobState
from tasks.settings import settings
from tasks.store import JobError, Submitted, async_store
from ui import bus, design, limits
from ui.bus import REDIS_ERRORS
from ui.chat import options
from ui.chat.errors import failure_key, refusal_text
from ui.state import PageState


def create(state: PageState) -> Composer:
    return Composer(state)


class Composer:
    def __init__(self, state: PageState) -> None:
        self.state = state
        self.sending = False
        self.suggest_job: str | None = None
        self.error_kind = ''
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
                    options.create(state)
                    ui.space()
                    self.counter = ui.label().classes('text-[12px] whitespace-nowrap') \
                        .props(f'data-testid=char-counter data-limit={limit}')
                    self.send_button = ui.button(icon='arrow_upward', on_click=self.send) \
                        .props('round unelevated dense color=primary data-testid=send-button size=md')
                    i18n.prop(self.send_button, 'aria-label', 'chat.send')
                    i18n.tooltip(self.send_button, 'chat.send')
            i18n.text(ui.label(), 'chat.hint').classes(f'w-full text-center {design.LIST_META} max-sm:hidden')
        context.client.on_delete(self._release)
        state.priority_changed.subscribe(self._show_priority)
        state.fill_input.subscribe(self._fill)
        i18n.on_change(self._on_language)
        self._show_priority()
        self._on_text()
        self._show_suggesting()

    # --- sending --------------------------------------------------------------------------------------------

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
            submitted = await self._submit(text, conversation_id=self.state.conversation_id, kind='chat',
                                           options=dict(self.state.options) or None)
        finally:
            self.sending = False
            self._on_text()
        if submitted is None:
            return
        self._clear_error()
        if self.input.value == text:  # text typed while the message was being sent stays in the box
            self.input.set_value('')
        if submitted.conversation_id != self.state.conversation_id:
            self.state.begin_conversation(submitted.conversation_id)
            ui.navigate.to(f'/c/{submitted.conversation_id}')
        else:
            self.state.submitted.emit(submitted.job_id)

    async def _submit(self, text: str, **fields) -> Submitted | None:
        """Submit with this page's user, priority, model and language; refusals are shown, not raised."""
        try:
            return await limits.submit_as(self.state.identity, text, priority=self.state.priority,
                                          model=self.state.model, lang=i18n.current_language(), **fields)
        except JobError as error:
            self._show_error(refusal_text(error))
        except REDIS_ERRORS:
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
            design.restyle(self.counter, design.COUNTER, 'over' if too_long else 'ok')
        if not too_long and self.error_box.visible and self.error_kind == 'too_long':
            self._clear_error()

    def _fill(self, text: str) -> None:
        self.input.set_value(text)
        self.input.run_method('focus')

    # --- suggest ----------------------------------------------------------------------------------------------

    async def _suggest(self) -> None:
        if self.suggest_job is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await async_store().cancel(self.suggest_job, self.state.user)
            return
        submitted = await self._submit(i18n.t('chat.suggest_request'), kind='suggest')
        if submitted is None:
            return
        self.suggest_job = submitted.job_id
        self._show_suggesting()
        job = await bus.follow(submitted.job_id, self._on_suggest_entries)
        if job is None or job.finished:  # gone, or ended before we looked
            await self._finish_suggest(submitted.job_id)

    def _on_suggest_entries(self, entries: list) -> None:
        if self.suggest_job is not None and any(fields.get('k') == 'done' for _, fields in entries):
            background_tasks.create(self._finish_suggest(self.suggest_job), name='suggestion', context=self.element)

    async def _finish_suggest(self, job_id: str) -> None:
        """The suggestion ended: a completed one fills the box (its answer as stored, quotes trimmed)."""
        if job_id != self.suggest_job:
            return
        self._release()
        self._show_suggesting()
        try:
            job: JobState | None = await async_store().job(job_id, user=self.state.user)
        except REDIS_ERRORS:
            job = None
        if job is None:
            return
        if job.status == 'completed' and job.answer.strip():
            self._fill(job.answer.strip())
        elif job.status == 'completed':  # the model said something, but not one usable question
            self._show_error(i18n.t('chat.suggest_nothing'))
        elif job.status == 'failed':
            self._show_error(i18n.t('chat.suggest_failed', reason=i18n.t(failure_key(job.error_code))))

    def _release(self) -> None:
        if self.suggest_job is not None:
            bus.unfollow(self.suggest_job, self._on_suggest_entries)
            self.suggest_job = None

    def _show_suggesting(self) -> None:
        busy = self.suggest_job is not None
        self.suggest_button.set_text(i18n.t('chat.suggesting' if busy else 'chat.suggest'))
        self.suggest_button.props['icon'] = 'hourglass_top' if busy else 'auto_awesome'
        self.suggest_button.props['data-busy'] = 'true' if busy else 'false'
        self.suggest_button.update()

    # --- bits ---------------------------------------------------------------------------------------------------

    def _show_error(self, text: str, kind: str = '') -> None:
        self.error_kind = kind
        self.error_text.set_text(text)
        self.error_box.set_visibility(True)

    def _clear_error(self) -> None:
        self.error_kind = ''
        self.error_box.set_visibility(False)

    def _show_priority(self) -> None:
        priority = self.state.priority
        design.set_badge(self.priority, design.PRIORITY_BADGES, priority,
                         i18n.t('chat.priority_readout', priority=i18n.t(f'priority.{priority}')))

    def _on_language(self) -> None:
        self._show_priority()
        self._show_suggesting()
        self._on_text()
