"""What one message shows, derived from its job's shared state: no NiceGUI elements, testable without a browser.

The bus keeps one :class:`~tasks.fold.JobState` per job for the whole process; a :class:`MessageModel` wraps it
for one page and answers every question the message widget asks — which status badge, which line of text with
which parameters, how far the progress bar, whether Stop is enabled, whether the error box or a note shows. The
widget binds to its two events and renders; it decides nothing itself::

    model = MessageModel(job)                      # job: the shared JobState (bus.follow) or a finished record
    model.text_changed.subscribe(...)              # the answer or thinking grew (or started afresh)
    model.state_changed.subscribe(...)             # status, phase, position, ETA, Stop ... changed
    model.update(entries)                          # the bus's callback: entries just folded into the job
    model.headline(now_ms).say()                   # 'You are next', 'The LLM failed; attempt 2 starts in 3 s'

Texts are :class:`Text` (a catalog key and its parameters) so that tests can check what is meant, and the
widget says them in the page's language at render time (a language switch re-says them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nicegui import Event

import i18n
from tasks.fold import JobState
from ui.chat.errors import failure_key

#: Phases a job reports (``phase.<name>`` in the catalogs); an unknown one reads as its status.
PHASES = ('queued', 'starting', 'loading', 'prompt', 'generating', 'retrying', 'recovering', 'done', 'failed',
          'cancelled')
TEXT_ENTRIES = {'token', 'think'}


@dataclass(frozen=True)
class Duration:
    """A number of seconds, said as a duration in the page's language ('4.2 s', '3 分 5 秒')."""

    seconds: float
    precise: bool = True
    clock: bool = False  # a running clock: whole seconds (i18n.duration)


