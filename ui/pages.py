"""The queuechat page: ``/`` (a new chat) and ``/c/{conversation_id}`` (an open conversation).

``pages.create()`` registers both routes with one builder. The frame (header, sidebar, metrics drawer) and the
composer are built once per page load; the thread in between is a ``ui.sub_pages`` view, so opening another
conversation swaps only the thread (the URL follows, and back/forward work) while the language, the draft in
the composer and the sidebar stay as they are.
"""

from __future__ import annotations

from nicegui import ui

import i18n
from ui import theme
from ui.components import chat
from ui.state import PageState


def create() -> None:
    """Register the page routes (call once, before ``ui.run``)."""
    ui.page('/c/{conversation_id}')(index)
    ui.page('/')(index)


def index() -> None:
    lang = i18n.init_language()
    theme.follow_language(lang)
    state = PageState.for_current_user()
    with theme.frame(state):
        ui.sub_pages({'/': thread, '/c/{conversation_id}': thread}, data={'state': state}) \
            .classes('qc-main').props('data-testid=chat-view')
        chat.composer(state)


def thread(state: PageState, conversation_id: str = '', m: str = '') -> None:
    """The sub page: one conversation's messages (``m``: a job id to scroll to and highlight)."""
    chat.create(state, conversation_id or None, focus=m or None)
