"""The sampling options of a conversation: a popover beside the composer (temperature, top-p, seed, context
length, answer length), sent with every message of the conversation.

The options belong to the page's state (``PageState.options``, kept per conversation in the user's session):
what a new chat was given goes with it once its first message makes it a conversation. Empty means the
server's default. The API takes the same object (``"options"`` of ``POST /api/chat``), checked the same way.
"""

from __future__ import annotations

from nicegui import ui

import i18n
from ui import design
from ui.state import OPTION_LIMITS, PageState


def create(state: PageState) -> OptionsButton:
    return OptionsButton(state)


class OptionsButton:
    def __init__(self, state: PageState) -> None:
        self.state = state
        self.inputs: dict[str, ui.number] = {}
        self.button = ui.button(icon='tune').props('flat round dense color=secondary data-testid=options-button')
        i18n.prop(self.button, 'aria-label', 'options.title')
        i18n.tooltip(self.button, 'options.title')
        with self.button, ui.menu().props('anchor="top middle" self="bottom middle"') as self.menu, \
                ui.column().classes('gap-2 p-3 w-72 max-w-[90vw]').props('data-testid=options-panel'):
            i18n.text(ui.label(), 'options.title').classes(design.TITLE)
            i18n.text(ui.label(), 'options.hint').classes(design.SMALL_MUTED)
            for name, (low, high, step) in OPTION_LIMITS.items():
                field = ui.number(min=low, max=high, step=step, on_change=self._changed) \
                    .props(f'dense outlined clearable data-testid=option-{name}').classes('w-full')
                i18n.prop(field, 'label', f'options.{name}')
                self.inputs[name] = field
            with ui.row().classes('w-full justify-end'):
                reset = ui.button(on_click=self._reset).props('flat dense no-caps data-testid=options-reset')
                i18n.text(reset, 'options.reset')
        self._show()
        state.conversation_changed.subscribe(lambda _: self._show())

    def _show(self) -> None:
        for name, field in self.inputs.items():
            field.set_value(self.state.options.get(name))
        active = bool(self.state.options)
        self.button.props(f'color={"primary" if active else "secondary"}')
        self.button.props['data-active'] = 'true' if active else 'false'
        self.button.update()

    def _changed(self) -> None:
        self.state.set_options({name: field.value for name, field in self.inputs.items()})
        active = bool(self.state.options)
        self.button.props(f'color={"primary" if active else "secondary"}')
        self.button.props['data-active'] = 'true' if active else 'false'
        self.button.update()

    def _reset(self) -> None:
        self.state.set_options({})
        self._show()
