"""What a message shows, from its job's state alone (ui/chat/message_model.py): no browser, no Redis."""

from __future__ import annotations

import json

import i18n
from tasks.fold import JobState
from ui.chat.message_model import Duration, MessageModel, Text

NOW = 1_700_000_060_000  # ms


def job(**fields) -> JobState:
    state = JobState(job_id='a' * 32, prompt='hi', model='qwen3:latest', created_at=NOW - 60_000)
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def status(**snapshot) -> tuple[str, dict]:
    return '1-1', {'k': 'status', 'd': json.dumps(snapshot)}


def test_queued_with_its_position_and_eta() -> None:
    model = MessageModel(job(status='queued', phase='queued', position=3, eta_seconds=42))
    assert model.badge == Text('status.queued') and model.badge_visible
    assert model.headline(NOW) == Text('chat.ahead_many', {'count': 3})
    assert model.headline(NOW).say() == '3 tasks ahead of you'
    assert model.clock(NOW) == Text('chat.eta', {'duration': Duration(42, precise=False)})
    assert model.clock(NOW).say() == 'starts in about 42 s'
    assert model.progress == 0 and model.progress_indeterminate
    assert model.icon == 'schedule'
    assert model.stop_enabled and model.stop_label == Text('chat.stop')
    assert model.error is None and model.note is None and model.attempt is None
    model.job.position = 0
    assert model.headline(NOW).say() == 'You are next'
    model.job.position = None
    assert model.headline(NOW) == Text('chat.waiting')


def test_running_phases_and_progress() -> None:
    model = MessageModel(job(status='running', phase='loading', progress=8, attempts=1))
    assert model.headline(NOW).say() == 'Loading the model'
    assert model.phase == Text('chat.progress', {'progress': 8})
    assert model.progress == 0.08 and not model.progress_indeterminate
    assert model.icon == 'edit_note'
    assert model.clock(NOW) == Text('chat.elapsed', {'duration': Duration(60.0, clock=True)})
    assert model.thinking_label == Text('chat.thinking_now')  # no answer yet
    model.job.phase, model.job.answer = 'generating', 'Hello'
    assert model.headline(NOW).say() == 'Writing the answer'
    assert model.thinking_label == Text('chat.thinking')
    model.job.phase = 'brand-new-phase'
    assert model.headline(NOW) == Text('status.running')


def test_retrying_counts_down_to_the_next_attempt() -> None:
    model = MessageModel(job(status='retrying', phase='retrying', attempts=1, retry_at=NOW + 2_500,
                             error='connection refused', error_code='llm_unreachable'))
    assert model.badge.say() == 'Retrying' and model.badge_visible
    assert model.headline(NOW) == Text('chat.retrying', {'attempt': 2, 'seconds': 3})
    assert model.headline(NOW).say() == 'The LLM failed; attempt 2 starts in 3 s'
    assert model.headline(NOW + 1_000).say() == 'The LLM failed; attempt 2 starts in 2 s'
    assert model.headline(NOW + 3_000) == Text('chat.retrying_now', {'attempt': 2})
    assert model.attempt == Text('chat.attempt', {'attempt': 2})
    assert model.icon == 'update'
    assert model.error is None  # the error box is for a job that gave up
    assert model.phase.say() == 'Retrying'
    assert i18n.t('chat.retrying', 'zh', attempt=2, seconds=3) == 'LLM 出错，3 秒后开始第 2 次尝试'


def test_a_job_whose_servers_are_all_down_says_so_instead_of_counting_down() -> None:
    model = MessageModel(job(status='retrying', phase='retrying', attempts=1, retry_at=NOW + 2_500, position=0,
                             blocked='backend_down', error='not reachable', error_code='llm_unreachable'))
    assert model.headline(NOW).say() == 'No server for qwen3:latest is up: it waits until one is back'
    model.job.status, model.job.retry_at = 'queued', None
    assert model.headline(NOW) == Text('chat.blocked', {'model': 'qwen3:latest'})
    assert i18n.t('chat.blocked', 'zh', model='qwen3:latest') == '没有可用的 qwen3:latest 服务器：等待其恢复'
    model.job.blocked = None
    assert model.headline(NOW).say() == 'You are next'


def test_cancelling_is_shown_from_the_shared_state_and_from_a_local_stop() -> None:
    model = MessageModel(job(status='running', phase='generating', progress=40, attempts=1))
    model.job.cancelling = True
    assert model.cancelling and model.headline(NOW).say() == 'Stopping…'
    assert not model.stop_enabled and model.stop_label == Text('chat.stopping')
    assert model.icon == 'pause_circle'
    other = MessageModel(job(status='queued', position=2))
    other.request_stop()
    assert other.cancelling and not other.stop_enabled and not other.progress_indeterminate
    other.stop_refused()
    assert not other.cancelling and other.stop_enabled


def test_cancelled_with_and_without_a_partial_answer() -> None:
    model = MessageModel(job(status='cancelled', phase='cancelled', answer='Half an ans', finished_at=NOW))
    assert model.finished and model.badge.say() == 'Cancelled'
    assert model.note == Text('chat.cancelled_partial')
    assert not model.stop_enabled
    assert MessageModel(job(status='cancelled', answer='')).note == Text('chat.cancelled_note')


def test_failed_shows_a_translated_title_and_the_workers_words() -> None:
    model = MessageModel(job(status='failed', phase='failed', attempts=3, error_code='model_missing',
                             error='model "x" not found, try pulling it first (gave up after 3 attempts)'))
    title, detail = model.error
    assert title == Text('job_error.model_missing')
    assert title.say() == 'This model is not installed on the LLM server: pick another model.'
    assert i18n.t(title.key, 'zh') != title.say()
    assert 'not found' in detail
    assert MessageModel(job(status='failed', error_code='who_knows')).error[0] == Text('job_error.generic')


def test_an_answer_cut_at_its_length_limit_gets_a_note() -> None:
    model = MessageModel(job(status='completed', phase='done', answer='Long…', done_reason='length',
                             finished_at=NOW - 30_000))
    assert model.note == Text('chat.length_cut')
    assert model.note.say() == 'The answer was cut at its length limit.'
    assert i18n.t('chat.length_cut', 'zh') == '回答已达到长度上限，被截断。'
    assert not model.badge_visible
    assert model.meta(NOW) == Text('chat.elapsed', {'duration': Duration(30.0)})
    assert MessageModel(job(status='completed', done_reason='stop', answer='ok')).note is None


def test_changes_are_announced_as_text_or_state() -> None:
    shared = job(status='queued')
    model = MessageModel(shared)
    texts, states = [], []
    model.text_changed.subscribe(lambda: texts.append(1))
    model.state_changed.subscribe(lambda: states.append(1))
    model.update([])  # only the position moved
    assert (len(texts), len(states)) == (0, 1)
    shared.apply([status(status='running', phase='generating', progress=10, attempts=1)])
    model.update([status()])
    assert (len(texts), len(states)) == (0, 2)
    model.update([('2-1', {'k': 'token', 'd': 'Hel'}), ('2-2', {'k': 'token', 'd': 'lo'})])
    assert (len(texts), len(states)) == (1, 2)
    model.update([('3-1', {'k': 'done', 'd': '{}'})])
    assert (len(texts), len(states)) == (2, 3)
