"""The metrics drawer: live cards from ``metrics.stats()``, a 30-minute chart from ``metrics.series()``, and the
LLM servers (``bus.health.backends``): each one's health, slots, models, speed and recent errors.

The figures come from the bus (``bus.figures``), read once a second for every open page together; a page is
told only when they changed, so an open drawer that nothing happens to costs the app nothing.
"""

from __future__ import annotations

import time
from datetime import datetime

from nicegui import ui

import i18n
from ui import bus, design

CARDS = (  # (testid, label key), two per row below the queue-depth card
    ('running', 'metrics.running'),
    ('workers', 'metrics.workers'),
    ('avg-response', 'metrics.avg_response'),
    ('total-requests', 'metrics.total_requests'),
    ('success-rate', 'metrics.success_rate'),
    ('throughput', 'metrics.throughput'),
    ('wait', 'metrics.wait'),
    ('ttft', 'metrics.ttft'),
)


def create() -> MetricsPanel:
    return MetricsPanel()


class MetricsPanel:
    def __init__(self) -> None:
        self.points: list[dict] | None = None
        self.drawer = ui.right_drawer(value=False).props("show-if-above") \
            .props(f'width={design.METRICS_WIDTH} breakpoint={design.METRICS_BREAKPOINT} bordered '
                   'data-testid=metrics-panel') \
            .classes('bg-white p-0')
        with self.drawer, ui.column().classes('w-full gap-2.5 p-4 no-wrap'):
            with ui.row().classes('w-full items-center justify-between no-wrap'):
                i18n.text(ui.label(), 'metrics.title').classes(design.TITLE)
                with ui.row().classes('items-center gap-1.5 no-wrap'):
                    self.live_dot = ui.element('span').classes('qc-dot')
                    self.live = ui.label().classes(design.SMALL_MUTED).props('data-testid=metrics-live')
            self.depth = QueueDepthCard()
            with ui.element('div').classes('grid grid-cols-2 gap-2 w-full'):
                self.cards = {testid: MetricCard(testid, key) for testid, key in CARDS}
            self.servers = ServersCard()
            with ui.column().classes('qc-metric w-full gap-1'):
                i18n.text(ui.label(), 'metrics.chart_title').classes('qc-metric-label')
                self.chart = ui.echart(self._chart_options([])).classes('w-full h-[190px]') \
                    .props('data-testid=metrics-chart')
        self._show()
        i18n.on_change(self._on_language)
        bus.figures_changed.subscribe(self.refresh)
        bus.health_changed.subscribe(self.refresh)
        self.drawer.on_value_change(self.refresh)  # opened: up to date at once

    def refresh(self) -> None:
        if self.drawer.value is False:  # hidden (narrow screen): brought up to date when it opens
            return
        figures = bus.figures
        self._show()
        self.servers.show(bus.health.backends)
        if figures.series is not None and figures.series != self.points:
            self.points = figures.series
            self._show_chart()

    def _on_language(self) -> None:
        self._show()
        self._show_chart()
        self.servers.show(bus.health.backends, force=True)

    def _show(self) -> None:
        figures = bus.figures.stats
        live = figures is not None
        design.restyle(self.live_dot, design.LIVE_DOTS, 'on' if live else 'off')
        self.live.set_text(i18n.t('metrics.live' if live else 'metrics.offline') if bus.figures.read else '')
        if figures is None:
            for card in self.cards.values():
                card.show('—', '')
            self.depth.show(None)
            return
        t = i18n.t
        self.cards['avg-response'].show(i18n.duration_ms(figures['avg_response_ms'])
                                        if figures.get('avg_response_ms') else '—', t('metrics.all_time'))
        self.cards['total-requests'].show(f'{figures["total_requests"]:,}',
                                          t('metrics.total_sub', completed=figures['completed'],
                                            failed=figures['failed']))
        finished = figures['completed'] + figures['failed'] + figures['cancelled']
        self.cards['success-rate'].show(i18n.percent(figures['success_rate']) if finished else '—',
                                        t('metrics.cancelled_sub', count=figures['cancelled']))
        self.cards['throughput'].show(t('metrics.per_minute', value=_number(figures['throughput_per_min'])),
                                      t('metrics.last_5_min'))
        self.depth.show(figures)
        self.cards['running'].show(f'{figures["running"]} / {figures["concurrency"]}', t('metrics.slots'))
        retrying = figures.get('retrying', 0)
        self.cards['workers'].show(str(figures['workers']),
                                   t('metrics.retrying_sub', count=retrying) if retrying else t('metrics.online'))
        for testid, name in (('wait', 'wait_ms'), ('ttft', 'ttft_ms')):
            values = figures[name]
            self.cards[testid].show(i18n.duration_ms(values['p50']) if values['p95'] else '—',
                                    t('metrics.p95', value=i18n.duration_ms(values['p95'])) if values['p95'] else
                                    t('metrics.no_samples'))

    def _show_chart(self) -> None:
        options = self._chart_options(self.points or [])
        self.chart.options.clear()
        self.chart.options.update(options)
        self.chart.update()

    @staticmethod
    def _chart_options(points: list[dict]) -> dict:
        t = i18n.t
        labels = [datetime.fromtimestamp(p['minute']).strftime('%H:%M') for p in points]
        throughput = [p['completed'] + p['failed'] for p in points]
        latency = [round(p['avg_response_ms'] / 1000, 2) if p['completed'] else None for p in points]
        axis_label = {'fontSize': 10, 'color': design.MUTED}
        split_line = {'lineStyle': {'color': design.GRID_LINE}}
        empty = not any(throughput)
        return {
            'animation': False,
            'graphic': [{'id': 'empty', 'type': 'text', 'left': 'center', 'top': 'middle', 'invisible': not empty,
                         'silent': True, 'style': {'text': t('metrics.chart_empty'), 'fill': design.MUTED,
                                                   'fontSize': 12}}],
            'grid': {'left': 8, 'right': 8, 'top': 34, 'bottom': 4, 'containLabel': True},
            'tooltip': {'trigger': 'axis', 'confine': True, 'textStyle': {'fontSize': 12}},
            'legend': {'top': 0, 'left': 0, 'itemWidth': 12, 'itemHeight': 8, 'itemGap': 10,
                       'textStyle': {'fontSize': 11, 'color': design.CHART_LEGEND}},
            'xAxis': {'type': 'category', 'data': labels, 'axisTick': {'show': False},
                      'axisLine': {'lineStyle': {'color': design.BORDER}},
                      'axisLabel': {**axis_label, 'interval': 9}},
            'yAxis': [
                {'type': 'value', 'minInterval': 1, 'axisLabel': axis_label, 'splitLine': split_line},
                {'type': 'value', 'axisLabel': {**axis_label, 'formatter': '{value}s'}, 'splitLine': {'show': False}},
            ],
            'series': [
                {'name': t('metrics.chart_throughput'), 'type': 'bar', 'data': throughput, 'barMaxWidth': 8,
                 'itemStyle': {'color': design.CHART_BARS, 'borderRadius': [3, 3, 0, 0]}},
                {'name': t('metrics.chart_latency'), 'type': 'line', 'yAxisIndex': 1, 'data': latency,
                 'connectNulls': True, 'smooth': True, 'symbol': 'circle', 'symbolSize': 4,
                 'lineStyle': {'width': 2, 'color': design.CHART_LINE}, 'itemStyle': {'color': design.CHART_LINE}},
            ],
        }