@dataclass(frozen=True)
class Text:
    """A catalog key with its parameters; :class:`Duration` parameters are formatted when said."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)

    def say(self) -> str:
        values = {name: i18n.duration(value.seconds, precise=value.precise, clock=value.clock)
                  if isinstance(value, Duration) else value for name, value in self.params.items()}
        return i18n.t(self.key, **values)


def now_ms() -> int:
    return int(time.time() * 1000)


class MessageModel:
    """One message's view state over its job's state (shared with every other page that shows the job)."""

    def __init__(self, job: JobState) -> None:
        self.job = job
        self.stop_requested = False  # Stop was clicked here and the job has not said 'cancelling' yet
        self.text_changed = Event()
        self.state_changed = Event()

    # --- changes ------------------------------------------------------------------------------------------

    def update(self, entries: list) -> None:
        """The job's shared state has folded ``entries`` (an empty list: only its position or ETA moved)."""
        kinds = {fields.get('k') for _, fields in entries}
        if kinds & (TEXT_ENTRIES | {'reset', 'done'}):
            self.text_changed.emit()
        if not kinds or kinds - TEXT_ENTRIES:
            self.state_changed.emit()

    def replace(self, job: JobState) -> None:
        """A fresh read of the job (after its end: the stored answer and the finishing time)."""
        self.job = job
        self.text_changed.emit()
        self.state_changed.emit()

    def request_stop(self) -> None:
        self.stop_requested = True
        self.state_changed.emit()

    def stop_refused(self) -> None:
        """The Stop did not go through (Redis away, or the job had just ended)."""
        self.stop_requested = False
        self.state_changed.emit()

    # --- what the widget shows ------------------------------------------------------------------------------

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def status(self) -> str:
        return self.job.status

    @property
    def finished(self) -> bool:
        return self.job.finished

    @property
    def cancelling(self) -> bool:
        return not self.finished and (self.job.cancelling or self.stop_requested)

    @property
    def answer(self) -> str:
        return self.job.answer

    @property
    def thinking(self) -> str:
        return self.job.thinking

    @property
    def badge(self) -> Text:
        return Text(f'status.{self.status}')

    @property
    def badge_visible(self) -> bool:
        """A completed answer speaks for itself."""
        return self.status != 'completed'

    @property
    def thinking_label(self) -> Text:
        return Text('chat.thinking_now' if self.status == 'running' and not self.answer else 'chat.thinking')

    @property
    def icon(self) -> str:
        """A still icon before the headline (a spinning one costs the browser a core's tenth per message)."""
        if self.cancelling:
            return 'pause_circle'
        return {'running': 'edit_note', 'retrying': 'update'}.get(self.job.status, 'schedule')

    def headline(self, now: int) -> Text:
        """The first line of the pending panel: where the job is, or what it is doing."""
        job = self.job
        if self.cancelling:
            return Text('chat.stopping')
        if job.status == 'running':
            return Text(f'phase.{job.phase}') if job.phase in PHASES else Text('status.running')
        if job.blocked == 'backend_down':  # before the retry count-down: no try helps until a server is back
            return Text('chat.blocked', {'model': job.model})
        if job.status == 'retrying':
            seconds = job.retry_in(now)
            if seconds:
                return Text('chat.retrying', {'attempt': job.attempts + 1, 'seconds': seconds})
            return Text('chat.retrying_now', {'attempt': job.attempts + 1})
        if job.position is None:
            return Text('chat.waiting')
        if job.position == 0:
            return Text('chat.ahead_zero')
        if job.position == 1:
            return Text('chat.ahead_one')
        return Text('chat.ahead_many', {'count': job.position})

    @property
    def progress(self) -> float:
        """0..1 while running (the bar is indeterminate while waiting)."""
        return self.job.progress / 100 if self.job.status == 'running' else 0.0

    @property
    def progress_indeterminate(self) -> bool:
        return self.job.waiting and not self.cancelling

    @property
    def phase(self) -> Text:
        if self.job.status == 'running':
            return Text('chat.progress', {'progress': self.job.progress})
        return Text(f'phase.{self.job.phase}') if self.job.phase in PHASES else Text('status.queued')

    @property
    def attempt(self) -> Text | None:
        """'Attempt N' for the attempt running or coming, from the second one on."""
        number = self.job.attempts + (1 if self.job.status == 'retrying' else 0)
        return Text('chat.attempt', {'attempt': number}) if number > 1 else None

    def clock(self, now: int) -> Text | None:
        """Right of the phase: the estimated start while queued, else the time since submission."""
        job = self.job
        if job.status == 'queued' and job.eta_seconds is not None:
            return Text('chat.eta', {'duration': Duration(job.eta_seconds, precise=False)})
        elapsed = self.elapsed(now)
        if elapsed is None:
            return None
        return Text('chat.elapsed', {'duration': Duration(elapsed, clock=not self.finished)})  # running: whole seconds

    def meta(self, now: int) -> Text | None:
        """Beside the model name once finished: how long it took."""
        elapsed = self.elapsed(now)
        return Text('chat.elapsed', {'duration': Duration(elapsed)}) if self.finished and elapsed is not None \
            else None

    def elapsed(self, now: int) -> float | None:
        """Seconds from submission to the end (or to ``now`` while it waits or runs)."""
        job = self.job
        if not job.created_at:
            return None
        end = job.finished_at if self.finished and job.finished_at else now
        return max(0.0, (end - job.created_at) / 1000)

    @property
    def stop_label(self) -> Text:
        return Text('chat.stopping' if self.cancelling else 'chat.stop')

    @property
    def stop_enabled(self) -> bool:
        return not self.finished and not self.cancelling

    @property
    def error(self) -> tuple[Text, str] | None:
        """(translated title, the worker's own words) of a failed job; None otherwise."""
        if self.status != 'failed':
            return None
        return Text(failure_key(self.job.error_code)), self.job.error or ''

    @property
    def note(self) -> Text | None:
        """A note under the answer: why it stopped early."""
        if self.status == 'cancelled':
            return Text('chat.cancelled_partial' if self.answer else 'chat.cancelled_note')
        if self.status == 'completed' and self.job.done_reason == 'length':
            return Text('chat.length_cut')
        return None
