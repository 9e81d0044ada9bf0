"""The one fold from stream entries to a job's state."""

from __future__ import annotations

import json

from tasks.fold import JobState, newer

RECORD = {"id": "a" * 32, "kind": "chat", "user": "u", "priority": "high", "prompt": "hi", "model": "m",
          "conversation_id": "b" * 32, "status": "queued", "phase": "queued", "progress": "0", "attempts": "0",
          "created_at": "1000"}


def status(**fields) -> dict:
    return {"k": "status", "d": json.dumps({"status": "running", "phase": "generating", "progress": 10,
                                            "attempts": 1, **fields}), "a": "1"}


def test_tokens_fold_into_the_answer_and_a_reset_starts_it_afresh():
    job = JobState.from_record(RECORD, position=3)
    assert (job.position, job.waiting) == (3, True)
    applied = job.apply([("1-0", status()), ("1-1", {"k": "token", "d": "Hel", "a": "1"}),
                         ("1-2", {"k": "think", "d": "hmm", "a": "1"}), ("1-3", {"k": "token", "d": "lo", "a": "1"})])
    assert len(applied) == 4 and (job.answer, job.thinking, job.position) == ("Hello", "hmm", None)
    job.apply([("2-0", {"k": "reset", "d": "", "a": "2"}), ("2-1", {"k": "token", "d": "New", "a": "2"})])
    assert (job.answer, job.thinking, job.cursor) == ("New", "", "2-1")


def test_entries_already_folded_are_skipped():
    job = JobState.from_record(RECORD)
    job.apply([("5-0", {"k": "token", "d": "a", "a": "1"})])
    assert job.apply([("4-9", {"k": "token", "d": "old", "a": "1"}), ("5-0", {"k": "token", "d": "a", "a": "1"})]) == []
    assert job.answer == "a"


def test_snapshots_carry_cancelling_retrying_and_the_end():
    job = JobState.from_record(RECORD)
    job.apply([("1-0", status(cancel=True))])
    assert job.cancelling
    job.apply([("2-0", status(status="retrying", phase="retrying", cancel=False, retry_at=5_500, error="busy",
                              error_code="llm_busy"))])
    assert (job.status, job.retry_in(4_000), job.error_code, job.cancelling) == ("retrying", 2, "llm_busy", False)
    job.apply([("3-0", {"k": "done", "d": json.dumps({"status": "completed", "phase": "done", "progress": 100,
                                                      "attempts": 2, "done_reason": "length"}), "a": "2"})])
    assert (job.finished, job.done_reason, job.retry_at, job.error) == (True, "length", None, None)


def test_a_finished_record_carries_its_stored_answer_and_the_public_shape():
    job = JobState.from_record({**RECORD, "status": "completed", "phase": "done", "answer": "Final.",
                                "finished_at": "3000", "started_at": "2000"})
    body = job.public()
    assert (body["status"], body["answer"], body["position"], body["started_at"]) == \
        ("completed", "Final.", None, "1970-01-01T00:00:02.000+00:00")


def test_entry_ids_compare_numerically():
    assert newer("10-0", "9-5") and newer("5-10", "5-9") and not newer("5-1", "5-1") and newer("1-0", None)
