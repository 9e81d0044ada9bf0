"""The settings object and its documentation stay in step."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme_table():
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_fixed_names_and_defaults(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=None)
    assert settings.ollama_host == "http://localhost:11434" and settings.ollama_model == "qwen3:latest"
    assert (settings.port, settings.host, settings.worker_processes, settings.max_prompt_chars) == \
        (8080, "127.0.0.1", 2, 8000)
    assert (settings.queue_concurrency, settings.queue_rate_per_min, settings.queue_max_retries,
            settings.queue_max_waiting, settings.queue_recovery_seconds) == (1, 10, 3, 1000, 20)


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("QUEUE_CONCURRENCY", "7")
    monkeypatch.setenv("OLLAMA_HOST", "http://gpu:11434")
    settings = Settings(_env_file=None)
    assert settings.queue_concurrency == 7 and settings.ollama_host == "http://gpu:11434"


@pytest.mark.parametrize("value", ["0", "0.001", "inf", "1e20", "nan"])
def test_a_check_period_redis_cannot_keep_as_a_lock_is_refused(monkeypatch, value):
    # Each was let through once: the lock's PX came out 0, infinite or too large, every check failed and the LLM
    # chip stayed red with nothing in the log.
    monkeypatch.setenv("LLM_CHECK_SECONDS", value)
    with pytest.raises(ValidationError, match="llm_check_seconds"):
        Settings(_env_file=None)
