"""compose.yml wires the four services the README describes (checked structurally: no Docker engine here).

`docker compose config` (or docker-compose 1.29's `config -q`) accepted this file when it was written.
"""

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parent.parent / "compose.yml").read_text())


def test_services_and_their_wiring():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "ollama", "app", "worker"}
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert services["ollama"]["image"].startswith("ollama/ollama") and services["ollama"]["volumes"]
    assert services["app"]["command"][-2:] == ["main.py", "--no-workers"]
    assert services["worker"]["command"][2:4] == ["dramatiq", "tasks.actors"]
    for name in ("app", "worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis://redis:6379/0" and env["OLLAMA_HOST"] == "http://ollama:11434"
    assert services["worker"]["environment"]["dramatiq_queue_prefetch"] == "8"
    assert set(COMPOSE["volumes"]) >= {"redis-data", "ollama-models"}
