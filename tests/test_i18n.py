"""The translation catalogs: same keys and placeholders in every language, and every key the code uses exists."""

from __future__ import annotations

import re
import string
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import i18n
from tasks import queue

ROOT = Path(__file__).resolve().parent.parent
# The pages' code (the API and its doors speak JSON, not the catalogs).
SOURCES = sorted([*(path for path in ROOT.glob('ui/**/*.py') if 'doors' not in path.parts),
                  ROOT / 'i18n' / '__init__.py', ROOT / 'main.py'])
NAMESPACES = sorted({key.split('.')[0] for key in i18n.catalog('en')})
LITERAL_KEY = re.compile(r"""['"]((?:%s)\.[a-z0-9_]+)['"]""" % '|'.join(NAMESPACES))
DYNAMIC_KEY = re.compile(r"""f['"]((?:%s)\.)\{""" % '|'.join(NAMESPACES))


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_language_has_exactly_the_same_keys() -> None:
    english = set(i18n.catalog('en'))
    for lang in i18n.LANGUAGES:
        keys = set(i18n.catalog(lang))
        assert keys == english, f'{lang}: missing {sorted(english - keys)}, extra {sorted(keys - english)}'


DATE_FIELDS = {'year', 'month', 'month_name', 'day'}  # time.date picks the fields its language writes


def test_translations_use_the_same_placeholders_and_are_not_empty() -> None:
    english = i18n.catalog('en')
    for lang in i18n.LANGUAGES:
        for key, template in i18n.catalog(lang).items():
            assert template.strip(), f'{lang}:{key} is empty'
            if key == 'time.date':
                assert placeholders(template) <= DATE_FIELDS
            else:
                assert placeholders(template) == placeholders(english[key]), f'{lang}:{key} placeholders differ'


def test_every_key_used_in_the_code_exists() -> None:
    catalog = i18n.catalog('en')
    used: dict[str, Path] = {}
    for path in SOURCES:
        if path.exists():
            for key in LITERAL_KEY.findall(path.read_text(encoding='utf-8')):
                used.setdefault(key, path)
    missing = {key: str(path.relative_to(ROOT)) for key, path in used.items() if key not in catalog}
    assert not missing, f'keys used in code but missing from the catalogs: {missing}'
    assert len(used) > 50  # the scan found the UI's keys


def test_keys_built_at_run_time_exist_for_every_value() -> None:
    from ui.chat.message_model import PHASES
    from ui.state import OPTION_LIMITS

    catalog = i18n.catalog('en')
    families = {
        'priority.': list(queue.PRIORITY_LEVELS),
        'status.': [*queue.LIVE, *queue.TERMINAL],
        'phase.': list(PHASES),
        'month.': [str(month) for month in range(1, 13)],
        'lang.': list(i18n.LANGUAGES),
        'error.': job_error_codes(),
        'job_error.': llm_error_codes(),
        'options.': list(OPTION_LIMITS),
    }
    dynamic = {prefix for path in SOURCES if path.exists() for prefix in DYNAMIC_KEY.findall(path.read_text())}
    assert dynamic <= set(families), f'a key family built at run time is not covered here: {dynamic - set(families)}'
    for prefix, values in families.items():
        for value in values:
            assert prefix + value in catalog, f'{prefix}{value} is missing'


def llm_error_codes() -> list[str]:
    """Every error code a failed job can carry: the LLM clients' errors (tasks/llm/), the runner's own
    ('queue_lost'), the Lua steps' ('worker_lost', 'unknown_model') and the worker's time limit."""
    sources = [*(ROOT / 'tasks' / 'llm').glob('*.py'), ROOT / 'tasks' / 'runner.py']
    source = "".join(path.read_text() for path in sources)
    codes = set(re.findall(r'"((?:llm|model|queue)_[a-z_]+)"\)', source)) - {'llm_error'}
    lua = "".join(path.read_text() for path in (ROOT / 'tasks' / 'lua').glob('*.lua'))
    # A code has two words at least: the prelude's list of fields names 'error_code' beside 'cancel', no code.
    codes |= set(re.findall(r"'error_code', '([a-z]+_[a-z_]+)'", lua))
    assert {'llm_unreachable', 'model_missing', 'llm_busy', 'queue_lost', 'worker_lost', 'unknown_model'} <= codes
    return sorted(codes | {'time_limit'})


