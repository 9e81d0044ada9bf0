"""Figures about the queue, kept in Redis in one-minute buckets so that they survive restarts of the app.

The buckets are written by the Lua step that ends a job (``end_job`` in ``tasks/lua/prelude.lua``), in the same
step, so the figures always agree with the records. Read here by ``/api/queue/stats``, the metrics cards and
chart, and exported to Prometheus by :class:`PrometheusCollector`.
"""

from __future__ import annotations

import math

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tasks import keys, queue
from tasks.connection import get_redis
from tasks.store import sync_store

SERIES_MINUTES = 30
WINDOW_MINUTES = 5                         # throughput and percentiles look this far back


def now_minute(client) -> int:
    seconds, _ = client.time()
    return int(seconds) // 60


def workers_online(client):
    """Worker processes whose heartbeat is under 5 s old (an awaitable on an asyncio client)."""
    script = client.register_script(
        "local t = redis.call('TIME') return redis.call('ZCOUNT', KEYS[1], t[1] * 1000 + math.floor(t[2] / 1000) "
        "- 5000, '+inf')")
    return script(keys=[keys.WORKERS])


def stats() -> dict:
    """The figures of ``GET /api/queue/stats`` and the metrics cards."""
    client = get_redis()
    minute = now_minute(client)
    pipe = client.pipeline(transaction=False)
    for level in queue.PRIORITY_LEVELS.values():
        pipe.zcount(keys.WAITING, *queue.level_range(level))
    pipe.zcard(keys.BACKOFF)
    pipe.zcard(keys.LEASES)
    pipe.hgetall(keys.TOTALS)
    for m in range(minute - WINDOW_MINUTES + 1, minute + 1):
        pipe.hgetall(keys.minute(m))
        pipe.lrange(keys.samples("wait", m), 0, -1)
        pipe.lrange(keys.samples("ttft", m), 0, -1)
    high, normal, low, retrying, running, totals, *recent = pipe.execute()
    servers = _servers()
    buckets, waits, ttfts = recent[0::3], recent[1::3], recent[2::3]
    done = {s: int(totals.get(s, 0)) for s in queue.TERMINAL}
    recent_finished = sum(int(b.get(s, 0)) for b in buckets for s in queue.TERMINAL)
    response_count = int(totals.get("response_count", 0))
    return {
        "queued": {"high": high, "normal": normal, "low": low}, "retrying": retrying, "running": running,
        **done, "submitted": int(totals.get("submitted", 0)), "total_requests": int(totals.get("submitted", 0)),
        "workers": workers_online(client),
        # the slots of the servers up now (every server's, when none is): what can run at once
        "concurrency": sum(v["slots"] for v in servers if v["state"] == "up") or sum(v["slots"] for v in servers),
        "avg_response_ms": round(int(totals.get("response_ms_sum", 0)) / response_count) if response_count else 0,
        "success_rate": success_rate(done),
        "throughput_per_min": round(recent_finished / WINDOW_MINUTES, 2),
        "wait_ms": _percentiles([int(x) for xs in waits for x in xs]),
        "ttft_ms": _percentiles([int(x) for xs in ttfts for x in xs]),
    }


def _servers() -> list[dict]:
    return sync_store().backends()


