"""The benchmarks import, and their pure helpers and report sections work — without a stack (a second, no more).

The benchmarks themselves are too slow for the suite (``uv run python -m benchmarks.run --quick`` is their smoke
check); what breaks them silently between runs is an import gone stale or a report line that no longer formats.
"""

from __future__ import annotations

import importlib
import json
import math

import pytest

from benchmarks import common, fanout, long_queue, machine_cost, pipeline, run, sse_scale, ttft
from benchmarks.harness import Summary, summarize
from devtools import page_client, raw_sse, sessions

pytestmark = pytest.mark.unit

MODULES = ("benchmarks.run", "benchmarks.common", "benchmarks.harness", "benchmarks.ttft", "benchmarks.pipeline",
           "benchmarks.fanout", "benchmarks.sse_scale", "benchmarks.machine_cost", "benchmarks.long_queue",
           "benchmarks.load", "devtools.page_client", "devtools.raw_sse", "devtools.redis_clients",
           "devtools.sessions")


@pytest.mark.parametrize("name", MODULES)
def test_imports(name):
    importlib.import_module(name)


def test_summary_percentiles_are_observed_values():
    s = summarize([float(x) for x in range(1, 101)])
    assert (s.p50, s.p95, s.p99) == (50.5, 95.0, 99.0)
    assert math.isnan(summarize([]).p50)


def test_verdict():
    assert common.verdict(0.008, 0.010) == "**met**"
    assert common.verdict(0.015, 0.010, unit=" ms", scale=1000).startswith("**missed** by 5.0 ms")
    assert common.verdict(250, 300, at_most=False, digits=0).startswith("**missed** by 50")
    assert common.verdict(float("nan"), 1) == "**not measured**"
    assert common.verdict(2.0, 2.0) == "**met**"  # "≤ 2"
    assert common.verdict(2.0, 2.0, strict=True).startswith("**missed**")  # "< 2"
    assert common.verdict(1.99, 2.0, strict=True) == "**met**"


def test_sse_events_parse_across_pieces():
    events, rest = raw_sse.parse_events('event: token\r\ndata: {"text": "a"}\r\nid: 1-0\r\n\r\n: ping\r\n\r\nevent: do')
    assert [(e.event, e.json(), e.id) for e in events] == [("token", {"text": "a"}, "1-0")]
    assert rest == "event: do"


def test_sse_check_wants_every_token_in_order_and_one_done():
    answer = sse_scale.expected_answer(3)
    tokens = [raw_sse.SseEvent("token", json.dumps({"text": t})) for t in ("t0", " t1", " t2")]
    done = raw_sse.SseEvent("done", "{}")
    assert sse_scale.check(raw_sse.SseResult(200, [*tokens, done]), answer) == ""
    assert sse_scale.check(raw_sse.SseResult(200, [tokens[1], tokens[0], tokens[2], done]), answer)
    assert sse_scale.check(raw_sse.SseResult(200, tokens), answer) == "0 done events"


def test_page_is_parsed_as_nicegui_js_does():
    html = """<script>const app = createApp(parseElements(String.raw`{"1": {"tag": "div", "text": "a &amp; b",
"children": [2], "props": {"data-testid": "x"}}, "2": {"tag": "div", "props": {"innerHTML": "<p>t9</p>"}}}`), {
        version: "3",
        query: {'client_id': 'abc', 'next_message_id': 0, 'implicit_handshake': True},
        transports: ['websocket'],
      });</script>"""
    elements, query = page_client.parse_page(html)
    assert query == {"client_id": "abc", "next_message_id": 0, "implicit_handshake": True}
    assert page_client.find(elements, "x") == ["1"]
    assert page_client.text_below(elements, "1") == "a & bt9"


def test_session_cookie_names_the_browser_user():
    import base64
    payload = base64.b64encode(json.dumps({"id": "s1"}).encode()).decode().rstrip("=")
    assert sessions.browser_user(f"{payload}.123.sig") == "b:s1"


