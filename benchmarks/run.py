"""queuechat's benchmarks against the targets of issue 14, measured side by side in one run.

    uv run python -m benchmarks.run            # the full run (~5–7 min), writes docs/benchmarks.md
    uv run python -m benchmarks.run --quick    # a smoke check with small sizes (< 3 min)

This module only composes the sections (one module each) and writes the report:

a. ``ttft``          time to first token added by the queue, per hop, vs a direct pooled call to the LLM
b. ``pipeline``      jobs/s with an instant LLM and the cap lifted vs a bare Dramatiq no-op; exactly-once outcome
c. ``fanout``        200 live pages on NiceGUI's socket.io protocol while 20 answers stream; a small Chromium check
d. ``sse_scale``     1000 SSE clients on 50 jobs: memory, fds, tokens in order, Redis connections
e. ``machine_cost``  idle CPU of app + workers + Redis; a page's CPU for a long answer vs plain text
f. ``long_queue``    10,000 waiting jobs vs 10: submit, position, the views
g. the real model: ``benchmarks/real_model`` and its own report, docs/real-model.md (not run here)

Everything runs on loopback in a private stack (:mod:`devtools.stack` through :mod:`benchmarks.harness`): nothing
of the user's is touched, and every process started is stopped at the end. A section that fails is reported as
failed, with its error, and the run goes on.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import fanout, long_queue, machine_cost, pipeline, sse_scale, ttft
from benchmarks.common import FULL, QUICK, Section, Sizes, log
from benchmarks.harness import (
    Stack,
    TimeUp,
    command_line,
    exit_code,
    load_average,
    log_problems,
    machine,
    now_utc,
    table,
    time_bound,
)
from devtools.processes import ROOT

REPORT = ROOT / "docs" / "benchmarks.md"
ORDER = ("a", "b", "c", "d", "e", "f")
TITLES = {"a": "a. Time to first token added by the queue", "b": "b. Pipeline throughput",
          "c": "c. Fan-out to live pages, without Chromium", "d": "d. SSE at scale",
          "e": "e. What it costs the machine", "f": "f. A long queue"}


class Sections:
    """The sections measured so far; one that raises is kept as a failure and the run goes on. Once the run's time
    bound is reached, what is left is skipped, so that the report of what was measured is still written (in the
    grace the time bound leaves for the clean-up)."""

    def __init__(self) -> None:
        self.done: dict[str, Section] = {}
        self.timed_out = False

    def run(self, key: str, make: Callable[[], Section]) -> None:
        log(f"{TITLES[key]} …")
        try:
            if self.timed_out:
                raise TimeUp("skipped: the run had reached its time bound")
            section = make()
        except Exception as error:  # noqa: BLE001 - reported in the report, the other sections still run
            self.timed_out = self.timed_out or isinstance(error, TimeUp)
            traceback.print_exc()
            section = Section(TITLES[key], f"**This section failed**: `{type(error).__name__}: {error}`\n",
                              [[TITLES[key], "—", "failed", "—", "**not measured**"]])
        self.done[key] = section
        print(f"\n## {section.title}\n\n{section.body}", flush=True)

    def attempt(self, measure: Callable[[], object]) -> object:
        """A measurement that may fail without failing its section: its error, printed, stands for its figures."""
        try:
            if self.timed_out:
                raise TimeUp("skipped: the run had reached its time bound")
            return measure()
        except Exception as error:  # noqa: BLE001 - the section says what is missing
            self.timed_out = self.timed_out or isinstance(error, TimeUp)
            traceback.print_exc()
            return error


def run(sizes: Sizes) -> tuple[list[Section], list[str], bool]:
    """The sections, in an order that needs few worker restarts; the report lists them a to f."""
    sections = Sections()
    settings_env = {"QUEUE_CONCURRENCY": "1000", "QUEUE_MAX_WAITING": str(sizes.scale_waiting + 5000),
                    "QUEUE_MAX_WAITING_PER_USER": "100000"}
    with Stack("run", **settings_env) as stack:
        log(f"private Redis on {stack.redis_server.url}, fake LLM on {stack.fake.url}")
        whole = sections.attempt(lambda: machine_cost.measure_idle_whole(stack, sizes.idle_windows, sizes.idle_window_s))
        app = stack.start_app("--no-workers")
        log(f"app on {app.url}")
        with stack.workers(processes=2, threads=8) as workers:
            idle = sections.attempt(lambda: machine_cost.measure_idle_split(stack, app, workers, sizes.idle_windows,
                                                                            sizes.idle_window_s))
            sections.run("a", lambda: ttft.section(ttft.measure(stack, app.url, sizes.ttft_reps, sizes.ttft_warmup,
                                                                 sizes.idle_pause_s)))
        sections.run("b", lambda: pipeline.section(
            *pipeline.measure(stack, sizes.pipeline_jobs, sizes.noop_messages, sizes.throughput_reps),
            sizes.pipeline_jobs, sizes.noop_messages))
        with stack.workers(processes=2, threads=32) as workers:
            sections.run("c", lambda: fanout.section(
                fanout.measure(stack, app, sizes.fanout_pages, sizes.fanout_answers, sizes.fanout_window_s),
                _figures(sections.attempt(
                    lambda: fanout.chromium_check(stack, app, sizes.chromium_pages, sizes.fanout_window_s)))))
            sections.run("d", lambda: sse_scale.section(
                sse_scale.measure(stack, app, workers, sizes.sse_clients, sizes.sse_jobs, sizes.sse_tokens)))
            sections.run("e", lambda: machine_cost.section(
                _value(idle), _figures(whole),
                _figures(sections.attempt(lambda: machine_cost.measure_page(stack, app, sizes.page_tokens)))))
        sections.run("f", lambda: long_queue.section(
            long_queue.measure(stack, app.url, sizes.scale_waiting, sizes.scale_reps)))
        problems = log_problems(app.output())
    return [sections.done[key] for key in ORDER if key in sections.done], problems, sections.timed_out


def _value(result: object) -> object:
    """A measurement's figures, or its error raised again where a section needs them."""
    if isinstance(result, Exception):
        raise result
    return result


