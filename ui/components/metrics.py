"""The metrics drawer: live cards from ``metrics.stats()`` and a 30-minute chart from ``metrics.series()``.

Figures come through the bus's shared cache, so every open page together reads Redis about once a second.
"""

from __future__ import annotations

from datetime import datetime

from nicegui import ui

import i18n
from ui import bus, theme

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
PRIORITY_DOTS = {'high': 'bg-rose-500', 'normal': 'bg-slate-400', 'low': 'bg-sky-500'}


def create() -> MetricsPanel:
    return MetricsPanel()


class MetricsPanel:
    def __init__(self) -> None:
        self.figures: dict | None = None
        self.points: list[dict] | None = None
        self.drawer = ui.right_drawer(value=False).props("show-if-above") \
            .props(f'width={theme.METRICS_WIDTH} breakpoint={theme.METRICS_BREAKPOINT} bordered '
                   'data-testid=metrics-panel') \
            .classes('bg-white p-0')
        with self.drawer, ui.column().classes('w-full gap-2.5 p-4 no-wrap'):
            with ui.row().classes('w-full items-center justify-between no-wrap'):
                i18n.text(ui.label(), 'metrics.title').classes('text-[15px] font-semibold text-slate-900')
                with ui.row().classes('items-center gap-1.5 no-wrap'):
                    self.live_dot = ui.element('span').classes('qc-dot bg-slate-300')
                    self.live = ui.label().classes('text-[12px] text-slate-500').props('data-testid=metrics-live')
            self.depth = QueueDepthCard()
            with ui.element('div').classes('grid grid-cols-2 gap-2 w-full'):
                self.cards = {testid: MetricCard(testid, key) for testid, key in CARDS}
            with ui.column().classes('qc-metric w-full gap-1'):
                i18n.text(ui.label(), 'metrics.chart_title').classes('qc-metric-label')
                self.chart = ui.echart(self._chart_options([])).classes('w-full h-[190px]') \
                    .props('data-testid=metrics-chart')
        self._show()
        i18n.on_change(self._on_language)
        ui.timer(1.0, self.refresh)

    async def refresh(self) -> None:
        if self.drawer.value is False:  # hidden (narrow screen): nothing to show
            return
        self.figures = await bus.stats()
        points = await bus.series()
        self._show()
        if points is not None and points != self.points:
            self.points = points
            self._show_chart()

    def _on_language(self) -> None:
        self._show()
        self._show_chart()

    def _show(self) -> None:
        figures = self.figures
        live = figures is not None
        theme.restyle(self.live_dot, {'on': 'bg-emerald-500', 'off': 'bg-slate-300'}, 'on' if live else 'off')
        self.live.set_text(i18n.t('metrics.live' if live else 'metrics.offline'))
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
        axis_label = {'fontSize': 10, 'color': theme.MUTED}
        split_line = {'lineStyle': {'color': '#EEF2F7'}}
        empty = not any(throughput)
        return {
            'animation': False,
            'graphic': [{'id': 'empty', 'type': 'text', 'left': 'center', 'top': 'middle', 'invisible': not empty,
                         'silent': True, 'style': {'text': t('metrics.chart_empty'), 'fill': theme.MUTED,
                                                   'fontSize': 12}}],
            'grid': {'left': 8, 'right': 8, 'top': 34, 'bottom': 4, 'containLabel': True},
            'tooltip': {'trigger': 'axis', 'confine': True, 'textStyle': {'fontSize': 12}},
            'legend': {'top': 0, 'left': 0, 'itemWidth': 12, 'itemHeight': 8, 'itemGap': 10,
                       'textStyle': {'fontSize': 11, 'color': '#475569'}},
            'xAxis': {'type': 'category', 'data': labels, 'axisTick': {'show': False},
                      'axisLine': {'lineStyle': {'color': theme.BORDER}},
                      'axisLabel': {**axis_label, 'interval': 9}},
            'yAxis': [
                {'type': 'value', 'minInterval': 1, 'axisLabel': axis_label, 'splitLine': split_line},
                {'type': 'value', 'axisLabel': {**axis_label, 'formatter': '{value}s'}, 'splitLine': {'show': False}},
            ],
            'series': [
                {'name': t('metrics.chart_throughput'), 'type': 'bar', 'data': throughput, 'barMaxWidth': 8,
                 'itemStyle': {'color': '#A5B4FC', 'borderRadius': [3, 3, 0, 0]}},
                {'name': t('metrics.chart_latency'), 'type': 'line', 'yAxisIndex': 1, 'data': latency,
                 'connectNulls': True, 'smooth': True, 'symbol': 'circle', 'symbolSize': 4,
                 'lineStyle': {'width': 2, 'color': '#7C3AED'}, 'itemStyle': {'color': '#7C3AED'}},
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
                        ui.element('span').classes(f'qc-dot {PRIORITY_DOTS[priority]}')
                        i18n.text(ui.label(), f'priority.{priority}').classes('text-[11px] text-slate-500')

    def show(self, figures: dict | None) -> None:
        queued = figures['queued'] if figures else None
        self.total.set_text(str(sum(queued.values())) if queued else '—')
        for priority, label in self.levels.items():
            label.set_text(str(queued[priority]) if queued else '—')


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
