"""The frame of every page: the stylesheet, the header, the sidebar and the metrics drawer around the content.

The only module that imports the sections; pages import the frame, and sections import only the design leaf,
the page state and the bus (never the frame, never each other)::

    with frame.frame(state):
        ...  # the page's content column
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from nicegui import ui
from nicegui.context import context

import i18n
from ui import design
from ui.sections import header, metrics, sidebar
from ui.state import PageState


@contextmanager
def frame(state: PageState) -> Iterator[None]:
    """Header, sidebar and metrics drawer around the page's content column."""
    design.apply()
    ui.page_title('queuechat')
    side = sidebar.create(state)
    panel = metrics.create()
    header.create(state, sidebar=side.drawer, metrics=panel.drawer)
    with ui.column().classes('qc-shell'):
        yield


def follow_language(lang: str) -> None:
    """Make Quasar's own texts and the ``lang`` attribute (which picks CJK glyphs) follow the UI language.

    Quasar's language pack is chosen when the page is served, so the page object of this client gets its own
    copy with the language of this user; a later switch updates the ``lang`` attribute in place (the next load
    brings the matching Quasar pack).
    """
    client = context.client
    client.page = copy.copy(client.page)
    client.page.language = i18n.QUASAR_LANGUAGES[lang]
    html = ui.query('html')
    html.props(f'lang={i18n.QUASAR_LANGUAGES[lang]}')
    i18n.on_change(lambda: html.props(f'lang={i18n.QUASAR_LANGUAGES[i18n.current_language()]}'))
