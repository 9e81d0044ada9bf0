"""The one settings object: every tunable of queuechat, read from the environment and `.env`.

Both the UI process and the worker processes import :data:`settings`; `main.py` passes the
embedded Redis URL to its children through the environment, so everyone agrees on it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- where things are -------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis to use; unset = start the embedded one")
    ollama_host: str = Field("http://localhost:11434", description="Ollama server base URL")
    ollama_model: str = Field("qwen3:latest", description="Default model")
    host: str = Field("127.0.0.1", description="UI/API bind address")
    port: int = Field(8080, description="UI/API port")
    data_dir: Path = Field(Path("./data"), description="Embedded Redis data (AOF) and app storage")
    worker_processes: int = Field(2, ge=1, description="Dramatiq worker processes started by main.py")
    worker_threads: int = Field(8, ge=1, description="Threads per worker process")

    # --- input limits -----------------------------------------------------------------------
    max_prompt_chars: int = Field(8000, ge=1, description="Longest accepted message")
    api_rate_per_min: int = Field(120, ge=0, description="Requests per minute per client (0 = off)")

    # --- the queue --------------------------------------------------------------------------
    queue_concurrency: int = Field(3, ge=1, description="LLM calls in flight, across all workers")
    queue_rate_per_min: int = Field(10, ge=0, description="Job starts per minute (0 = off)")
    queue_max_retries: int = Field(3, ge=0, description="Retries for transient LLM errors")
    queue_max_waiting: int = Field(1000, ge=1, description="Waiting jobs before 429")
    queue_recovery_seconds: float = Field(20, gt=1, description="Bound on crash recovery")
    retry_min_backoff_ms: int = Field(1000, ge=1, description="First retry delay (exponential, jittered)")
    retry_max_backoff_ms: int = Field(8000, ge=1, description="Longest retry delay")

    # --- the LLM call -----------------------------------------------------------------------
    llm_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to the LLM")
    llm_first_token_timeout: float = Field(120.0, gt=0, description="Seconds to wait for the first chunk")
    llm_idle_timeout: float = Field(60.0, gt=0, description="Seconds of silence mid-answer before retry")
    job_time_limit: float = Field(600.0, gt=0, description="Hard limit on one LLM call (seconds)")
    expected_tokens: int = Field(400, ge=1, description="Answer length assumed for progress")
    suggest_max_tokens: int = Field(80, ge=1, description="Length cap of a suggested question")

    # --- retention and display ----------------------------------------------------------------
    history_size: int = Field(50, ge=1, description="Tasks kept in each user's history")
    context_turns: int = Field(10, ge=0, description="Earlier turns sent as context")
    stream_ttl_seconds: int = Field(86400, ge=60, description="How long finished token streams stay")
    storage_secret: str = Field("queuechat-dev-secret", description="Signs browser session cookies")

    @property
    def lease_ttl_ms(self) -> int:
        """A running job's lease lives half the recovery window, so a dead worker's job is back in time."""
        return int(self.queue_recovery_seconds * 1000 / 2)

    @property
    def heartbeat_timeout_ms(self) -> int:
        """Dramatiq's own unacked messages come back within the same half window."""
        return int(self.queue_recovery_seconds * 1000 / 2)


settings = Settings()
