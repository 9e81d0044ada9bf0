"""The look of queuechat in one leaf module: colours, sizes, named class fragments, the stylesheet, badge styles.

Every section takes its colours and repeated Tailwind fragments from here, so that the look changes in one
place. This module imports nothing of queuechat's (not even i18n): a badge is given text already translated.
"""

from __future__ import annotations

from nicegui import ui
from pygments.formatters import HtmlFormatter

# --- colours and sizes -------------------------------------------------------------------------------------

COLORS = {
    'primary': '#4F46E5',    # indigo-600: actions, the brand
    'secondary': '#64748B',  # slate-500: quiet actions
    'accent': '#7C3AED',     # violet-600: the suggest button
    'positive': '#16A34A',
    'negative': '#DC2626',
    'warning': '#D97706',
    'info': '#0284C7',
    'dark': '#0F172A',
}
TEXT = '#0F172A'             # slate-900
MUTED = '#64748B'            # slate-500
BORDER = '#E2E8F0'           # slate-200
GRID_LINE = '#EEF2F7'
SIDEBAR_BG = '#F8FAFC'       # slate-50
USER_BUBBLE = '#F1F5F9'      # slate-100
CHART_BARS = '#A5B4FC'       # indigo-300
CHART_LINE = '#7C3AED'       # violet-600
CHART_LEGEND = '#475569'     # slate-600

HEADER_HEIGHT = 56           # px
SIDEBAR_WIDTH = 288          # px
METRICS_WIDTH = 336          # px
METRICS_BREAKPOINT = 1200    # px: the metrics drawer shows by itself above this width
THREAD_MAX_WIDTH = '48rem'

FONT = ('ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans", '
        '"Noto Sans CJK SC", sans-serif')
FONT_ZH = '"Noto Sans CJK SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", ' + FONT

# --- named class fragments (Tailwind), for what several sections repeat ------------------------------------

TITLE = 'text-[15px] font-semibold text-slate-900'               # a drawer's or card's title
HEADLINE = 'text-[20px] font-semibold text-slate-900'            # a notice in place of the thread
BODY = 'text-[14px] text-slate-500'                              # a hint under a headline
STRONG_SMALL = 'text-[13.5px] text-slate-700 font-medium'        # the pending line of a message
LIST_TITLE = 'text-[14px] text-slate-800'                        # a sidebar entry
LIST_META = 'text-[11.5px] text-slate-400'                       # times and counts under it
SMALL_MUTED = 'text-[12px] text-slate-500'
TINY_MUTED = 'text-[11px] text-slate-500'
CAPTION = 'text-[12px] text-slate-400 whitespace-nowrap'         # the meta line of a message
MUTED_ICON = 'text-slate-300'
ICON_BUTTON = 'flat round dense color=secondary'                 # props of the header's icon buttons
PILL_BUTTON = 'rounded-xl'

PRIORITY_DOTS = {'high': 'bg-rose-500', 'normal': 'bg-slate-400', 'low': 'bg-sky-500'}
HEALTH_DOTS = {'ok': 'bg-emerald-500', 'warn': 'bg-amber-500', 'down': 'bg-red-500', 'unknown': 'bg-slate-300'}
LIVE_DOTS = {'on': 'bg-emerald-500', 'off': 'bg-slate-300'}
SEGMENT = {'on': 'bg-white text-indigo-700 shadow-sm', 'off': 'text-slate-500'}   # the priority switch
COUNTER = {'over': 'text-red-600 font-medium', 'ok': 'text-slate-400'}

# --- badges --------------------------------------------------------------------------------------------------

PRIORITY_BADGES = {
    'high': 'bg-rose-50 text-rose-700 border-rose-200',
    'normal': 'bg-slate-50 text-slate-600 border-slate-200',
    'low': 'bg-sky-50 text-sky-700 border-sky-200',
}
STATUS_BADGES = {
    'queued': 'bg-amber-50 text-amber-800 border-amber-200',
    'retrying': 'bg-orange-50 text-orange-700 border-orange-300',
    'running': 'bg-indigo-50 text-indigo-700 border-indigo-200',
    'completed': 'bg-emerald-50 text-emerald-700 border-emerald-200',
    'failed': 'bg-red-50 text-red-700 border-red-200',
    'cancelled': 'bg-slate-100 text-slate-600 border-slate-200',
}
ATTEMPT_BADGE = 'qc-badge bg-amber-50 text-amber-800 border-amber-200'


def badge(styles: dict[str, str], choice: str, text: str = '') -> ui.label:
    """A small pill in the style ``styles[choice]`` (the first style when ``choice`` is unknown)."""
    label = ui.label(text).classes('qc-badge')
    set_badge(label, styles, choice, text)
    return label


def set_badge(label: ui.label, styles: dict[str, str], choice: str, text: str) -> None:
    restyle(label, styles, choice if choice in styles else next(iter(styles)))
    label.set_text(text)


