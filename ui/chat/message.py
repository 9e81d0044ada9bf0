"""One turn of the chat on screen: the prompt bubble, then the answer with its live panel, bound to a model.

Everything the widget shows comes from its :class:`~ui.chat.message_model.MessageModel`; the widget only puts it
on screen. Status changes render at once (they are a few labels); the answer and the thinking grow through
:class:`~ui.chat.markdown.StreamingMarkdown`, at most as often as the thread calls :meth:`MessageView.flush`.
Nothing here animates by itself: a spinner, repainted every frame, cost Chromium (without a GPU) about 0.12 CPU
seconds per second for each pending message; a still icon per state and the ticking clock show progress instead.
"""

from __future__ import annotations

from nicegui import ui

import i18n
from tasks.store import async_store
from ui import design
from ui.bus import REDIS_ERRORS
from ui.chat.markdown import StreamingMarkdown
from ui.chat.message_model import MessageModel, Text, now_ms


class MessageView(ui.column):
    """The widget of one message; ``user`` is who may stop it."""

    def __init__(self, model: MessageModel, user: str) -> None:
        super().__init__()
        self.model, self.user = model, user
        self.dirty = False
        job = model.job
        self.classes('w-full gap-3 no-wrap').props(f'data-testid=message data-job-id={job.job_id}')
        with self:
            ui.link_target(f'm-{job.job_id}')
            with ui.column().classes('w-full items-end gap-1'):
                ui.label(job.prompt).classes('qc-user-bubble') \
                    .props(f'data-testid=bubble-user-{job.job_id} data-job-id={job.job_id}')
                with ui.row().classes('items-center gap-1.5'):
                    i18n.text(design.badge(design.PRIORITY_BADGES, job.priority), f'priority.{job.priority}') \
                        .props(f'data-testid=message-priority data-priority={job.priority}')
            with ui.row().classes('w-full no-wrap items-start gap-3') \
                    .props(f'data-testid=bubble-assistant-{job.job_id} data-job-id={job.job_id}') as self.assistant:
                ui.label('q').classes('qc-avatar mt-0.5')
                with ui.column().classes('flex-1 min-w-0 gap-2 no-wrap'):
                    self._build_answer()
        model.text_changed.subscribe(self._on_text)
        model.state_changed.subscribe(self.render_state)
        i18n.on_change(self._on_language, owner=self)
        self.render_text()
        self.render_state()

    def _build_answer(self) -> None:
        with ui.row().classes('items-center gap-2 no-wrap min-h-[28px]'):
            ui.label(self.model.job.model).classes('text-[13px] font-semibold text-slate-600 qc-ellipsis')
            self.badge = ui.label().classes('qc-badge').props('data-testid=message-status')
            self.meta = ui.label().classes(design.CAPTION).props('data-testid=message-meta')
        with ui.expansion(icon='psychology').classes('qc-thinking w-full') \
                .props('dense data-testid=thinking') as self.thinking_box:
            self.thinking = StreamingMarkdown().classes('px-3 pb-2')
        self.answer = StreamingMarkdown().props('data-testid=answer')
        with ui.column().classes('qc-pending no-wrap').props('data-testid=pending') as self.pending:
            with ui.row().classes('w-full items-center gap-2 no-wrap'):
                self.icon = ui.icon('schedule', size='18px').classes('text-indigo-500') \
                    .props('data-testid=pending-icon')
                self.headline = ui.label().classes(f'{design.STRONG_SMALL} flex-1 min-w-0 leading-snug') \
                    .props('data-testid=queue-position')
                self.stop_button = ui.button(icon='stop_circle', on_click=self.stop) \
                    .props('flat dense no-caps no-wrap color=negative data-testid=stop-button') \
                    .classes('rounded-lg text-[13px] px-2')
            self.progress = ui.linear_progress(value=0, show_value=False, size='6px') \
                .props('rounded track-color=indigo-1 data-testid=progress animation-speed=300')
            with ui.row().classes(f'w-full items-center gap-2 {design.SMALL_MUTED} no-wrap'):
                self.phase = ui.label().props('data-testid=phase').classes('qc-ellipsis')
                self.attempt = ui.label().classes(design.ATTEMPT_BADGE).props('data-testid=attempt')
                ui.space()
                self.clock = ui.label().props('data-testid=eta').classes('whitespace-nowrap')
        with ui.row().classes('qc-error no-wrap items-start gap-2') \
                .props('data-testid=message-error role=alert') as self.error_box:
            ui.icon('error_outline', size='20px').classes('text-red-500 mt-0.5')
            with ui.column().classes('gap-0.5 min-w-0'):
                self.error_title = ui.label().classes('font-semibold')
                self.error_detail = ui.label().classes('text-[12.5px] text-red-700/80 break-words')
        self.note = ui.label().classes('qc-note').props('data-testid=message-note')

    # --- rendering ------------------------------------------------------------------------------------------

    def _on_text(self) -> None:
        if self.model.finished:
            self.render_text()
        else:
            self.dirty = True

    def flush(self) -> None:
        """Render the text if it grew since the last flush (the thread calls this a few times a second)."""
        if self.dirty:
            self.render_text()

    def render_text(self) -> None:
        self.dirty = False
        model = self.model
        self.answer.show(model.answer, final=model.finished)
        self.answer.set_visibility(bool(model.answer))
        self.thinking.show(model.thinking, final=model.finished)
        self.thinking_box.set_visibility(bool(model.thinking))
        self._show_thinking_label()

    def render_state(self) -> None:
        model = self.model
        self.badge.set_visibility(model.badge_visible)
        design.set_badge(self.badge, design.STATUS_BADGES, model.status, model.badge.say())
        self.badge.props['data-status'] = model.status
        self.badge.update()
        self.assistant.props['data-status'] = model.status
        self.assistant.update()
        self.pending.set_visibility(not model.finished)
        self._show_thinking_label()
        error = model.error
        self.error_box.set_visibility(error is not None)
        if error is not None:
            title, detail = error
            self.error_title.set_text(title.say())
            self.error_detail.set_text(detail)
            self.error_detail.set_visibility(bool(detail))
        note = model.note
        self.note.set_visibility(note is not None)
        self.note.set_text(note.say() if note else '')
        if not model.finished:
            self.stop_button.set_text(model.stop_label.say())
            self.stop_button.set_enabled(model.stop_enabled)
            self.progress.set_value(model.progress)
            self.progress.props['indeterminate'] = model.progress_indeterminate
            self.progress.props['data-value'] = str(round(model.progress * 100))
            self.progress.update()
            self.icon.set_name(model.icon)
            self.phase.set_text(model.phase.say())
            attempt = model.attempt
            self.attempt.set_visibility(attempt is not None)
            self.attempt.set_text(attempt.say() if attempt else '')
        self.render_clock()

    def render_clock(self) -> None:
        """What changes with time alone: the countdown, the ETA, the elapsed time (the thread calls it every
        second while the job is live)."""
        now = now_ms()
        model = self.model
        self.meta.set_text(_say(model.meta(now)))
        if not model.finished:
            self.headline.set_text(model.headline(now).say())
            self.clock.set_text(_say(model.clock(now)))

    def _show_thinking_label(self) -> None:
        label = self.model.thinking_label.say()
        if self.thinking_box.props.get('label') != label:
            self.thinking_box.props['label'] = label
            self.thinking_box.update()

    def _on_language(self) -> None:
        self.render_state()

    # --- Stop -------------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        self.model.request_stop()
        try:
            outcome = await async_store().cancel(self.model.job_id, self.user)
        except REDIS_ERRORS:
            self.model.stop_refused()
            ui.notify(i18n.t('error.unavailable'), type='negative')
            return
        if outcome in ('final', 'missing'):
            self.model.stop_refused()


def _say(text: Text | None) -> str:
    return text.say() if text else ''
