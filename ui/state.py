"""What one open page knows: who the user is and what the next message will be sent with.

One :class:`PageState` per page load, created by ``pages.index`` and handed to every section; sections talk to
each other through its events instead of holding references to one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nicegui import Event, app
from nicegui.context import context

from tasks import queue
from tasks.identities import Identity
from tasks.settings import settings
from ui import identity

PRIORITIES = tuple(queue.PRIORITY_LEVELS)  # ('high', 'normal', 'low')
#: The sampling options a page may set: (lowest, highest, step), the API's limits (ui/api.py SamplingOptions).
OPTION_LIMITS = {'temperature': (0, 2, 0.1), 'top_p': (0.01, 1, 0.05), 'seed': (0, 2**31 - 1, 1),
                 'num_ctx': (256, 1_048_576, 256), 'max_tokens': (1, 131_072, 16)}
NEW_CHAT = ''  # the options of the chat not yet begun


@dataclass(eq=False)
class PageState:
    identity: Identity
    priority: str = 'normal'
    model: str = ''
    conversation_id: str | None = None
    """The conversation shown in the chat view (None: a new chat; the first message creates one)."""
    options: dict = field(default_factory=dict)
    """The sampling options of that conversation (empty: the server's defaults)."""
    saved_options: dict = field(default_factory=dict)
    """Per conversation ('' = the new chat), as in the session: read when the page opens, written on changes
    (from event handlers: a sub page being built can't reach the session)."""

    priority_changed: Event[str] = field(default_factory=Event)
    model_changed: Event[str] = field(default_factory=Event)
    conversation_changed: Event[str | None] = field(default_factory=Event)
    submitted: Event[str] = field(default_factory=Event)
    """A job (id) of the open conversation was just submitted from this page."""
    fill_input: Event[str] = field(default_factory=Event)
    """Put this text into the message input (example prompts, suggestions)."""

    @property
    def user(self) -> str:
        """The owner id of this page's jobs and conversations."""
        return self.identity.id

    @classmethod
    def for_current_user(cls) -> PageState:
        """The state of a new page: who is asking (this browser's signed session, or a trusted proxy's user) and
        their last priority and model. A visit that changes nothing writes nothing."""
        request = context.client.request
        who = identity.for_browser(request, request.session['id'])
        storage = app.storage.user
        priority = storage.get('priority')
        if priority not in PRIORITIES or not who.may_use(priority):
            priority = 'normal' if who.may_use('normal') else who.max_priority
        saved = storage.get('options')
        return cls(identity=who, priority=priority, model=storage.get('model') or settings.ollama_model,
                   saved_options=dict(saved) if isinstance(saved, dict) else {})

    def may_use(self, priority: str) -> bool:
        return self.identity.may_use(priority)

    def set_priority(self, priority: str) -> None:
        if priority not in PRIORITIES or priority == self.priority or not self.may_use(priority):
            return
        self.priority = priority
        app.storage.user['priority'] = priority
        self.priority_changed.emit(priority)

    def set_model(self, model: str) -> None:
        if not model or model == self.model:
            return
        self.model = model
        app.storage.user['model'] = model
        self.model_changed.emit(model)

    def set_conversation(self, conversation_id: str | None) -> None:
        if conversation_id != self.conversation_id:
            self.conversation_id = conversation_id
            self.options = dict(self.saved_options.get(conversation_id or NEW_CHAT) or {})
            self.conversation_changed.emit(conversation_id)

    def set_options(self, options: dict) -> None:
        """Keep the options that are set and within their limits, for this conversation."""
        kept = {}
        for name, value in options.items():
            low, high, _ = OPTION_LIMITS.get(name, (None, None, None))
            if low is not None and isinstance(value, (int, float)) and low <= value <= high:
                kept[name] = int(value) if name in ('seed', 'num_ctx', 'max_tokens') else float(value)
        self.options = kept
        self._save(self.conversation_id or NEW_CHAT, kept)

    def begin_conversation(self, conversation_id: str) -> None:
        """The new chat's first message made it a conversation: its options go with it."""
        if self.conversation_id is None and self.options:
            self._save(conversation_id, self.options)

    def _save(self, key: str, options: dict) -> None:
        self.saved_options[key] = options
        self.saved_options = _latest({k: v for k, v in self.saved_options.items() if v})
        app.storage.user['options'] = self.saved_options


def _latest(stored: dict, keep: int = 50) -> dict:
    """The options of the last ``keep`` conversations (a session's storage stays small)."""
    return dict(list(stored.items())[-keep:])
