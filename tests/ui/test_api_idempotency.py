"""``POST /api/chat`` through ``main.py`` (a real subprocess) with real workers: an ``Idempotency-Key`` makes a
submit safe to repeat, and whatever the API made is gone once its retention passes (issue 10, point 9)."""

from __future__ import annotations

import httpx

from devtools.waiting import wait_for
from tasks import identities
from tests.helpers import wait_over


def test_the_same_idempotency_key_gives_the_same_job_and_another_key_or_caller_gets_a_new_one(app_factory, workers,
                                                                                             r, fake_llm):
    workers.start()
    app = app_factory("--no-workers")
    with httpx.Client(base_url=app.url, timeout=10) as api:
        def post(key: str, token: str | None = None) -> httpx.Response:
            headers = {"Idempotency-Key": key, **({"Authorization": f"Bearer {token}"} if token else {})}
            return api.post("/api/chat", json={"message": "exactly once, please"}, headers=headers)

        first, repeated = post("k-1"), post("k-1")
        assert (first.status_code, repeated.status_code) == (202, 202)
        assert repeated.json()["job_id"] == first.json()["job_id"]
        assert repeated.json()["conversation_id"] == first.json()["conversation_id"]
        assert post("k-2").json()["job_id"] != first.json()["job_id"]
        alice, _ = identities.create_key("alice")
        bob, _ = identities.create_key("bob")
        for_alice, for_bob = post("shared", alice), post("shared", bob)
        assert for_alice.status_code == for_bob.status_code == 202
        assert for_alice.json()["job_id"] != for_bob.json()["job_id"]  # a key is only the same for one caller
        assert post("shared", alice).json()["job_id"] == for_alice.json()["job_id"]
        ids = {first.json()["job_id"], for_alice.json()["job_id"], for_bob.json()["job_id"]}
        assert len(r.keys("qc:job:*")) == 4 and len(ids) == 3
        wait_over(*{*(key.removeprefix("qc:job:") for key in r.keys("qc:job:*"))})


def test_what_the_api_made_is_gone_once_its_retention_passes_whichever_way_each_job_ended(app_factory, workers, r,
                                                                                        fake_llm):
    short = {"JOB_RETENTION_HOURS": "0.001", "STREAM_TTL_SECONDS": "3"}  # 3.6 s
    workers.start(QUEUE_CONCURRENCY="1", **short)
    app = app_factory("--no-workers", **short)
    with httpx.Client(base_url=app.url, timeout=10) as api:
        def post(message: str, **extra) -> str:
            return api.post("/api/chat", json={"message": message, **extra}).json()["job_id"]

        running = post("running [[tokens=100]][[delay=0.05]]")
        wait_for(lambda: api.get(f"/api/jobs/{running}").json()["status"] == "running")
        waiting = [post(f"waiting {i}") for i in range(5)]
        for job_id in waiting[:3]:
            assert api.delete(f"/api/jobs/{job_id}").json()["cancel"] == "cancelled"  # while waiting
        assert api.delete(f"/api/jobs/{running}").json()["cancel"] == "cancelling"  # while running
        refused = post("refused [[status=400]]")  # fails at once
        conversation = api.get(f"/api/jobs/{waiting[3]}").json()["conversation_id"]
        follow_up = post("and then? [[tokens=2]]", conversation_id=conversation)
        jobs = wait_over(running, *waiting, refused, follow_up)
    assert [job["status"] for job in jobs] == ["cancelled"] * 4 + ["completed"] * 2 + ["failed", "completed"]
    assert r.keys("qc:job:*") and r.keys("qc:stream:*") and r.keys("qc:history:*") and r.keys("qc:conv:*")

    def left() -> list[str]:
        kept = ("qc:job:", "qc:stream:", "qc:conv:", "qc:convs:", "qc:history:")
        keys = [key for key in r.scan_iter(count=1000) if key.startswith(kept) and r.exists(key)]
        lines = [key for key in ("qc:waiting", "qc:leases", "qc:backoff", "qc:since", "qc:lines", "qc:user_waiting")
                 if r.exists(key)]
        return keys + lines

    try:
        wait_for(lambda: not left(), timeout=15, interval=0.5)
    except AssertionError:
        raise AssertionError(f"still there after the retention: {[(k, r.type(k), r.ttl(k)) for k in left()]}") from None
