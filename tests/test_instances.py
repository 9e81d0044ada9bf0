"""Two app instances (``main.py --no-workers`` on two ports) sharing one Redis and one set of workers, as behind a
load balancer: whichever instance a user reaches, the same positions, ETAs, figures and history, and an SSE stream on
one follows a job submitted on the other to its end. Both have the same STORAGE_SECRET (sessions signed by one are
good on the other)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.sse import events
from devtools.waiting import wait_for
from tasks import identities
from tasks.store import sync_store


@pytest.fixture
def clients(two_apps, r, fake_llm) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """An API client on each instance, with the same key."""
    key, _ = identities.create_key("team", max_priority="high")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=two_apps[0].url, headers=headers, timeout=10) as a, \
            httpx.Client(base_url=two_apps[1].url, headers=headers, timeout=10) as b:
        yield a, b


def job(api: httpx.Client, job_id: str) -> dict:
    response = api.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def figures(api: httpx.Client) -> dict:
    stats = api.get("/api/queue/stats").json()
    stats.pop("workers")  # heartbeats of the last 5 s: the same Redis, read a moment apart
    return stats


def exported(api: httpx.Client) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(api.get("/metrics").text) for sample in family.samples
            if sample.name != "queuechat_workers"}


def test_whichever_instance_a_user_reaches_the_queue_looks_the_same(clients, r):
    a, b = clients
    sync_store().pause(True)  # nothing starts: the figures stand still while both instances are read
    try:
        ids = [a.post("/api/chat", json={"message": f"m{i} [[tokens=4]]", "priority": priority}).json()["job_id"]
               for i, priority in enumerate(["low", "normal", "high", "normal", "low"])]
        seen = [(job(a, i), job(b, i)) for i in ids]
        assert [x["position"] for x, _ in seen] == [3, 1, 0, 2, 4]
        for on_a, on_b in seen:
            assert {k: on_a[k] for k in ("status", "position", "eta_seconds", "blocked", "prompt")} == \
                   {k: on_b[k] for k in ("status", "position", "eta_seconds", "blocked", "prompt")}
        assert figures(a) == figures(b) and figures(a)["queued"] == {"high": 1, "normal": 2, "low": 2}
        history = a.get("/api/history").json()["jobs"]
        assert [j["job_id"] for j in history] == ids[::-1] and b.get("/api/history").json() == {"jobs": history}
    finally:
        sync_store().pause(False)

    # An SSE client on B follows a job submitted on A to its end, token by token.
    streamed = list(events(b, f"/stream/status/{ids[0]}"))
    tokens = "".join(e.data["text"] for e in streamed if e.event == "token")
    done = streamed[-1]
    assert done.event == "done" and done.data["status"] == "completed" and tokens == done.data["answer"] == \
        "t0 t1 t2 t3"
    wait_for(lambda: all(job(a, i)["status"] == "completed" for i in ids), what="every job to end")
    assert figures(a) == figures(b) and figures(a)["completed"] == 5
    assert exported(a) == exported(b) and exported(a)[("queuechat_jobs_total", (("status", "completed"),))] == 5
    assert a.get("/api/history").json() == b.get("/api/history").json()
    assert [j["status"] for j in b.get("/api/history").json()["jobs"]] == ["completed"] * 5
