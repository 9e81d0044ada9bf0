"""Who is asking (ui/identity.py, tasks/identities.py) against running apps: what one identity owns is "not found"
for every other, no header makes a caller someone else, the proxy's word counts only from TRUSTED_PROXIES, and
each identity has its own limits. Identities used: two or three API keys, anonymous callers, proxy users."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devtools.fake_llm import Reply
from devtools.stack import App
from devtools.waiting import wait_for
from tasks import identities
from tasks.store import sync_store
from tests.ui.conftest import client, hold_the_slot, job


def finished(caller: httpx.Client, job_id: str) -> dict | None:
    body = caller.get(f"/api/jobs/{job_id}").json()
    return body if body["status"] in ("completed", "failed", "cancelled") else None


@pytest.fixture(scope="module")
def untrusting_app(stack_env, tmp_path_factory) -> Iterator[App]:
    """A proxy header is configured, but no proxy is trusted: a caller that sends it is just a caller."""
    app = App(stack_env, tmp_path_factory.mktemp("untrusting")).start(
        "--no-workers", AUTH_TRUSTED_HEADER="X-Forwarded-User", API_RATE_PER_MIN="5")
    yield app
    app.kill()


@pytest.fixture(scope="module")
def proxied_app(stack_env, tmp_path_factory) -> Iterator[App]:
    """Behind a reverse proxy on this machine: its X-Forwarded-User and X-Forwarded-For are believed."""
    app = App(stack_env, tmp_path_factory.mktemp("proxied")).start(
        "--no-workers", TRUSTED_PROXIES="127.0.0.1", AUTH_TRUSTED_HEADER="X-Forwarded-User", API_RATE_PER_MIN="5",
        API_ANONYMOUS="always")
    yield app
    app.kill()


# --- ownership ----------------------------------------------------------------------------------------------

def test_a_job_conversation_and_stream_of_one_key_are_not_found_for_others(app, keys, fake_llm, r):
    fake_llm.set_default(Reply(text="The code word is swordfish."))
    with client(app, keys("alice")) as alice, client(app, keys("bob")) as bob, client(app) as anonymous:
        first = alice.post("/api/chat", json={"message": "Remember: swordfish."}).json()
        wait_for(lambda: finished(alice, first["job_id"]), what="alice's first answer")
        door = alice.post("/v1/chat/completions", json={"model": "qwen3:latest",
                                                        "messages": [{"role": "user", "content": "door job"}]})
        door_job = door.headers["x-queue-job"]
        hold_the_slot(app, r, fake_llm, keys("holder"))
        waiting = alice.post("/api/chat", json={"message": "still waiting",
                                                "conversation_id": first["conversation_id"]}).json()["job_id"]
        requests_before = len(fake_llm.requests)
        for other in (bob, anonymous):
            for job_id in (first["job_id"], door_job, waiting):
                assert other.get(f"/api/jobs/{job_id}").status_code == 404
                assert other.get(f"/stream/status/{job_id}").status_code == 404
                gone = other.delete(f"/api/jobs/{job_id}")
                assert gone.status_code == 404 and gone.json()["code"] == "job_not_found"
            intrude = other.post("/api/chat", json={"message": "What was the code word?",
                                                    "conversation_id": first["conversation_id"]})
            assert intrude.status_code == 404 and intrude.json()["code"] == "conversation_not_found"
        assert job(r, waiting)["status"] == "queued", "nobody else could cancel it"
        assert alice.get(f"/api/jobs/{waiting}").json()["position"] == 0
        assert alice.delete(f"/api/jobs/{waiting}").json()["cancel"] == "cancelled"
    assert len(fake_llm.requests) == requests_before, "no one else's message reached the LLM with alice's turns"
    assert not any("swordfish" in str(m) for request in fake_llm.requests[requests_before:] for m in request)
    owners = {r.hget(name, "user") for name in r.keys("qc:job:*")}
    assert len(owners) == 2  # alice's and the holder's: bob and the anonymous caller made nothing


def test_no_header_lets_a_caller_act_as_someone_else(app, keys, r):
    with client(app, keys("alice")) as alice:
        mine = alice.post("/api/chat", json={"message": "mine"}, headers={"Idempotency-Key": "order-1"}).json()
    owner = job(r, mine["job_id"])["user"]
    with client(app, keys("bob")) as bob:  # the same Idempotency-Key is another request when another asks
        theirs = bob.post("/api/chat", json={"message": "bob's"}, headers={"Idempotency-Key": "order-1"}).json()
    assert theirs["job_id"] != mine["job_id"] and theirs["conversation_id"] != mine["conversation_id"]
    pretending = {"X-Queuechat-User": owner, "X-Forwarded-User": owner, "X-Forwarded-For": "10.9.9.9",
                  "X-Real-IP": "10.9.9.9", "Forwarded": "for=10.9.9.9"}
    with client(app, **pretending) as impostor:
        assert impostor.get(f"/api/jobs/{mine['job_id']}").status_code == 404
        made = impostor.post("/api/chat", json={"message": "whose?", "conversation_id": mine["conversation_id"]})
        assert made.status_code == 404
        made = impostor.post("/api/chat", json={"message": "whose?"}).json()
    assert job(r, made["job_id"])["user"] == "a:127.0.0.1"
    assert [j.job_id for j in sync_store().history(owner)] == [mine["job_id"]]
    assert {j.job_id for j in sync_store().history("a:127.0.0.1")} == {made["job_id"]}


def test_x_forwarded_for_from_an_untrusted_peer_changes_neither_identity_nor_budget(untrusting_app, app, r):
    codes, owners = [], set()
    for i in range(7):
        with client(untrusting_app, **{"X-Forwarded-For": f"10.0.0.{i}"}) as rotating:
            response = rotating.post("/api/chat", json={"message": f"m{i}"})
        codes.append(response.status_code)
        if response.status_code == 202:
            owners.add(job(r, response.json()["job_id"])["user"])
    assert codes == [202] * 5 + [429] * 2 and owners == {"a:127.0.0.1"}


def test_the_proxy_user_header_is_ignored_unless_the_peer_is_a_trusted_proxy(untrusting_app, app, r):
    with client(untrusting_app, **{"X-Forwarded-User": "alice"}) as claims_alice:
        made = claims_alice.post("/api/chat", json={"message": "as alice?"}).json()
    assert job(r, made["job_id"])["user"] == "a:127.0.0.1"


def test_a_trusted_proxy_names_the_user_and_each_is_their_own(proxied_app, app, r):
    with client(proxied_app, **{"X-Forwarded-User": "alice"}) as alice, \
            client(proxied_app, **{"X-Forwarded-User": "bob"}) as bob:
        made = alice.post("/api/chat", json={"message": "alice here"}).json()
        assert job(r, made["job_id"])["user"] == "p:alice"
        assert alice.get(f"/api/jobs/{made['job_id']}").status_code == 200
        assert bob.get(f"/api/jobs/{made['job_id']}").status_code == 404
        assert bob.post("/api/chat", json={"message": "x", "conversation_id": made["conversation_id"]}) \
            .status_code == 404
        for i in range(3):  # API_RATE_PER_MIN=5: every API request counts, reads too
            assert alice.post("/api/chat", json={"message": f"a{i}"}).status_code == 202
        assert alice.post("/api/chat", json={"message": "sixth"}).status_code == 429
        assert bob.post("/api/chat", json={"message": "bob has his own budget"}).status_code == 202


def test_behind_a_trusted_proxy_the_client_address_is_the_last_untrusted_hop(proxied_app, app, r):
    def owner(forwarded_for: str) -> str:
        with client(proxied_app, **{"X-Forwarded-For": forwarded_for}) as caller:
            return job(r, caller.post("/api/chat", json={"message": "hi"}).json()["job_id"])["user"]

    assert owner("10.0.0.1") == "a:10.0.0.1"
    assert owner("10.0.0.2") == "a:10.0.0.2"
    # A client that writes its own X-Forwarded-For gets the proxy's hop appended: the hop counts, not the claim.
    assert owner("10.0.0.1, 10.0.0.5") == "a:10.0.0.5"
    assert owner("10.0.0.6, 127.0.0.1") == "a:10.0.0.6"
    with client(proxied_app, **{"X-Forwarded-For": "10.0.0.1"}) as first:
        for i in range(3):  # one request already spent above
            assert first.post("/api/chat", json={"message": f"m{i}"}).status_code == 202
        assert first.post("/api/chat", json={"message": "over"}).status_code == 202
        assert first.post("/api/chat", json={"message": "over"}).status_code == 429
    with client(proxied_app, **{"X-Forwarded-For": "10.0.0.2"}) as second:
        assert second.post("/api/chat", json={"message": "mine is untouched"}).status_code == 202


def test_without_anonymous_use_a_caller_is_told_how_to_get_a_key(app_factory, keys):
    strict = app_factory("--no-workers", API_ANONYMOUS="never", TRUSTED_PROXIES="",
                         AUTH_TRUSTED_HEADER="X-Forwarded-User")
    for headers in ({}, {"X-Forwarded-User": "alice"}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}):
        with client(strict, **headers) as nobody:
            refused = nobody.post("/api/chat", json={"message": "hi"})
            assert refused.status_code == 401
            assert refused.json()["code"] in ("api_key_required", "bad_api_key")
            models = nobody.get("/v1/models")
            assert models.status_code == 401 and models.json()["error"]["type"] == "authentication_error"
    with client(strict) as nobody:
        body = nobody.get("/api/jobs/" + "0" * 32).json()
    assert body["code"] == "api_key_required"
    assert "Authorization: Bearer" in body["detail"] and "uv run main.py keys create" in body["detail"]
    with client(strict, keys("carol")) as carol:
        assert carol.post("/api/chat", json={"message": "with a key"}).status_code == 202


# --- a key's own limits ---------------------------------------------------------------------------------------

def test_a_revoked_key_is_refused_at_once(app, keys):
    key = keys("temporary")
    with client(app, key) as caller:
        assert caller.post("/api/chat", json={"message": "while it lasts"}).status_code == 202
        assert [k.name for k in identities.revoke_key("temporary")] == ["temporary"]
        refused = caller.post("/api/chat", json={"message": "after"})
        assert refused.status_code == 401 and refused.json()["code"] == "bad_api_key"
        assert caller.get("/ollama/api/tags").status_code == 401


def test_a_keys_waiting_limit_rate_and_quota(app, keys, fake_llm, r):
    hold_the_slot(app, r, fake_llm, keys("holder"))
    with client(app, keys("waits", max_waiting=2)) as waits, client(app, keys("quick", rate_per_min=3)) as quick, \
            client(app, keys("metered", quota_per_day=2)) as metered, client(app, keys("other")) as other:
        assert [waits.post("/api/chat", json={"message": f"w{i}"}).status_code for i in range(2)] == [202, 202]
        full = waits.post("/api/chat", json={"message": "third"})
        assert full.status_code == 429 and full.json()["code"] == "too_many_waiting" and full.json()["limit"] == 2
        assert "2 messages waiting" in full.json()["detail"]

        assert [quick.get("/api/queue/stats").status_code for _ in range(5)] == [200] * 5  # reads are free
        codes = [quick.post("/api/chat", json={"message": f"q{i}"}).status_code for i in range(4)]
        assert codes == [202, 202, 202, 429]
        limited = quick.post("/api/chat", json={"message": "again"})
        assert limited.json()["code"] == "rate_limited" and 0 < int(limited.headers["retry-after"]) <= 61

        assert [metered.post("/api/chat", json={"message": f"m{i}"}).status_code for i in range(2)] == [202, 202]
        spent = metered.post("/api/chat", json={"message": "third today"})
        assert spent.status_code == 429 and spent.json()["code"] == "quota_exceeded"
        assert int(spent.headers["retry-after"]) > 60 and "daily quota of 2" in spent.json()["detail"]

        assert other.post("/api/chat", json={"message": "others are not limited"}).status_code == 202


# --- fair share through the API --------------------------------------------------------------------------------

def test_a_key_with_thirty_jobs_delays_anothers_single_job_by_at_most_one(app, keys, fake_llm, r):
    holder = hold_the_slot(app, r, fake_llm, keys("holder"))
    fake_llm.set_default(Reply(tokens=["a", "b", "c"], token_delay=0.05))
    with client(app, keys("busy")) as busy, client(app, keys("once")) as once:
        many = [busy.post("/api/chat", json={"message": f"busy {i}"}).json()["job_id"] for i in range(30)]
        single = once.post("/api/chat", json={"message": "just one"}).json()
        assert single["position"] == 1, "its place is next after the busy key's first job"
        busy.post("/api/chat", json={"message": "one more, after the single job"})
        sync_store().cancel(holder)
        wait_for(lambda: finished(once, single["job_id"]), timeout=30, what="the single job to finish")
    started = {job_id: int(job(r, job_id).get("started_at") or 0) for job_id in many}
    single_start = int(job(r, single["job_id"])["started_at"])
    before = [job_id for job_id, at in started.items() if at and at < single_start]
    assert before == many[:1], "one of the busy key's jobs, its first, started before the single job"
