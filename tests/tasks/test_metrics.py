"""Figures computed from the Redis buckets."""

from tasks import metrics
from tasks.store import sync_store


def test_success_rate_does_not_count_a_users_stop_as_a_failure():
    assert metrics.success_rate({"completed": 4, "failed": 0, "cancelled": 1}) == 1.0
    assert metrics.success_rate({"completed": 3, "failed": 1, "cancelled": 5}) == 0.75
    assert metrics.success_rate({"completed": 0, "failed": 0, "cancelled": 0}) == 1.0


def test_stats_and_prometheus_agree_on_real_redis(r):
    for i in range(3):
        sync_store().submit(f"m{i}", user="u", priority=("high", "normal", "low")[i])
    sync_store().cancel(sync_store().history("u")[0].job_id)
    figures = metrics.stats()
    assert figures["queued"] == {"high": 1, "normal": 1, "low": 0} and figures["cancelled"] == 1
    assert figures["submitted"] == 3
    exported = {m.name: m for m in metrics.PrometheusCollector().collect()}
    assert {s.labels["priority"]: s.value for s in exported["queuechat_queued_jobs"].samples} == \
        {"high": 1, "normal": 1, "low": 0}
