"""Redis stays bounded: every terminal path sets the expiries of what the job left (its record, its stream, its
conversation and history entries), so that after the retention nothing of hundreds of jobs is left."""

from __future__ import annotations

import time

from tasks import keys, queue
from tasks.settings import settings
from tasks.store import sync_store


def used_memory(r) -> int:
    """Bytes held by queuechat's keys (Dramatiq's tickets, which no worker takes here, are not ours to count);
    touching an expired key deletes it at once."""
    total = 0
    for key in list(r.scan_iter(count=1000)):
        if not key.startswith("qc-dramatiq:") and r.exists(key):
            total += r.memory_usage(key) or 0
    return total


def server_memory(r) -> int:
    """The whole server's, in one call: read before the first of the jobs expires, on a busy machine too."""
    return r.info("memory")["used_memory"]


def retain(seconds: int) -> int:
    """What a job leaves is kept ``seconds`` after it ends, from the next step on (the steps read the setting)."""
    settings.job_retention_hours = seconds / 3600
    settings.stream_ttl_seconds = seconds
    return seconds


def test_hundreds_of_submit_and_cancel_cycles_leave_nothing_once_retention_passes(r):
    settings.queue_max_waiting_per_user = 10_000
    store = sync_store()
    retain(1)  # the warm-up job's own keys are gone before the figure to compare with is taken
    store.submit("warm up", user="warm")  # the lines, counters and scripts every later job shares
    assert store.cancel(store.history("warm")[0].job_id) == "cancelled"
    time.sleep(1.5)
    retention = retain(6)  # the jobs are all still there when the loop ends (300 cycles took 3 s on a loaded box)
    before, server_before = used_memory(r), server_memory(r)
    prompt = "x" * settings.max_prompt_chars
    first = None
    for i in range(300):
        submitted = store.submit(prompt, user=f"user{i % 7}")
        first = first or submitted.job_id
        if i % 3 == 0:  # some start and end like a real answer, the rest are cancelled while waiting
            admission = queue.Admission.parse(store.scripts.admit("w"))
            store.scripts.finish(admission.job_id, admission.epoch, "completed", "done", 0, 0, "answer", "y" * 2000)
        else:
            assert store.cancel(submitted.job_id) == "cancelled"
    grown = server_memory(r) - server_before
    assert r.exists(keys.job(first)), "the first job was gone before the loop ended: no figure to compare"
    assert grown > 2_000_000  # the prompts are really there while retained (300 of 8000 characters)
    time.sleep(retention + 0.5)
    leftover = used_memory(r) - before
    assert leftover < 20_000, leftover  # figures: minute buckets, samples, usage, the capped wake list
    left = sorted(key for key in r.scan_iter(count=1000) if not key.startswith(("qc:m:", "qc:usage:")))
    assert not [key for key in left if key.startswith(("qc:job:", "qc:stream:", "qc:conv", "qc:history"))], left
