"""The queuechat page: ``/`` (a new chat) and ``/c/{conversation_id}`` (an open conversation).

``pages.create()`` registers both routes with one builder. The frame (header, sidebar, metrics drawer) and the
composer are built once per page load; the thread in between is a ``ui.sub_pages`` view, so opening another
conversation swaps only the thread (the URL follows, and back/forward work) while the language, the draft in
the composer and the sidebar stay as they are.
"""

from __future__ import annotations

from nicegui import ui
from nicegui.context import context

import i18n
from tasks.store import JobError
from ui import design, frame, limits
from ui.chat.errors import refusal_text
from ui.chat import composer, thread
from ui.state import PageState


def create() -> None:
    """Register the page routes (call once, before ``ui.run``)."""
    ui.page('/c/{conversation_id}')(index)
    ui.page('/')(index)


def index() -> None:
    lang = i18n.init_language()
    frame.follow_language(lang)
    state = PageState.for_current_user()
    try:
        context.client.on_delete(limits.open_page(state.identity, context.client.id))
    except JobError as error:  # too many pages or requests from this user: say so, and build nothing heavy
        design.apply()
        with ui.column().classes('w-full items-center text-center gap-3 pt-[20vh] px-4') \
                .props('data-testid=too-many-pages'):
            i18n.text(ui.label(), 'error.page_refused_title').classes(design.HEADLINE)
            ui.label(refusal_text(error)).classes(design.BODY)
        return
    with frame.frame(state):
        ui.sub_pages({'/': conversation, '/c/{conversation_id}': conversation}, data={'state': state}) \
            .classes('qc-main').props('data-testid=chat-view')
        composer.create(state)


def conversation(state: PageState, conversation_id: str = '', m: str = '') -> None:
    """The sub page: one conversation's thread (``m``: a job id to scroll to and highlight)."""
    thread.create(state, conversation_id or None, focus=m or None)