class QueueDepthCard:
    """The waiting jobs: the total, and how many of each priority."""

    def __init__(self) -> None:
        with ui.row().classes('qc-metric w-full items-center no-wrap gap-3').props('data-testid=metric-queue-depth'):
            with ui.column().classes('gap-0 min-w-[84px]'):
                i18n.text(ui.label(), 'metrics.queue_depth').classes('qc-metric-label')
                self.total = ui.label('—').classes('qc-metric-value').props('data-testid=metric-value')
            ui.space()
            self.levels = {}
            for priority in ('high', 'normal', 'low'):
                with ui.column().classes('items-center gap-0 min-w-[44px]').props(f'data-testid=queue-{priority}'):
                    self.levels[priority] = ui.label('—').classes('text-[16px] font-semibold leading-tight')
                    with ui.row().classes('items-center gap-1 no-wrap'):
                        ui.element('span').classes(f'qc-dot {design.PRIORITY_DOTS[priority]}')
                        i18n.text(ui.label(), f'priority.{priority}').classes(design.TINY_MUTED)

    def show(self, figures: dict | None) -> None:
        queued = figures['queued'] if figures else None
        self.total.set_text(str(sum(queued.values())) if queued else '—')
        for priority, label in self.levels.items():
            label.set_text(str(queued[priority]) if queued else '—')


class ServersCard:
    """The LLM servers: one block each — health, slots in use, models, speed, breaker trips and the last error.
    Built once per set of servers (the configuration), then only its texts change."""

    def __init__(self) -> None:
        with ui.column().classes('qc-metric w-full gap-0').props('data-testid=metric-servers'):
            with ui.row().classes('w-full items-center justify-between no-wrap'):
                i18n.text(ui.label(), 'metrics.servers').classes('qc-metric-label')
                self.summary = ui.label().classes('qc-metric-sub').props('data-testid=servers-summary')
            self.rows = ui.column().classes('w-full gap-0')
        self.names: list[str] = []
        self.blocks: dict[str, ServerBlock] = {}
        self.shown: tuple | None = None

    def show(self, views: list[dict], force: bool = False) -> None:
        now = int(time.time() * 1000)
        texts = [describe(view, now) for view in views]
        key = (i18n.current_language(), tuple(map(str, texts)))
        if key == self.shown and not force:
            return
        self.shown = key
        names = [view['name'] for view in views]
        if names != self.names:
            self.names = names
            self.rows.clear()
            with self.rows:
                self.blocks = {name: ServerBlock(name, first=i == 0) for i, name in enumerate(names)}
        up = sum(view['state'] == 'up' for view in views)
        self.summary.set_text(i18n.t('metrics.servers_up', up=up, total=len(views)) if views else '')
        for text in texts:
            self.blocks[text['name']].show(text)