def _figures(result: object) -> object:
    """A measurement's figures, or None when it failed (its section then says it did not run)."""
    return None if isinstance(result, Exception) else result


def problems_section(problems: list[str]) -> Section:
    """The app's ERROR records, alike ones counted together (by their last line), each shown once in full."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        groups.setdefault(problem.strip().splitlines()[-1], []).append(problem)
    parts = [f"{len(problems)} ERROR record(s) or traceback(s) in the app's log during the run:\n"]
    for last_line, alike in groups.items():
        parts.append(f"* {len(alike)} × `{last_line[:200]}`, for example:\n\n```\n{alike[0][-3000:]}\n```\n")
    return Section("Problems seen in the app log", "\n".join(parts))


REAL_MODEL = Section("g. A real model", """Against a real small model (a GGUF under llama-cpp-python's OpenAI-compatible server), time to first token and
tokens/s direct vs through queuechat have their own tour and report: `uv run python -m benchmarks.real_model`
(its own uv environment; not run by this script) writes [docs/real-model.md](real-model.md).
""")


def render(sections: list[Section], quick: bool, load_before: str, load_after: str, seconds: float) -> str:
    info = machine()
    mode = "**quick smoke run: small sizes, not representative**" if quick else "full run"
    rows = [row for section in sections for row in section.summary]
    header = f"""# Benchmarks

Measured with `{command_line()}` on {now_utc()} ({mode}, {seconds / 60:.1f} min).
Regenerate with `uv run python -m benchmarks.run` (full, ~5–7 min) or `--quick` (smoke check, < 3 min); the
file is rewritten by the script. Targets: issue 14. Baselines: the previous report (2026-11-28), as quoted in
the issue.

**Machine**: {info['cores']} cores (`os.cpu_count()`), {info['cpu']}, {info['memory']} RAM, {info['os']},
Python {info['python']}. **Load average** (1/5/15 min): {load_before} before, {load_after} after — other work
shares these cores, so compare figures within one run (each has its baseline measured beside it).

Everything ran on loopback in a private stack started by the script: `redis-server` on a free port in a
temporary folder, the fake LLM (`devtools/fake_llm`) in the benchmark process, `main.py --no-workers` and the
`dramatiq` CLI as subprocesses with the environment `main.py` gives its workers
(`tasks.broker.worker_environment`). Settings: `QUEUE_RATE_PER_MIN=0`, `API_RATE_PER_MIN=0` (we measure the queue,
not the limits that protect it), `QUEUE_CONCURRENCY=1000` (the cap lifted), `QUEUE_MAX_WAITING` and
`QUEUE_MAX_WAITING_PER_USER` above the long queue's depth. Percentiles are nearest-rank (a value observed).

## Summary

{table(["target", "aim", "measured", "baseline", "verdict"], rows)}
"""
    return header + "".join(f"\n## {s.title}\n\n{s.body}" for s in [*sections, REAL_MODEL])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke check in < 3 minutes")
    parser.add_argument("--output", type=Path, default=REPORT, help=f"where to write the report ({REPORT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    load_before, started = load_average(), time.monotonic()
    with time_bound(sizes.bound_s):
        sections, problems, timed_out = run(sizes)
    if problems:
        sections.append(problems_section(problems))
    report = render(sections, args.quick, load_before, load_average(), time.monotonic() - started)
    args.output.write_text(report)
    print(report)
    log(f"wrote {args.output}")
    return 124 if timed_out else 0


if __name__ == "__main__":
    sys.exit(exit_code(main))
