"""Hostile input against the running app: schema fuzzing, oversized and broken bodies, floods, huge tokens."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from devtools.fake_llm import Reply
from devtools.waiting import wait_for
from tasks import identities


@pytest.fixture
def api(module_app, redis_server, fake_llm):
    with httpx.Client(base_url=module_app.url, timeout=10) as client:
        yield client


def test_fuzzed_requests_get_no_5xx_no_schema_violation_no_traceback(module_app, redis_server, fake_llm):
    """Every operation in /openapi.json, fed schemathesis-generated (valid and invalid) requests."""
    schema = schemathesis.openapi.from_url(module_app.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        fuzz(operation)


def fuzz(operation) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        if case.path.startswith("/stream/"):
            case.headers = {**(case.headers or {}), "Last-Event-ID": "0-0"}
        response = case.call(timeout=5)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
        assert "Traceback" not in response.text
        # A schema-valid request may still be refused for what it means (an unknown model, a priority above the
        # caller's ceiling, a full queue): that is a 4xx with a reason, not a schema violation.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    check()


def test_oversized_body_is_refused_before_it_is_read(api, r):
    response = api.post("/api/chat", content=b'{"message": "' + b"x" * 2_000_000 + b'"}',
                        headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"

    def chunks():
        yield b'{"message": "'
        for _ in range(300):
            yield b"y" * 10_000
        yield b'"}'

    chunked = api.post("/api/chat", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert not r.keys("qc:job:*")


def test_invalid_utf8_is_a_clear_4xx(api, r):
    response = api.post("/api/chat", content=b'{"message": "\xff\xfe bad"}', headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and isinstance(response.json()["detail"], str)
    assert not r.keys("qc:job:*")


def test_huge_single_token_completes_and_the_app_stays_healthy(api, fake_llm):
    token = "z" * 300_000
    fake_llm.script(Reply(tokens=["start ", token, " end"]))
    job_id = api.post("/api/chat", json={"message": "big"}).json()["job_id"]
    job = wait_for(lambda: api.get(f"/api/jobs/{job_id}").json()["status"] == "completed"
                   and api.get(f"/api/jobs/{job_id}").json(), what="the huge answer")
    assert job["answer"] == "start " + token + " end"
    assert api.get("/health").status_code == 200


def test_a_flooding_client_gets_429_and_others_are_unaffected(app_factory, r):
    app = app_factory("--no-workers", API_RATE_PER_MIN="20")
    with httpx.Client(base_url=app.url, timeout=10) as flooder:
        codes = [flooder.post("/api/chat", json={"message": f"m{i}"}).status_code for i in range(40)]
        assert codes.count(202) == 20 and codes.count(429) == 20
        refused = flooder.post("/api/chat", json={"message": "again"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "Too many requests" in refused.json()["detail"]
        assert flooder.get("/api/queue/stats").status_code == 200  # reading is not limited
        key, _ = identities.create_key("someone else")
        other = flooder.post("/api/chat", json={"message": "still fine"}, headers={"Authorization": f"Bearer {key}"})
        assert other.status_code == 202  # another identity's budget is untouched
    assert len(r.keys("qc:job:*")) == 21
