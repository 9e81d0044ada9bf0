"""The HTTP API of `main.py` (a real subprocess) with real workers, Redis and the fake LLM."""

from __future__ import annotations

import contextlib
import itertools

import httpx
import pytest

from devtools import sse
from devtools.fake_llm import Reply
from devtools.waiting import wait_for


@pytest.fixture
def api(module_app, redis_server, fake_llm):
    with httpx.Client(base_url=module_app.url, timeout=10) as client:
        yield client


def finished(api, job_id):
    job = api.get(f"/api/jobs/{job_id}").json()
    return job if job["status"] in ("completed", "failed", "cancelled") else None


def sse_events(api, job_id, last_event_id=None, stop_after=None):
    """The job's SSE stream as (id, event, data) tuples, until it closes or ``stop_after`` events."""
    with contextlib.closing(sse.events(api, f"/stream/status/{job_id}", last_event_id=last_event_id)) as events:
        return list(itertools.islice(events, stop_after))


def test_chat_streams_the_answer_and_records_the_job(api, fake_llm):
    fake_llm.script(Reply(text="Queues are fair. They keep order.", token_delay=0.01))
    accepted = api.post("/api/chat", json={"message": "Why queues?", "priority": "high"})
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["status"] == "queued" and body["position"] == 0 and len(body["job_id"]) == 32
    job = wait_for(lambda: finished(api, body["job_id"]), what="the job to finish")
    assert job["status"] == "completed"
    assert job["answer"] == "Queues are fair. They keep order."
    assert job["priority"] == "high" and job["attempts"] == 1 and job["progress"] == 100
    assert job["error"] is None and job["created_at"] and job["started_at"] and job["finished_at"]


def test_sse_replays_a_finished_job_and_resume_loses_and_repeats_nothing(api, fake_llm):
    tokens = [f"w{i} " for i in range(30)]
    fake_llm.script(Reply(tokens=tokens, token_delay=0.02))
    job_id = api.post("/api/chat", json={"message": "count"}).json()["job_id"]
    first = sse_events(api, job_id, stop_after=12)
    assert all(event_id for event_id, _, _ in first), "every event carries an id"
    rest = sse_events(api, job_id, last_event_id=first[-1][0])
    events = first + rest
    texts = [data["text"] for _, kind, data in events if kind == "token"]
    assert texts == tokens
    assert events[-1][1] == "done" and events[-1][2]["answer"] == "".join(tokens)
    statuses = [data["status"] for _, kind, data in events if kind == "status"]
    assert statuses[0] == "queued" and "running" in statuses
    replay = sse_events(api, job_id)
    assert [d["text"] for _, k, d in replay if k == "token"] == tokens and replay[-1][1] == "done"


def test_conversation_sends_earlier_turns_as_context(api, fake_llm):
    first = api.post("/api/chat", json={"message": "My name is Ada."}).json()
    wait_for(lambda: finished(api, first["job_id"]))
    second = api.post("/api/chat", json={"message": "What is my name?",
                                         "conversation_id": first["conversation_id"]}).json()
    assert second["conversation_id"] == first["conversation_id"]
    wait_for(lambda: finished(api, second["job_id"]))
    messages = fake_llm.requests[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == "My name is Ada." and messages[1]["content"] == "You said: My name is Ada."


@pytest.mark.parametrize("body, code", [
    ({"message": ""}, "empty_message"),
    ({"message": "   \n"}, "empty_message"),
    ({"message": "x" * 8001}, "message_too_long"),
    ({"message": 42}, "invalid_request"),
    ({"message": "hi", "priority": "urgent"}, "invalid_request"),
    ({"priority": "high"}, "invalid_request"),
    ({"message": "hi", "conversation_id": "not-mine"}, "conversation_not_found"),
])
def test_bad_input_is_refused_clearly_and_enqueues_nothing(api, r, body, code):
    response = api.post("/api/chat", json=body)
    assert 400 <= response.status_code < 500
    assert response.json()["code"] == code
    assert isinstance(response.json()["detail"], str) and len(response.json()["detail"]) > 5
    assert r.zcard("qc:waiting") == 0 and not r.keys("qc:job:*")


def test_invalid_json_and_unknown_jobs(api):
    response = api.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "not valid JSON" in response.json()["detail"]
    assert api.get("/api/jobs/" + "0" * 32).status_code == 404
    assert api.get("/api/jobs/../../etc").status_code == 404
    assert api.get("/stream/status/" + "f" * 32).status_code == 404
    assert api.delete("/api/jobs/" + "a" * 32).status_code == 404


def test_stats_health_metrics_and_openapi(api, fake_llm):
    job_id = api.post("/api/chat", json={"message": "hi", "priority": "low"}).json()["job_id"]
    wait_for(lambda: finished(api, job_id))
    stats = wait_for(lambda: (s := api.get("/api/queue/stats").json())["workers"] >= 2 and s,
                     what="worker heartbeats after the flush")
    for key in ("queued", "running", "completed", "failed", "cancelled", "workers", "avg_response_ms",
                "success_rate", "throughput_per_min"):
        assert key in stats
    assert stats["completed"] == 1 and stats["success_rate"] == 1.0 and stats["workers"] >= 2
    assert set(stats["queued"]) == {"high", "normal", "low"}
    health = api.get("/health")
    assert health.status_code == 200
    assert {k: health.json()[k] for k in ("status", "redis", "ollama", "backends")} == \
        {"status": "ok", "redis": True, "ollama": True, "backends": {"ollama": "up"}}
    assert health.json()["workers"] >= 2  # not == stats': a heartbeat may lapse and come back in between
    exposition = api.get("/metrics").text
    assert 'queuechat_jobs_total{status="completed"} 1.0' in exposition
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/chat", "/api/jobs/{job_id}", "/stream/status/{job_id}", "/api/queue/stats", "/health"):
        assert path in paths
