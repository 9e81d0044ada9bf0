"""Nothing that a test run starts outlives it, however the run ends.

A pytest session of its own (``leftover_session.py``) starts the session's Redis, the fake LLM, a worker pool
(paused, kept for later) and ``main.py`` with its embedded Redis and workers; then it is killed with SIGTERM or
SIGKILL, with no chance to clean up. Every process it started carries a marker in its environment, and the
Redis servers (whose process title overwrites their environment) work in folders inside the run's temporary
folder; within a few seconds none of them may be left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from devtools.figures import processes_with
from devtools.processes import ROOT, clean_environ
from devtools.waiting import wait_for

pytestmark = pytest.mark.workers
MARKER = "QC_LEFTOVER_TEST_MARKER"


def processes_of(marker: str, folder: Path) -> list[psutil.Process]:
    """Live processes of the run: with the marker, or working in the run's temporary folder."""
    found = set(processes_with(MARKER, marker))
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()).is_relative_to(folder):
                found.add(process)
    return list(found)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_test_run_leaves_no_process_behind(signum, tmp_path):
    marker, folder = uuid.uuid4().hex, tmp_path / "run"
    session = subprocess.Popen([sys.executable, "-m", "pytest", "tests/devtools/leftover_session.py", "-s", "-q",
                                "-p", "no:cacheprovider", "-n", "0", "--basetemp", str(folder)], cwd=ROOT,
                               env=clean_environ(**{MARKER: marker}), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    output = []
    try:
        while not output or ("READY" not in output[-1] and output[-1]):
            output.append(session.stdout.readline())
        assert "READY" in output[-1], "".join(output)
        commands = [" ".join(process.cmdline()) for process in processes_of(marker, folder)]
        assert sum("redis-server" in command for command in commands) == 2, commands  # the session's, main.py's
        assert sum("dramatiq" in command for command in commands) == 5, commands  # the pool (1 + 2), main.py's (1 + 1)
        assert sum("main.py" in command for command in commands) == 1, commands
        os.kill(session.pid, signum)
        session.wait(10)
        wait_for(lambda: not processes_of(marker, folder), timeout=20, interval=0.2,
                 what="every process of the killed run to be gone")
    finally:
        for process in processes_of(marker, folder):  # a failed test must not leave them either
            process.kill()
        session.kill()
        session.wait()
