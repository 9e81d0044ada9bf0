"""Translations for the UI: ``t('chat.send')`` in the language of the NiceGUI client that is being served.

Catalogs are flat JSON files beside this module (``en.json``, ``zh.json``) with the same keys; values are
``str.format`` templates (``t('chat.ahead_many', count=3)``).

Language per client::

    i18n.init_language()            # in a page builder: app.storage.user['lang'], else Accept-Language
    i18n.set_language('zh')         # the toggle: stores it for the user and re-translates this client in place
    i18n.on_change(callback)        # re-run ``callback()`` after this client's language changed
    i18n.text(ui.label(), 'app.name')           # a label whose text follows the language
    i18n.prop(ui.input(), 'placeholder', 'chat.placeholder')

Outside a UI context (tests, background code without a client) ``t`` uses English unless told ``lang=``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from nicegui import app, background_tasks
from nicegui.context import context
from nicegui.slot import Slot

LANGUAGES = ('en', 'zh')
DEFAULT_LANGUAGE = 'en'
QUASAR_LANGUAGES = {'en': 'en-US', 'zh': 'zh-CN'}
_CLIENT_KEY = 'qc_lang'
_DIR = Path(__file__).resolve().parent

E = TypeVar('E')

_subscribers: dict[str, list[tuple[Any, Callable[[], Any]]]] = {}  # client id -> (owner element, callback)
_sizes: dict[str, int] = {}
log = logging.getLogger('queuechat.i18n')


def t(key: str, lang: str | None = None, **kw: Any) -> str:
    """The text of ``key`` in ``lang`` (default: the current client's language), formatted with ``kw``."""
    lang = lang or current_language()
    template = catalog(lang).get(key)
    if template is None:
        template = catalog(DEFAULT_LANGUAGE).get(key, key)
    return template.format(**kw) if kw else template


def has_key(key: str) -> bool:
    return key in catalog(DEFAULT_LANGUAGE)


@cache
def catalog(lang: str) -> dict[str, str]:
    return json.loads((_DIR / f'{lang}.json').read_text(encoding='utf-8'))


# --- the language of a client -------------------------------------------------------------------------

def current_language() -> str:
    """The language of the NiceGUI client in whose context this runs ('en' outside any client)."""
    if not Slot.get_stack():
        return DEFAULT_LANGUAGE
    return context.client.storage.get(_CLIENT_KEY, DEFAULT_LANGUAGE)


def init_language() -> str:
    """Pick this client's language in a page builder: the user's choice, else the browser's Accept-Language."""
    lang = normalize(app.storage.user.get('lang')) if _has_user_storage() else None
    if lang is None:
        request = context.client.request
        lang = from_accept_language(request.headers.get('accept-language', '') if request else '')
    context.client.storage[_CLIENT_KEY] = lang
    return lang


def set_language(lang: str) -> None:
    """Switch the current client (and the user's default) to ``lang``; subscribers re-translate in place."""
    lang = normalize(lang) or DEFAULT_LANGUAGE
    client = context.client
    if _has_user_storage():
        app.storage.user['lang'] = lang
    if client.storage.get(_CLIENT_KEY) == lang:
        return
    client.storage[_CLIENT_KEY] = lang
    subscribers = _prune(client.id)
    for _, callback in subscribers:
        try:
            result = callback()
            if inspect.isawaitable(result):
                background_tasks.create(result, name='language change', context=client)
        except Exception:  # one broken section must not keep the others in the old language
            log.exception('re-translating after a language change failed')


def on_change(callback: Callable[[], Any], owner: Any = None) -> None:
    """Call ``callback()`` after every language change of the current client.

    The callback lives as long as the client, or until the element ``owner`` is deleted (pass the element the
    callback updates, so that views rebuilt within one page don't pile up callbacks).
    """
    client = context.client
    subscribers = _subscribers.get(client.id)
    if subscribers is None:
        subscribers = _subscribers[client.id] = []
        client.on_delete(lambda: (_subscribers.pop(client.id, None), _sizes.pop(client.id, None)))
    subscribers.append((owner, callback))
    if len(subscribers) >= 2 * _sizes.get(client.id, 64):
        _sizes[client.id] = max(64, len(_prune(client.id)))


def _prune(client_id: str) -> list[tuple[Any, Callable[[], Any]]]:
    """Drop the callbacks whose owner element was deleted; return the rest."""
    alive = [(owner, callback) for owner, callback in _subscribers.get(client_id, [])
             if owner is None or not owner.is_deleted]
    if client_id in _subscribers:
        _subscribers[client_id] = alive
    return alive


def text(element: E, key: str, **kw: Any) -> E:
    """Set ``element``'s text to ``t(key)`` now and after every language change of this client."""
    element.set_text(t(key, **kw))  # type: ignore[attr-defined]
    on_change(lambda: element.set_text(t(key, **kw)), owner=element)  # type: ignore[attr-defined]
    return element


def prop(element: E, name: str, key: str, **kw: Any) -> E:
    """Set the prop ``name`` of ``element`` to ``t(key)`` now and after every language change."""
    def apply() -> None:
        element.props[name] = t(key, **kw)  # type: ignore[attr-defined]
        element.update()  # type: ignore[attr-defined]
    apply()
    on_change(apply, owner=element)
    return element


def tooltip(element: E, key: str, **kw: Any) -> E:
    """A tooltip on ``element`` that follows the language."""
    from nicegui import ui
    with element:  # type: ignore[attr-defined]
        text(ui.tooltip(), key, **kw)
    return element


def normalize(lang: object) -> str | None:
    """'zh-CN', 'zh_TW', 'ZH' -> 'zh'; 'en-GB' -> 'en'; anything else -> None."""
    if not isinstance(lang, str):
        return None
    base = lang.strip().lower().replace('_', '-').split('-')[0]
    return base if base in LANGUAGES else None


def from_accept_language(header: str) -> str:
    """The supported language the browser prefers most (RFC 9110 quality values), else English."""
    best, best_q = DEFAULT_LANGUAGE, -1.0
    for position, part in enumerate(header.split(',')):
        tag, _, params = part.strip().partition(';')
        lang = normalize(tag)
        if lang is None:
            continue
        match = re.search(r'q\s*=\s*([0-9.]+)', params)
        try:
            quality = float(match.group(1)) if match else 1.0
        except ValueError:
            continue
        score = quality - position * 1e-6  # earlier wins a tie
        if score > best_q:
            best, best_q = lang, score
    return best


def _has_user_storage() -> bool:
    try:
        app.storage.user  # noqa: B018 - raises outside a request or without a storage secret
    except (RuntimeError, AssertionError):
        return False
    return True


# --- formatting -----------------------------------------------------------------------------------------

def duration(seconds: float | None, lang: str | None = None, *, precise: bool = True, clock: bool = False) -> str:
    """A short human duration: '850 ms', '4.2 s', '3 min 5 s', '1 h 2 min' (or in Chinese).

    ``precise=False`` (estimates) rounds to whole seconds below a minute and to whole minutes above.
    ``clock=True`` (a clock that runs, told once a second): the whole seconds gone by, '0 s', '59 s', '1 min 0 s' —
    no milliseconds that would stand still for a second, no tenths that would jump.
    """
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return '—'
    seconds = max(0.0, float(seconds))
    if clock:
        seconds = float(math.floor(seconds))
        if seconds < 60:
            return t('duration.seconds', lang, value=int(seconds))
    if not precise:
        if seconds < 60:
            return t('duration.seconds', lang, value=max(1, int(round(seconds))))
        minutes = int(round(seconds / 60))
        return t('duration.minutes_only', lang, minutes=minutes) if minutes < 60 else \
            t('duration.hours', lang, hours=minutes // 60, minutes=minutes % 60)
    if seconds < 1:
        return t('duration.ms', lang, value=int(round(seconds * 1000)))
    if seconds < 10:
        return t('duration.seconds', lang, value=f'{seconds:.1f}')
    if seconds < 60:
        return t('duration.seconds', lang, value=int(round(seconds)))
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return t('duration.minutes', lang, minutes=minutes, seconds=secs)
    hours, minutes = divmod(minutes, 60)
    return t('duration.hours', lang, hours=hours, minutes=minutes)


def duration_ms(ms: float | None, lang: str | None = None) -> str:
    return duration(None if ms is None else ms / 1000, lang)


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or value == '':
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def relative_time(value: str | datetime | None, lang: str | None = None, now: datetime | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', 'yesterday', then a date: what a sidebar shows."""
    moment = parse_time(value)
    if moment is None:
        return ''
    now = now or datetime.now(timezone.utc)
    seconds = (now - moment).total_seconds()
    if seconds < 60:
        return t('time.just_now', lang)
    if seconds < 3600:
        return t('time.minutes_ago', lang, count=int(seconds // 60))
    if seconds < 86400:
        return t('time.hours_ago', lang, count=int(seconds // 3600))
    if seconds < 2 * 86400:
        return t('time.yesterday', lang)
    return date(moment, lang)


def date(value: str | datetime | None, lang: str | None = None) -> str:
    """'Mar 3, 2025' / '2025年3月3日'."""
    moment = parse_time(value)
    if moment is None:
        return ''
    month_name = t(f'month.{moment.month}', lang)
    return t('time.date', lang, year=moment.year, month=moment.month, month_name=month_name, day=moment.day)


def percent(fraction: float, lang: str | None = None) -> str:
    value = fraction * 100
    return t('format.percent', lang, value=f'{value:.0f}' if value in (0, 100) else f'{value:.1f}')