def success_rate(done: dict[str, int]) -> float:
    """Completed out of completed + failed: a user's own Stop is not a failure."""
    judged = done["completed"] + done["failed"]
    return round(done["completed"] / judged, 4) if judged else 1.0


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {"p50": 0, "p95": 0}
    values.sort()
    return {"p50": values[len(values) // 2], "p95": values[min(len(values) - 1, math.ceil(len(values) * 0.95) - 1)]}


def series(minutes: int = SERIES_MINUTES) -> list[dict]:
    """Per-minute throughput and mean response time for the chart, oldest first."""
    client = get_redis()
    minute = now_minute(client)
    pipe = client.pipeline(transaction=False)
    span = range(minute - minutes + 1, minute + 1)
    for m in span:
        pipe.hgetall(keys.minute(m))
    points = []
    for m, bucket in zip(span, pipe.execute()):
        completed = int(bucket.get("completed", 0))
        points.append({"minute": m * 60, "completed": completed, "failed": int(bucket.get("failed", 0)),
                       "avg_response_ms": round(int(bucket.get("response_ms_sum", 0)) / completed) if completed else 0})
    return points


class PrometheusCollector:
    """Reads the figures from Redis at scrape time, so every app replica exports the same numbers."""

    def collect(self):
        figures = stats()
        queued = GaugeMetricFamily("queuechat_queued_jobs", "Jobs waiting, by priority", labels=["priority"])
        for priority, count in figures["queued"].items():
            queued.add_metric([priority], count)
        yield queued
        yield GaugeMetricFamily("queuechat_running_jobs", "LLM calls in flight", value=figures["running"])
        yield GaugeMetricFamily("queuechat_workers", "Worker processes online", value=figures["workers"])
        finished = CounterMetricFamily("queuechat_jobs", "Jobs ended, by status", labels=["status"])
        for status in queue.TERMINAL:
            finished.add_metric([status], figures[status])
        yield finished
        yield CounterMetricFamily("queuechat_submitted", "Jobs submitted", value=figures["submitted"])
        yield GaugeMetricFamily("queuechat_avg_response_ms", "Mean response time", value=figures["avg_response_ms"])
        yield GaugeMetricFamily("queuechat_throughput_per_min", "Jobs ended per minute (last 5 min)",
                                value=figures["throughput_per_min"])
        for name in ("wait_ms", "ttft_ms"):
            gauge = GaugeMetricFamily(f"queuechat_{name}", f"{name} percentiles (last 5 min)", labels=["quantile"])
            gauge.add_metric(["0.5"], figures[name]["p50"])
            gauge.add_metric(["0.95"], figures[name]["p95"])
            yield gauge
        yield from backend_families(_servers())


def backend_families(servers: list[dict]):
    """The per-server series, each labelled ``backend`` (the configured name, never the address)."""
    label = ["backend"]
    up = GaugeMetricFamily("queuechat_backend_up", "1 when the LLM server is up (its breaker closed)", labels=label)
    slots = GaugeMetricFamily("queuechat_backend_slots", "Calls the LLM server runs at once (its cap)", labels=label)
    used = GaugeMetricFamily("queuechat_backend_slots_used", "Calls in flight on the LLM server", labels=label)
    trips = CounterMetricFamily("queuechat_backend_breaker_trips", "Times the server's circuit breaker opened",
                                labels=label)
    jobs = CounterMetricFamily("queuechat_backend_jobs", "Jobs ended whose last attempt ran on the server",
                               labels=["backend", "status"])
    errors = CounterMetricFamily("queuechat_backend_errors", "Failed calls to the server", labels=label)
    tokens = CounterMetricFamily("queuechat_backend_tokens", "Answer tokens the server wrote", labels=label)
    seconds = CounterMetricFamily("queuechat_backend_generation_seconds", "Time the server spent writing answers "
                                  "(first token to end)", labels=label)
    speed = GaugeMetricFamily("queuechat_backend_tokens_per_second", "Tokens per second over the server's recent "
                              "answers", labels=label)
    for view in servers:
        name = [view["name"]]
        up.add_metric(name, 1 if view["state"] == "up" else 0)
        slots.add_metric(name, view["slots"])
        used.add_metric(name, view["running"])
        trips.add_metric(name, view["trips"])
        for status in ("completed", "failed"):
            jobs.add_metric([view["name"], status], view[status])
        errors.add_metric(name, view["errors"])
        tokens.add_metric(name, view["tokens"])
        seconds.add_metric(name, view["generation_ms"] / 1000)
        if view["tokens_per_s"] is not None:
            speed.add_metric(name, view["tokens_per_s"])
    yield from (up, slots, used, trips, jobs, errors, tokens, seconds, speed)
