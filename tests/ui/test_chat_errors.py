"""Refusals and failures of jobs, in the user's language by their codes (ui/chat/errors.py)."""

from __future__ import annotations

import pytest

import i18n
from tasks.store import JobError
from ui.chat.errors import failure_key, refusal_text


def test_refusals_are_translated_by_code_with_their_parameters() -> None:
    error = JobError('queue_full', 'The queue is full', status=429, limit=1000)
    assert refusal_text(error) == i18n.t('error.queue_full', limit=1000)
    assert '1000' in refusal_text(error)
    error = JobError('message_too_long', 'too long', limit=8000, length=9001)
    assert refusal_text(error) == 'The message has 9001 characters; the limit is 8000.'
    assert refusal_text(JobError('brand_new_code', 'Some new refusal')) == 'Something went wrong: Some new refusal'


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
def test_job_failures_get_a_translated_title(code: str | None, key: str) -> None:
    assert failure_key(code) == key
