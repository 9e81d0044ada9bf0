"""The header: the drawer toggle and name, live health chips (Redis, LLM, workers), metrics and language."""

from __future__ import annotations

from nicegui import ui

import i18n
from ui import bus, design
from ui.state import PageState


def create(state: PageState, *, sidebar: ui.left_drawer, metrics: ui.right_drawer) -> Header:
    return Header(state, sidebar=sidebar, metrics=metrics)


class Header:
    def __init__(self, state: PageState, *, sidebar: ui.left_drawer, metrics: ui.right_drawer) -> None:
        self.state = state
        with ui.header(elevated=False).classes('qc-header items-center gap-1 px-2 sm:px-3 py-0 no-wrap'):
            menu = ui.button(icon='menu', on_click=sidebar.toggle) \
                .props(f'{design.ICON_BUTTON} data-testid=sidebar-toggle')
            i18n.prop(menu, 'aria-label', 'header.menu')
            with ui.row().classes('items-center gap-2 no-wrap ml-1'):
                ui.label('q').classes('qc-logo')
                i18n.text(ui.label(), 'app.name').classes('text-[17px] font-semibold tracking-tight text-slate-900') \
                    .props('data-testid=app-name')
            ui.space()
            with ui.row().classes('items-center gap-1.5 no-wrap'):
                self.redis = HealthChip('redis')
                self.llm = HealthChip('llm')
                self.workers = HealthChip('workers')
            stats = ui.button(icon='insights', on_click=metrics.toggle) \
                .props(f'{design.ICON_BUTTON} data-testid=metrics-toggle').classes('ml-1')
            i18n.prop(stats, 'aria-label', 'header.metrics')
            i18n.tooltip(stats, 'header.metrics')
            self.language = ui.button(on_click=self._toggle_language) \
                .props('flat dense no-caps data-testid=lang-toggle color=secondary') \
                .classes('min-w-[44px] px-2 font-semibold text-[13px]')
            i18n.tooltip(self.language, 'header.language')
        self._show_language()
        self._show_health()
        bus.health_changed.subscribe(self._show_health)
        i18n.on_change(self._on_language)

    def _toggle_language(self) -> None:
        i18n.set_language('en' if i18n.current_language() == 'zh' else 'zh')

    def _on_language(self) -> None:
        self._show_language()
        self._show_health()

    def _show_language(self) -> None:
        other = 'en' if i18n.current_language() == 'zh' else 'zh'
        self.language.set_text(i18n.t(f'lang.{other}'))
        self.language.props['data-lang'] = i18n.current_language()
        self.language.props['aria-label'] = i18n.t('header.language')
        self.language.update()

    def _show_health(self) -> None:
        health = bus.health
        if not health.checked:
            for chip, name in ((self.redis, 'Redis'), (self.llm, 'LLM')):
                chip.show('unknown', name, i18n.t('health.checking'))
            self.workers.show('unknown', i18n.t('health.workers', count='–'), i18n.t('health.checking'))
            return
        self.redis.show('ok' if health.redis else 'down', 'Redis',
                        i18n.t('health.redis_ok' if health.redis else 'health.redis_down'))
        self.llm.show(*llm_chip(health.llm, health.backends))
        count = health.workers
        label = i18n.t('health.workers_one') if count == 1 else i18n.t('health.workers', count=count)
        self.workers.show('ok' if count else ('down' if health.redis else 'unknown'), label,
                          i18n.t('health.workers_ok', count=count) if count else i18n.t('health.workers_none'))


def llm_chip(up: bool, views: list[dict]) -> tuple[str, str, str]:
    """(level, label, tooltip) of the LLM chip. With several servers, some down: '2 of 3 servers up' (amber),
    naming the ones down in the tooltip."""
    if len(views) > 1 and up:
        down = [view['name'] for view in views if view['state'] == 'down']
        if down:
            total = len(views)
            return ('warn', i18n.t('health.servers_up', up=total - len(down), total=total),
                    i18n.t('health.servers_some', up=total - len(down), total=total, names=', '.join(down)))
        return 'ok', 'LLM', i18n.t('health.servers_ok', count=len(views))
    return ('ok', 'LLM', i18n.t('health.llm_ok')) if up else ('down', 'LLM', i18n.t('health.llm_down'))


class HealthChip:
    """A pill with a colored dot; the label hides on narrow screens, the tooltip explains."""

    def __init__(self, name: str) -> None:
        with ui.element('div').classes('qc-chip max-sm:px-2').props(f'data-testid=health-{name}') as self.element:
            self.dot = ui.element('span').classes('qc-dot')
            self.label = ui.label().classes('max-sm:hidden')
            self.tooltip = ui.tooltip()

    def show(self, level: str, label: str, tip: str) -> None:
        design.restyle(self.dot, design.HEALTH_DOTS, level)
        self.label.set_text(label)
        self.tooltip.set_text(tip)
        self.element.props['data-state'] = level
        self.element.props['aria-label'] = f'{label}: {tip}'
        self.element.update()
