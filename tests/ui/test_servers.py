"""What the metrics drawer's servers card and the header's LLM chip say of the fleet (``JobStore.backends()``'s
views), in both languages: no browser, no Redis."""

from __future__ import annotations

import pytest

import i18n
from ui.sections.header import llm_chip
from ui.sections.metrics import describe

NOW = 1_700_000_000_000


def view(name: str, state: str = "up", **fields) -> dict:
    return {"name": name, "kind": "ollama", "state": state, "models": ["qwen3:8b", "gemma3:4b"], "loaded": [],
            "slots": 2, "running": 1, "failures": 0, "trips": 0, "down_until": 0, "completed": 0, "failed": 0,
            "errors": 0, "tokens": 0, "generation_ms": 0, "tokens_per_s": None, "recent_errors": [], **fields}


@pytest.fixture(params=["en", "zh"])
def lang(request, monkeypatch) -> str:
    monkeypatch.setattr(i18n, "current_language", lambda: request.param)
    return request.param


def test_a_server_up_shows_its_slots_models_and_speed(lang):
    said = describe(view("gpu1", loaded=["qwen3:8b"], tokens_per_s=41.5, completed=12), NOW)
    assert (said["level"], said["kind"]) == ("ok", "Ollama")
    assert said["slots"] == {"en": "1/2 slots", "zh": "1/2 槽位"}[lang]
    assert said["state"] == {"en": "41.5 tokens/s · 12 answered", "zh": "41.5 词元/秒 · 已回答 12"}[lang]
    assert said["models"] == {"en": "qwen3:8b, gemma3:4b · loaded: qwen3:8b",
                              "zh": "qwen3:8b, gemma3:4b · 已加载：qwen3:8b"}[lang]
    assert said["errors"] == ""
    fresh = describe(view("cpu", kind="openai", models=None, running=0, slots=1), NOW)
    assert fresh["kind"] == "OpenAI API" and fresh["state"] == {"en": "Up · no answers yet", "zh": "在线 · 尚无回答"}[lang]
    assert fresh["models"] == {"en": "Models not known yet", "zh": "模型尚不可知"}[lang]


def test_a_server_down_says_until_when_and_its_last_error(lang):
    error = {"at": NOW - 5_000, "code": "llm_unreachable", "error": "The LLM server 'gpu2' is not reachable."}
    said = describe(view("gpu2", "down", down_until=NOW + 8_000, trips=3, recent_errors=[error]), NOW)
    assert said["level"] == "down"
    assert said["state"] == {"en": "Down · tried again in 8 s", "zh": "离线 · 8 秒后重试"}[lang]
    assert said["errors"].startswith({"en": "breaker opened 3× · last error ", "zh": "熔断 3 次 · 最近错误（"}[lang])
    assert said["errors"].endswith({"en": "The LLM server could not be reached.", "zh": i18n.t(
        "job_error.llm_unreachable", "zh")}[lang])
    assert said["error_detail"] == "The LLM server 'gpu2' is not reachable."  # on hover, the server's own words
    probing = describe(view("gpu2", "down", down_until=NOW - 1), NOW)
    assert probing["state"] == {"en": "Down · the next task for it tries it", "zh": "离线 · 下一个任务将试探它"}[lang]
    assert describe(view("new", "unknown"), NOW)["level"] == "unknown"


def test_the_llm_chip_counts_the_servers_up_when_some_are_down(lang):
    fleet = [view("a"), view("b", "down"), view("c")]
    level, label, tip = llm_chip(True, fleet)
    assert (level, label) == ("warn", {"en": "2 of 3 servers up", "zh": "2/3 个服务器在线"}[lang])
    assert "b" in tip and tip.startswith({"en": "2 of 3 LLM servers up; down: b.", "zh": "3 个 LLM 服务器中 2 个"}[lang])
    assert llm_chip(True, [view("a"), view("c")])[:2] == ("ok", "LLM")
    assert llm_chip(False, [view("a", "down"), view("b", "down")])[:2] == ("down", "LLM")
    assert llm_chip(True, [view("ollama")]) == ("ok", "LLM", i18n.t("health.llm_ok"))