class ServerBlock:
    def __init__(self, name: str, first: bool) -> None:
        border = '' if first else 'border-t border-slate-100'
        with ui.column().classes(f'w-full gap-0 py-1.5 {border}').props(f'data-testid=server-{name}') as self.element:
            with ui.row().classes('w-full items-center gap-1.5 no-wrap'):
                self.dot = ui.element('span').classes('qc-dot')
                ui.label(name).classes('text-[13.5px] font-semibold text-slate-800 truncate')
                self.kind = ui.label().classes(design.TINY_MUTED)
                ui.space()
                self.slots = ui.label().classes('text-[12.5px] font-medium text-slate-700 whitespace-nowrap') \
                    .props('data-testid=server-slots')
            self.state = ui.label().classes('qc-metric-sub').props('data-testid=server-state')
            self.models = ui.label().classes('qc-metric-sub').props('data-testid=server-models')
            self.errors = ui.label().classes('qc-metric-sub !whitespace-normal line-clamp-2') \
                .props('data-testid=server-errors')

    def show(self, text: dict) -> None:
        design.restyle(self.dot, design.HEALTH_DOTS, text['level'])
        self.element.props['data-state'] = text['level']
        self.element.update()
        self.kind.set_text(text['kind'])
        self.slots.set_text(text['slots'])
        self.state.set_text(text['state'])
        self.state.classes(replace='qc-metric-sub' + (' !text-red-600' if text['level'] == 'down' else ''))
        self.models.set_text(text['models'])
        self.models.props['title'] = text['models']  # the whole list, when it is cut
        self.models.update()
        self.errors.set_text(text['errors'])
        self.errors.props['title'] = text['error_detail']
        self.errors.update()
        self.errors.set_visibility(bool(text['errors']))


KINDS = {'ollama': 'Ollama', 'openai': 'OpenAI API'}


def describe(view: dict, now_ms: int) -> dict:
    """What the drawer says of one server (``JobStore.backends()``'s view), in the current language; UI-free."""
    t = i18n.t
    state = view['state']
    level = {'up': 'ok', 'down': 'down'}.get(state, 'unknown')
    if state == 'up':
        speed = view.get('tokens_per_s')
        line = t('server.speed', value=_number(speed)) if speed else t('server.no_answers')
        if view.get('completed'):
            line += ' · ' + t('server.done', count=view['completed'])
    elif state == 'down':
        left = (view.get('down_until') or 0) - now_ms
        line = t('server.down_for', duration=i18n.duration(left / 1000, precise=False)) if left > 0 \
            else t('server.down_probe')
    else:
        line = t('server.checking')
    models = view.get('models')
    listed = ', '.join(models) if models else t('server.models_unknown')
    if models and view.get('loaded') and view['kind'] == 'ollama':  # an OpenAI server lists what it has loaded
        listed += ' · ' + t('server.loaded', models=', '.join(view['loaded']))
    errors, detail = [], ''
    if view.get('trips'):
        errors.append(t('server.trips', count=view['trips']))
    if view.get('recent_errors'):  # the reason in the reader's language; the server's own words on hover
        last = view['recent_errors'][0]
        code = f"job_error.{last.get('code')}"
        detail = last.get('error') or ''
        errors.append(t('server.last_error', when=i18n.relative_time(
            datetime.fromtimestamp(last['at'] / 1000).astimezone()),
            error=t(code) if i18n.has_key(code) else detail or t('job_error.generic')))
    return {'name': view['name'], 'level': level, 'kind': KINDS.get(view['kind'], view['kind']),
            'slots': t('server.slots', used=view.get('running', 0), total=view['slots']), 'state': line,
            'models': listed, 'errors': ' · '.join(errors), 'error_detail': detail}


class MetricCard:
    def __init__(self, testid: str, label_key: str) -> None:
        with ui.column().classes('qc-metric').props(f'data-testid=metric-{testid}'):
            i18n.text(ui.label(), label_key).classes('qc-metric-label')
            self.value = ui.label('—').classes('qc-metric-value').props('data-testid=metric-value')
            self.sub = ui.label().classes('qc-metric-sub')

    def show(self, value: str, sub: str) -> None:
        self.value.set_text(value)
        self.sub.set_text(sub)


def _number(value: float) -> str:
    return f'{value:.0f}' if float(value).is_integer() else f'{value:.1f}'