def restyle(element: ui.element, styles: dict[str, str], choice: str) -> None:
    """Swap ``element``'s classes to ``styles[choice]``, dropping those of the other choices.

    Unlike ``classes(replace=...)`` this keeps every other class (including the one that hides an element).
    """
    drop = {c for value in styles.values() for c in value.split()} - set(styles[choice].split())
    element.classes(add=styles[choice], remove=' '.join(sorted(drop)) or None)


# --- the stylesheet --------------------------------------------------------------------------------------------

CODE_CSS = HtmlFormatter(nobackground=True).get_style_defs('.codehilite')

CSS = f"""
:root {{ --qc-header: {HEADER_HEIGHT}px; --qc-border: {BORDER}; --qc-muted: {MUTED}; }}
body {{ font-family: {FONT}; color: {TEXT}; background: #fff; -webkit-font-smoothing: antialiased; }}
html[lang|="zh"] body {{ font-family: {FONT_ZH}; }}
.nicegui-content {{ padding: 0; gap: 0; }}
.q-page-container {{ background: #fff; }}
.qc-header {{ height: var(--qc-header); background: rgba(255, 255, 255, .92); color: {TEXT};
  border-bottom: 1px solid {BORDER}; backdrop-filter: blur(8px); }}
.qc-logo {{ width: 30px; height: 30px; border-radius: 9px; flex: none; display: flex; align-items: center;
  justify-content: center; color: #fff; font-weight: 700; font-size: 17px; line-height: 1;
  background: linear-gradient(135deg, #6366F1 0%, #7C3AED 100%); box-shadow: 0 1px 2px rgba(79, 70, 229, .35); }}
.qc-shell {{ width: 100%; height: calc(100dvh - var(--qc-header)); display: flex; flex-direction: column;
  gap: 0; flex-wrap: nowrap; }}
.qc-main {{ flex: 1 1 auto; min-height: 0; width: 100%; display: flex; flex-direction: column; }}
.qc-scroller {{ flex: 1 1 auto; min-height: 0; width: 100%; overflow-y: auto; overflow-x: hidden;
  display: flex; flex-direction: column-reverse; flex-wrap: nowrap; gap: 0; }}
.qc-thread {{ width: 100%; max-width: {THREAD_MAX_WIDTH}; margin: 0 auto; padding: 24px 20px 12px;
  gap: 28px; flex-wrap: nowrap; }}
.qc-composer-wrap {{ width: 100%; max-width: {THREAD_MAX_WIDTH}; margin: 0 auto; padding: 4px 16px 12px; }}
.qc-composer {{ border: 1px solid {BORDER}; border-radius: 24px; background: #fff;
  box-shadow: 0 1px 2px rgba(15, 23, 42, .04), 0 8px 24px -12px rgba(15, 23, 42, .12); }}
.qc-composer:focus-within {{ border-color: #A5B4FC; box-shadow: 0 0 0 3px rgba(99, 102, 241, .12); }}
.qc-composer .q-field__control {{ padding: 0 4px; }}
.qc-composer textarea {{ line-height: 1.5 !important; font-size: 15px; }}
.qc-user-bubble {{ background: {USER_BUBBLE}; border-radius: 20px; padding: 10px 16px; white-space: pre-wrap;
  overflow-wrap: anywhere; max-width: min(85%, 36rem); font-size: 15px; line-height: 1.55; }}
.qc-avatar {{ width: 28px; height: 28px; border-radius: 50%; flex: none; display: flex; align-items: center;
  justify-content: center; color: #fff; font-weight: 700; font-size: 14px;
  background: linear-gradient(135deg, #6366F1 0%, #7C3AED 100%); }}
.qc-answer {{ display: block; font-size: 15px; line-height: 1.65; overflow-wrap: anywhere; width: 100%; }}
.qc-md {{ display: block; }}
.qc-md:first-child > :first-child {{ margin-top: 0; }}
.qc-md:last-child > :last-child {{ margin-bottom: 0; }}
.qc-answer p {{ margin: 0 0 .75em; }}
.qc-answer li > p:last-child, .qc-answer blockquote > p:last-child {{ margin-bottom: 0; }}
.qc-answer h1, .qc-answer h2, .qc-answer h3, .qc-answer h4 {{ font-size: 1.1em; line-height: 1.4;
  font-weight: 650; margin: 1em 0 .4em; }}
.qc-answer h1 {{ font-size: 1.3em; }}
.qc-answer h2 {{ font-size: 1.2em; }}
.qc-answer ul, .qc-answer ol {{ padding-inline-start: 1.5rem; margin: .25em 0 .75em; }}
.qc-answer ul {{ list-style-type: disc; }}
.qc-answer ol {{ list-style-type: decimal; }}
.qc-answer li {{ margin: .2em 0; }}
.qc-answer a {{ color: #2563EB; text-decoration: underline; }}
.qc-answer hr {{ margin: .75em 0; height: 1px; border: none; background: {BORDER}; }}
.qc-answer code {{ font-size: .88em; background: #F1F5F9; border-radius: 5px; padding: .1em .35em; }}
.qc-answer pre {{ background: #F8FAFC; color: {TEXT}; border: 1px solid {BORDER}; border-radius: 12px;
  padding: 12px 14px; overflow-x: auto; margin: .5em 0 1em; font-size: 13px; line-height: 1.55; }}
.qc-answer pre code {{ background: transparent; padding: 0; color: inherit; font-size: inherit; }}
.qc-answer .codehilite {{ background: transparent; margin: .5em 0 1em; }}
.qc-answer .codehilite pre {{ margin: 0; }}
.qc-answer table {{ border-collapse: collapse; margin: .5em 0 1em; font-size: 14px; display: block;
  overflow-x: auto; }}
.qc-answer th, .qc-answer td {{ border: 1px solid {BORDER}; padding: 6px 10px; text-align: left; }}
.qc-answer th {{ background: #F8FAFC; font-weight: 600; }}
.qc-answer blockquote {{ border-left: 3px solid #C7D2FE; padding-left: 12px; color: #475569; margin: .5em 0; }}
.qc-thinking {{ border: 1px solid {BORDER}; border-radius: 12px; background: #FAFAFB; }}
.qc-thinking .q-item {{ min-height: 36px; padding: 4px 12px; font-size: 13px; color: {MUTED}; }}
.qc-thinking .q-item__section--avatar {{ min-width: 26px; padding-right: 6px; }}
.qc-thinking .qc-answer {{ font-size: 13px; color: #475569; }}
.qc-pending {{ border: 1px solid {BORDER}; border-radius: 14px; background: #FCFCFD; padding: 10px 12px;
  width: 100%; gap: 8px; }}
.qc-error {{ border: 1px solid #FECACA; background: #FEF2F2; color: #991B1B; border-radius: 12px;
  padding: 10px 12px; font-size: 14px; width: 100%; }}
.qc-note {{ border: 1px solid {BORDER}; background: #F8FAFC; color: #475569; border-radius: 12px;
  padding: 8px 12px; font-size: 13px; }}
.qc-focus {{ animation: qc-focus 2.4s ease-out 1; border-radius: 16px; }}
@keyframes qc-focus {{ 0%, 40% {{ box-shadow: 0 0 0 3px rgba(99, 102, 241, .45); }}
  100% {{ box-shadow: 0 0 0 3px rgba(99, 102, 241, 0); }} }}
.qc-sidebar {{ background: {SIDEBAR_BG}; }}
.qc-sidebar .q-tab {{ min-height: 36px; padding: 0 10px; text-transform: none; font-weight: 600; }}
.qc-sidebar .q-tab-panels {{ background: transparent; }}
.qc-sidebar .q-tab-panel {{ padding: 0; }}
.qc-list-item {{ border-radius: 10px; padding: 7px 10px; cursor: pointer; width: 100%; gap: 2px;
  flex-wrap: nowrap; }}
.qc-list-item:hover {{ background: #EEF2F7; }}
.qc-list-item.qc-active {{ background: #E0E7FF; }}
.qc-ellipsis {{ overflow: hidden; text-overflow: ellipsis; white-space: nowrap; min-width: 0; }}
.qc-section-title {{ font-size: 11px; font-weight: 700; letter-spacing: .06em; text-transform: uppercase;
  color: {MUTED}; }}
.qc-chip {{ display: inline-flex; align-items: center; gap: 6px; height: 28px; padding: 0 10px;
  border-radius: 999px; border: 1px solid {BORDER}; background: #fff; font-size: 12.5px; font-weight: 500;
  color: #334155; white-space: nowrap; }}
.qc-dot {{ width: 8px; height: 8px; border-radius: 50%; flex: none; }}
.qc-badge {{ display: inline-flex; align-items: center; gap: 3px; padding: 1px 7px; border-radius: 999px;
  border-width: 1px; border-style: solid; font-size: 11.5px; font-weight: 600; line-height: 18px;
  white-space: nowrap; }}
.qc-metric {{ border: 1px solid {BORDER}; border-radius: 14px; background: #fff; padding: 8px 12px;
  gap: 2px; min-width: 0; }}
.qc-metric-value {{ font-size: 19px; font-weight: 650; line-height: 1.25; letter-spacing: -.01em;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }}
.qc-metric-label {{ font-size: 12px; color: {MUTED}; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }}
.qc-metric-sub {{ font-size: 11.5px; color: {MUTED}; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }}
.qc-empty-icon {{ width: 56px; height: 56px; border-radius: 16px; font-size: 28px; }}
{CODE_CSS}
"""


def apply() -> None:
    """Colours, fonts and the stylesheet of the current page."""
    ui.colors(**COLORS)
    ui.add_css(CSS)
