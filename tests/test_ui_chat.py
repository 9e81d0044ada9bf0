"""Pure helpers of the chat component: streaming markdown and translated errors."""

from __future__ import annotations

import pytest

import i18n
from tasks.jobs import JobError
from ui.components.chat import close_open_fence, job_error_message, job_error_text


@pytest.mark.parametrize(('streamed', 'shown'), [
    ('plain text', 'plain text'),
    ('code:\n```python\nx = 1', 'code:\n```python\nx = 1\n```'),
    ('code:\n```python\nx = 1\n```\nafter', 'code:\n```python\nx = 1\n```\nafter'),
    ('code:\n```\nx = 1\n``', 'code:\n```\nx = 1\n```'),
    ('text\n`', 'text'),
    ('inline `code` stays', 'inline `code` stays'),
])
def test_an_open_code_fence_is_closed_while_streaming(streamed: str, shown: str) -> None:
    assert close_open_fence(streamed) == shown


def test_refusals_are_translated_by_code_with_their_parameters() -> None:
    error = JobError('queue_full', 'The queue is full', status=429, limit=1000)
    assert job_error_message(error) == i18n.t('error.queue_full', limit=1000)
    assert '1000' in job_error_message(error)
    error = JobError('message_too_long', 'too long', limit=8000, length=9001)
    assert job_error_message(error) == 'The message has 9001 characters; the limit is 8000.'
    assert job_error_message(JobError('brand_new_code', 'Some new refusal')) == 'Something went wrong: Some new refusal'


@pytest.mark.parametrize(('code', 'key'), [
    ('llm_unreachable', 'job_error.llm_unreachable'),
    ('model_missing', 'job_error.model_missing'),
    ('time_limit', 'job_error.time_limit'),
    ('llm_timeout', 'job_error.llm_timeout'),
    ('llm_disconnected', 'job_error.llm_disconnected'),
    ('llm_busy', 'job_error.llm_busy'),
    ('llm_refused', 'job_error.llm_refused'),
    ('llm_error', 'job_error.generic'),
    (None, 'job_error.generic'),
])
def test_job_failures_get_a_translated_title_and_keep_the_detail(code: str | None, key: str) -> None:
    error = 'Ollama said something in English'
    title, detail = job_error_text(error, code)
    assert title == i18n.t(key)
    assert detail == error
