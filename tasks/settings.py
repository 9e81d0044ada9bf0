"""The one settings object: every tunable of queuechat, read from the environment and `.env`.

Both the UI process and the worker processes import :data:`settings`; `main.py` passes the
embedded Redis URL to its children through the environment, so everyone agrees on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- where things are -------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis to use; unset = start the embedded one")
    ollama_host: str = Field("http://localhost:11434", description="Ollama server base URL")
    ollama_model: str = Field("qwen3:latest", description="Default model")
    llm_backends: str | None = Field(None, description="The LLM servers: a TOML file or inline JSON (README, "
                                     "'Many LLM servers'); unset = one Ollama at OLLAMA_HOST")
    host: str = Field("127.0.0.1", description="UI/API bind address")
    port: int = Field(8080, description="UI/API port")
    data_dir: Path = Field(Path("./data"), description="Embedded Redis data (AOF) and app storage")
    worker_processes: int = Field(2, ge=1, description="Dramatiq worker processes started by main.py")
    worker_threads: int = Field(8, ge=1, description="Threads per worker process")

    # --- input limits -----------------------------------------------------------------------
    max_prompt_chars: int = Field(8000, ge=1, description="Longest accepted message")
    api_rate_per_min: int = Field(120, ge=0, description="Requests per minute per client (0 = off)")
    max_streams_per_client: int = Field(20, ge=1, description="Open SSE streams (and pages) per client")

    # --- the queue --------------------------------------------------------------------------
    queue_concurrency: int = Field(1, ge=1, description="LLM calls in flight, across all workers: what the LLM "
                                   "server really runs at once (Ollama: OLLAMA_NUM_PARALLEL)")
    queue_rate_per_min: int = Field(10, ge=0, description="Job starts per minute (0 = off)")
    queue_max_retries: int = Field(3, ge=0, description="Retries for transient LLM errors")
    queue_max_waiting: int = Field(1000, ge=1, description="Waiting jobs before 429")
    queue_max_waiting_per_user: int = Field(20, ge=1, description="Waiting jobs of one identity before 429")
    queue_aging_seconds: float = Field(0, ge=0, description="Promote a job one level after waiting this long "
                                       "(0 = off)")
    queue_recovery_seconds: float = Field(20, gt=1, description="Bound on crash recovery")
    retry_min_backoff_ms: int = Field(1000, ge=1, description="First retry delay (exponential, jittered)")
    retry_max_backoff_ms: int = Field(8000, ge=1, description="Longest retry delay")

    # --- the LLM call -----------------------------------------------------------------------
    llm_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to the LLM")
    llm_first_token_timeout: float = Field(120.0, gt=0, description="Seconds to wait for the first chunk")
    llm_idle_timeout: float = Field(60.0, gt=0, description="Seconds of silence mid-answer before retry")
    llm_check_seconds: float = Field(10.0, ge=0.1, le=86400, description="How often the LLM servers are checked (up, models, "
                                     "loaded, slots): by one process at a time, whichever's turn it is")
    llm_breaker_cooldown_seconds: float = Field(10.0, gt=0, description="How long an LLM server that failed is "
                                                "left alone before one job tries it again")
    job_time_limit: float = Field(600.0, gt=0, description="Hard limit on one LLM call (seconds)")
    expected_tokens: int = Field(400, ge=1, description="Answer length assumed for progress")
    suggest_max_tokens: int = Field(80, ge=1, description="Length cap of a suggested question")

    # --- retention and display ----------------------------------------------------------------
    history_size: int = Field(50, ge=1, description="Tasks kept in each user's history")
    context_turns: int = Field(10, ge=0, description="Earlier turns sent as context")
    stream_ttl_seconds: int = Field(86400, ge=1, description="How long finished token streams stay")
    job_retention_hours: float = Field(168, gt=0, description="How long finished jobs, and conversations and "
                                       "histories after their last message, are kept")

    # --- who may do what (README: "Security") ------------------------------------------------------
    storage_secret: str | None = Field(None, description="Signs browser sessions; unset = a random secret made "
                                       "on first start in DATA_DIR (mode 0600)")
    ui_max_priority: Literal["high", "normal", "low"] = Field("high", description="Highest priority a browser "
                                                              "user may choose")
    api_anonymous: Literal["loopback", "always", "never"] = Field(
        "loopback", description="API use without a key: from this machine only, from anywhere, or never")
    admin_users: str = Field("", description="Comma-separated identities (key names, proxy users) that may "
                             "use /admin")
    trusted_proxies: str = Field("", description="Comma-separated addresses (or CIDRs) whose X-Forwarded-For "
                                 "and AUTH_TRUSTED_HEADER are believed")
    auth_trusted_header: str = Field("", description="A header naming the signed-in user, set by a trusted "
                                     "reverse proxy (e.g. X-Forwarded-User)")

    @property
    def lease_ttl_ms(self) -> int:
        """A running job's lease lives half the recovery window, so a dead worker's job is back in time."""
        return int(self.queue_recovery_seconds * 1000 / 2)

    @property
    def reap_grace_ms(self) -> int:
        """How long after its lease expired a job is recovered: time for main.py to kill a frozen worker first."""
        return min(2000, int(self.queue_recovery_seconds * 1000 / 4))

    @property
    def max_attempts(self) -> int:
        return self.queue_max_retries + 1

    @property
    def admins(self) -> set[str]:
        return {name.strip() for name in self.admin_users.split(",") if name.strip()}

    @property
    def proxies(self) -> list[str]:
        return [name.strip() for name in self.trusted_proxies.split(",") if name.strip()]

    @property
    def heartbeat_timeout_ms(self) -> int:
        """Dramatiq's own unacked messages come back within the same half window."""
        return int(self.queue_recovery_seconds * 1000 / 2)


settings = Settings()
