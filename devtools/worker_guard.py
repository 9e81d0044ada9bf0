"""Makes a dramatiq worker process die with its master, for actor modules other than ``tasks.actors`` (whose Janitor
does it): devtools runs e.g. ``dramatiq benchmarks.noop_actor devtools.worker_guard`` and each worker process imports
this module as it boots.

Dramatiq forks its worker processes, and a fork does not inherit the death signal that :func:`tasks.supervisor.spawn`
gave the master. A master that dies gracefully stops its workers itself; one that is killed outright (as a
paused pool is when the test run dies: a stopped process can only be killed) would leave them behind for good.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from tasks.supervisor import die_with_parent


def _guard() -> None:
    master = os.getppid()
    die_with_parent(signal.SIGKILL, master)  # exits at once if the master died since we read its pid
    with contextlib.suppress(psutil.Error):
        if "dramatiq" in " ".join(psutil.Process(master).cmdline()):
            return
    os._exit(1)  # adopted before we got here: the master was gone already


_guard()
