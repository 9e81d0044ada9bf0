"""Figures about the queue, kept in Redis in one-minute buckets so that they survive restarts of the app.

Written once per job when it ends (:func:`record_finish`), read by ``/api/queue/stats``, the metrics
cards and chart, and exported to Prometheus by :class:`PrometheusCollector`.
"""

from __future__ import annotations

import math
import statistics

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tasks import queue
from tasks.connection import KEY_PREFIX, get_redis
from tasks.settings import settings

SERVICE_TIMES = KEY_PREFIX + "service_ms"  # the last 50 LLM call durations, for the ETA
WORKERS = KEY_PREFIX + "workers"           # worker id -> last heartbeat (ms)
BUCKET_TTL = 2 * 86400
SERIES_MINUTES = 30
WINDOW_MINUTES = 5                         # throughput and percentiles look this far back


def bucket_key(minute: int) -> str:
    return f"{KEY_PREFIX}m:{minute}"


def samples_key(kind: str, minute: int) -> str:
    return f"{KEY_PREFIX}m:{kind}:{minute}"


def record_finish(raw: dict) -> None:
    """Bucket the figures of a job that just ended (called once per job, by whoever ended it).

    The totals by status are counted by the Lua step that ended the job (see :mod:`tasks.queue`)."""
    status, kind = raw["status"], raw.get("kind", "chat")
    created, started = _ms(raw.get("created_at")), _ms(raw.get("started_at"))
    finished, first = _ms(raw.get("finished_at")), _ms(raw.get("first_token_at"))
    minute = (finished or created) // 60000
    pipe = get_redis().pipeline(transaction=False)
    pipe.hincrby(bucket_key(minute), status, 1)
    if status == "completed" and kind == "chat":
        pipe.hincrby(queue.TOTALS, "response_ms_sum", finished - created)
        pipe.hincrby(queue.TOTALS, "response_count", 1)
        pipe.hincrby(bucket_key(minute), "response_ms_sum", finished - created)
        pipe.lpush(SERVICE_TIMES, finished - started)
        pipe.ltrim(SERVICE_TIMES, 0, 49)
    if started:
        pipe.rpush(samples_key("wait", minute), started - created)
        pipe.expire(samples_key("wait", minute), BUCKET_TTL)
    if first:
        pipe.rpush(samples_key("ttft", minute), first - created)
        pipe.expire(samples_key("ttft", minute), BUCKET_TTL)
    pipe.expire(bucket_key(minute), BUCKET_TTL)
    pipe.execute()


def _ms(value: str | None) -> int:
    return int(value) if value else 0


def now_minute(client) -> int:
    seconds, _ = client.time()
    return int(seconds) // 60


def workers_online(client) -> int:
    seconds, micros = client.time()
    return client.zcount(WORKERS, seconds * 1000 + micros // 1000 - 5000, "+inf")


def eta_seconds(position: int | None) -> int | None:
    """Seconds until a waiting job starts: rounds of work ahead of it, each a recent average service time."""
    if position is None:
        return None
    recent = [int(x) for x in get_redis().lrange(SERVICE_TIMES, 0, -1)]
    service_s = statistics.median(recent) / 1000 if recent else 10.0
    by_slots = math.floor(position / settings.queue_concurrency + 1) * service_s
    by_rate = (position + 1) * 60 / settings.queue_rate_per_min if settings.queue_rate_per_min else 0
    return round(max(by_slots, by_rate))


def stats() -> dict:
    """The figures of ``GET /api/queue/stats`` and the metrics cards."""
    client = get_redis()
    minute = now_minute(client)
    pipe = client.pipeline(transaction=False)
    for level in queue.PRIORITY_LEVELS.values():
        low, high = level * 10**12, (level + 1) * 10**12 - 1
        pipe.zcount(queue.WAITING, low, high)
    pipe.zcard(queue.DELAYED)
    pipe.zcard(queue.LEASES)
    pipe.hgetall(queue.TOTALS)
    for m in range(minute - WINDOW_MINUTES + 1, minute + 1):
        pipe.hgetall(bucket_key(m))
        pipe.lrange(samples_key("wait", m), 0, -1)
        pipe.lrange(samples_key("ttft", m), 0, -1)
    high, normal, low, retrying, running, totals, *recent = pipe.execute()
    buckets, waits, ttfts = recent[0::3], recent[1::3], recent[2::3]
    done = {s: int(totals.get(s, 0)) for s in queue.TERMINAL}
    recent_finished = sum(int(b.get(s, 0)) for b in buckets for s in queue.TERMINAL)
    response_count = int(totals.get("response_count", 0))
    return {
        "queued": {"high": high, "normal": normal, "low": low}, "retrying": retrying, "running": running,
        **done, "submitted": int(totals.get("submitted", 0)), "total_requests": int(totals.get("submitted", 0)),
        "workers": workers_online(client), "concurrency": settings.queue_concurrency,
        "avg_response_ms": round(int(totals.get("response_ms_sum", 0)) / response_count) if response_count else 0,
        "success_rate": success_rate(done),
        "throughput_per_min": round(recent_finished / WINDOW_MINUTES, 2),
        "wait_ms": _percentiles([int(x) for xs in waits for x in xs]),
        "ttft_ms": _percentiles([int(x) for xs in ttfts for x in xs]),
    }


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
        pipe.hgetall(bucket_key(m))
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
