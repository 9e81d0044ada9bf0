"""What one open page knows: who the user is and what the next message will be sent with.

One :class:`PageState` per page load, created by ``pages.index`` and handed to every component; components
talk to each other through its events instead of holding references to one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nicegui import Event, app

from tasks import jobs, queue
from tasks.settings import settings

PRIORITIES = tuple(queue.PRIORITY_LEVELS)  # ('high', 'normal', 'low')


@dataclass(eq=False)
class PageState:
    user: str
    priority: str = 'normal'
    model: str = ''
    conversation_id: str | None = None
    """The conversation shown in the chat view (None: a new chat; the first message creates one)."""

    priority_changed: Event[str] = field(default_factory=Event)
    model_changed: Event[str] = field(default_factory=Event)
    conversation_changed: Event[str | None] = field(default_factory=Event)
    submitted: Event[str] = field(default_factory=Event)
    """A job (id) of the open conversation was just submitted from this page."""
    fill_input: Event[str] = field(default_factory=Event)
    """Put this text into the message input (example prompts, suggestions)."""

    @classmethod
    def for_current_user(cls) -> PageState:
        """The state of a new page: the browser's stable anonymous id and its last priority and model."""
        storage = app.storage.user
        if not isinstance(storage.get('id'), str) or not storage['id']:
            storage['id'] = jobs.new_id()
        priority = storage.get('priority')
        return cls(user=storage['id'], priority=priority if priority in PRIORITIES else 'normal',
                   model=storage.get('model') or settings.ollama_model)

    def set_priority(self, priority: str) -> None:
        if priority not in PRIORITIES or priority == self.priority:
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
            self.conversation_changed.emit(conversation_id)
