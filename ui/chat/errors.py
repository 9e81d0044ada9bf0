"""Refusals and failures in the user's language: the job side gives codes, the catalogs give the words."""

from __future__ import annotations

import i18n
from tasks.store import JobError


def refusal_text(error: JobError) -> str:
    """A refused request (message_too_long, queue_full, rate_limited, ...) by its code, with its parameters."""
    key = f'error.{error.code}'
    if i18n.has_key(key):
        try:
            return i18n.t(key, **error.params)
        except (KeyError, IndexError):
            pass
    return i18n.t('error.unknown', detail=error.message)


def failure_key(code: str | None) -> str:
    """The catalog key of the title of a failed job's error code (unknown codes get the generic title)."""
    key = f'job_error.{code}'
    return key if code and i18n.has_key(key) else 'job_error.generic'