def job_error_codes() -> list[str]:
    """Every code that tasks/ and the request limits raise as a JobError (the chat box shows each translated)."""
    codes = set()
    for path in [*(ROOT / 'tasks').glob('*.py'), ROOT / 'ui' / 'limits.py']:
        codes |= set(re.findall(r'JobError\(\s*["\']([a-z_]+)["\']', path.read_text()))
    assert {'queue_full', 'message_too_long', 'empty_message'} <= codes
    return sorted(codes)


def test_the_chinese_priorities_are_high_middle_low() -> None:
    assert [i18n.t(f'priority.{p}', 'zh') for p in ('high', 'normal', 'low')] == ['高', '中', '低']
    assert i18n.t('chat.ahead_many', 'zh', count=3) == '前面还有 3 个任务'
    assert i18n.t('chat.ahead_many', 'en', count=3) == '3 tasks ahead of you'


def test_t_outside_a_page_is_english_and_falls_back_to_the_key() -> None:
    assert i18n.current_language() == 'en'
    assert i18n.t('sidebar.new_chat') == 'New chat'
    assert i18n.t('no.such_key') == 'no.such_key'


@pytest.mark.parametrize(('header', 'expected'), [
    ('', 'en'),
    ('zh-CN,zh;q=0.9,en;q=0.8', 'zh'),
    ('en-US,en;q=0.9,zh-CN;q=0.8', 'en'),
    ('fr-FR,fr;q=0.9,zh-TW;q=0.5', 'zh'),
    ('de, en;q=0.2, zh;q=0.7', 'zh'),
    ('zh;q=0, en;q=0.1', 'en'),
    ('garbage;;;', 'en'),
])
def test_accept_language_picks_the_preferred_supported_language(header: str, expected: str) -> None:
    assert i18n.from_accept_language(header) == expected


def test_normalize() -> None:
    assert i18n.normalize('zh_CN') == 'zh'
    assert i18n.normalize('EN-gb') == 'en'
    assert i18n.normalize('fr') is None
    assert i18n.normalize(None) is None


@pytest.mark.parametrize(('seconds', 'en', 'zh'), [
    (0.25, '250 ms', '250 毫秒'),
    (4.24, '4.2 s', '4.2 秒'),
    (42, '42 s', '42 秒'),
    (185, '3 min 5 s', '3 分 5 秒'),
    (3720, '1 h 2 min', '1 小时 2 分'),
    (None, '—', '—'),
])
def test_durations(seconds: float | None, en: str, zh: str) -> None:
    assert i18n.duration(seconds, 'en') == en
    assert i18n.duration(seconds, 'zh') == zh


def test_a_running_clock_says_whole_seconds() -> None:
    assert [i18n.duration(s, 'en', clock=True) for s in (0.147, 0.999, 4.24, 59.9, 60.2, 185.7)] == \
        ['0 s', '0 s', '4 s', '59 s', '1 min 0 s', '3 min 5 s']
    assert i18n.duration(3725, 'zh', clock=True) == '1 小时 2 分'


def test_estimates_are_rounded() -> None:
    assert i18n.duration(0.2, 'en', precise=False) == '1 s'
    assert i18n.duration(14.6, 'en', precise=False) == '15 s'
    assert i18n.duration(150, 'zh', precise=False) == '2 分钟'


def test_relative_times_and_dates() -> None:
    now = datetime(2025, 3, 5, 12, 0, tzinfo=timezone.utc)
    assert i18n.relative_time(now - timedelta(seconds=20), 'en', now=now) == 'just now'
    assert i18n.relative_time((now - timedelta(minutes=5)).isoformat(), 'zh', now=now) == '5 分钟前'
    assert i18n.relative_time(now - timedelta(hours=3), 'en', now=now) == '3 h ago'
    assert i18n.relative_time(now - timedelta(hours=30), 'zh', now=now) == '昨天'
    assert i18n.relative_time(now - timedelta(days=3), 'en', now=now) == 'Mar 2, 2025'
    assert i18n.date('2025-03-02T08:00:00+00:00', 'zh') == '2025年3月2日'
    assert i18n.relative_time(None) == ''


def test_percent() -> None:
    assert i18n.percent(1.0, 'en') == '100%'
    assert i18n.percent(0.8571, 'zh') == '85.7%'