def test_long_answer_ends_with_its_marker():
    tokens = machine_cost.tokens_of(100)
    assert len(tokens) == 100 and tokens[-1] == machine_cost.MARKER


def summary(value: float) -> Summary:
    return Summary(10, value, value * 1.5, value, value * 2)


def cpu(ms: float) -> dict[str, float]:
    return {"workers": ms / 2, "redis": ms / 4, "here": ms / 4}


def test_every_section_renders_from_figures():
    """Each section's text formats from figures shaped as its ``measure`` returns them."""
    sections = [
        ttft.section({"queued": summary(0.02), "direct": summary(0.004), "hops": {h: summary(0.003) for h in ttft.HOPS},
                      "reps": 10, "warmup": 1, "idle_s": 1.0}),
        pipeline.section([{"rate": 310.0, "completed": 200, "stuck": 0, "problems": [], "cpu": cpu(3.0)},
                          {"rate": 320.0, "completed": 199, "stuck": 1, "problems": [], "cpu": cpu(3.2)}],
                         [{"rate": 1000.0, "cpu": cpu(0.8)}, {"rate": 1100.0, "cpu": cpu(0.9)}], 200, 500),
        fanout.section({"pages": 200, "answers": 20, "tokens": 700, "window_s": 10.0, "open_s": 30.0, "idle_cpu": 1.0,
                        "watching_cpu": 10.0, "streaming_cpu": 40.0, "running": 20, "start_spread_s": 0.2,
                        "idle_rss": 100 << 20,
                        "live_rss": 300 << 20, "fds": 250, "answer_updates": [80, 90], "watcher_updates": [10, 12],
                        "duration_s": 14.0, "totals_ok": 200, "answers_ok": 20, "stuck": 1, "reloads": 2},
                       {"pages": 5, "answers": 5, "browser_updates": [7] * 5, "light_updates": [7] * 5,
                        "browser_totals": ["Total requests\n5\n5 done"] * 5, "light_totals": ["Total requests55 done"] * 5}),
        sse_scale.section({"clients": 1000, "jobs": 50, "tokens": 200, "rss_before": 1 << 27, "fds_before": 30,
                           "redis_before": {"app": 4, "workers": 18}, "rss_during": 1 << 28, "fds_during": 1030,
                           "redis_during": {"app": 5, "workers": 18}, "connected_s": 5.0, "streamed_s": 12.0,
                           "redis_back_s": 0.5, "redis_rest": 10, "redis_after": {"app": 4, "workers": 30}, "rss_after": 1 << 28,
                           "fds_after": 32, "ok": 980, "problems": [], "stuck": 1, "on_stuck": 20}),
        machine_cost.section({"seconds": 8.0, "windows": [1.0, 1.2, 0.9], "app": 0.3, "workers": 0.5, "redis": 0.2,
                              "total": 1.0},
                             {"seconds": 8.0, "windows": [2.0, 2.1, 1.9], "main": 1.6, "redis": 0.4, "total": 2.0},
                             {"tokens": 2000, "seconds": 12.0, "plain_seconds": 11.0,
                              **{kind: {name: 0.5 for name in machine_cost.METRICS}
                                 for kind in ("streamed", "idle", "plain")}}),
        long_queue.section({"waiting": 10_000, "reps": 100, "fill_rate": 900.0,
                            "small": {name: summary(0.002) for name in long_queue.PROBES},
                            "large": {name: summary(0.0021) for name in long_queue.PROBES}}),
    ]
    report = run.render(sections, quick=True, load_before="1", load_after="1", seconds=60)
    assert report.count("\n## ") == len(sections) + 2  # the summary, every section, the real model
    assert "{" not in report.split("## Summary")[1].split("## a.")[0]


def test_the_idle_figures_render_without_the_whole_app_run():
    idle = {"seconds": 8.0, "windows": [1.0], "app": 0.3, "workers": 0.5, "redis": 0.2, "total": 1.0}
    section = machine_cost.section(idle, None, None)
    assert "| split |" in section.body and "| whole |" not in section.body
    assert [row[0] for row in section.summary] == ["e. idle CPU (app + workers + Redis)"]
