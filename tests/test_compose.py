"""compose.yml wires the services the README describes (checked structurally: no Docker engine here).

docker-compose 1.29's `config` accepted this file when it was written, and refused it without REDIS_PASSWORD or
STORAGE_SECRET set.
"""

import json
from pathlib import Path

import yaml

from tasks.backends import _parse

COMPOSE = yaml.safe_load((Path(__file__).resolve().parent.parent / "compose.yml").read_text())


def test_services_and_their_wiring():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "ollama", "llamacpp", "app", "worker"}
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert services["ollama"]["image"].startswith("ollama/ollama") and services["ollama"]["volumes"]
    assert services["llamacpp"]["image"].startswith("ghcr.io/ggml-org/llama.cpp:server")
    assert services["app"]["command"][-2:] == ["main.py", "--no-workers"]
    assert services["worker"]["command"][2:4] == ["dramatiq", "tasks.actors"]
    assert services["worker"]["environment"]["dramatiq_queue_prefetch"] == "8"
    assert set(COMPOSE["volumes"]) >= {"redis-data", "ollama-models", "llamacpp-models"}


def test_two_llm_servers_of_both_kinds_through_llm_backends():
    for name in ("app", "worker"):
        env = services_env(name)
        assert "OLLAMA_HOST" not in env
        fleet = _parse(env["LLM_BACKENDS"], "unused", 1)
        assert [(b.name, b.kind, b.url, b.slots) for b in fleet.backends] == [
            ("ollama", "ollama", "http://ollama:11434", 1), ("llamacpp", "openai", "http://llamacpp:8080", None)]
        assert json.loads(env["LLM_BACKENDS"]) == json.loads(services_env("app")["LLM_BACKENDS"])


def test_secrets_are_required_and_only_the_app_is_published():
    services = COMPOSE["services"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert services["redis"]["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")  # the healthcheck
    for name in ("app", "worker"):
        assert services_env(name)["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        assert services_env(name)["REDIS_URL"].endswith("@redis:6379/0")
    assert services_env("app")["STORAGE_SECRET"].startswith("${STORAGE_SECRET:?")
    assert [name for name, service in services.items() if service.get("ports")] == ["app"]


def services_env(name: str) -> dict:
    return COMPOSE["services"][name]["environment"]
