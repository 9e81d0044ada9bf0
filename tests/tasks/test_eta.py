"""When a waiting job starts: the estimate never promises sooner than the slots and the rate window allow."""

from __future__ import annotations

import httpx

from devtools.waiting import wait_for
from tasks.eta import Clock, eta_ms, eta_seconds
from tests.helpers import raw, redis_ms, wait_over

NOW = 1_000_000


def clock(cap: int = 1, rate: int = 0, service: float = 10_000, running=(), starts=()) -> Clock:
    return Clock(NOW, cap, rate, service, tuple(running), tuple(starts))


def test_one_slot_each_job_waits_for_the_ones_ahead_and_the_running_call():
    busy = clock(running=[NOW - 4_000])  # 6 s left of a 10 s call
    assert [eta_seconds(p, busy) for p in range(4)] == [6, 16, 26, 36]


def test_estimates_count_down_as_the_running_call_progresses():
    earlier = eta_ms(2, clock(running=[NOW - 1_000]))
    later = eta_ms(2, clock(running=[NOW - 5_000]))
    assert later == earlier - 4_000


def test_free_slots_start_the_next_jobs_now_and_distinct_slots_give_distinct_estimates():
    two = clock(cap=3, running=[NOW - 2_000])  # two slots free, one frees in 8 s
    assert [eta_seconds(p, two) for p in range(6)] == [0, 0, 8, 10, 10, 18]


def test_a_call_running_longer_than_usual_is_not_promised_to_end_at_once():
    assert eta_seconds(0, clock(running=[NOW - 60_000])) == 3  # a quarter of the 10 s service time


def test_the_rate_window_holds_starts_back_even_with_free_slots():
    full = clock(cap=5, rate=2, starts=[NOW - 30_000, NOW - 10_000])
    # position 0 waits until the oldest start leaves the window, position 1 for the next, then a minute each
    assert [eta_seconds(p, full) for p in range(4)] == [30, 50, 90, 110]
    empty = clock(cap=5, rate=2)
    assert [eta_seconds(p, empty) for p in range(5)] == [0, 0, 60, 60, 120]


def test_the_later_of_slots_and_rate_wins():
    both = clock(cap=1, rate=10, running=[NOW - 1_000], service=30_000)
    assert eta_seconds(0, both) == 29
    assert eta_seconds(None, both) is None


def test_the_median_of_recent_service_times_is_used():
    made = Clock.of(NOW, 1, 0, [1_000, 9_000, 2_000], [], [])
    assert made.service_ms == 2_000
    assert Clock.of(NOW, 1, 0, [], [], []).service_ms > 0


# --- with real workers and the HTTP API (issue 10, point 7) --------------------------------------------------

def test_with_a_small_rate_a_waiting_job_is_never_promised_a_start_before_it_gets_one(workers, app_factory, r,
                                                                                     fake_llm):
    workers.start(QUEUE_RATE_PER_MIN="2")
    app = app_factory("--no-workers", QUEUE_RATE_PER_MIN="2")
    with httpx.Client(base_url=app.url, timeout=10) as api:
        def post(message: str) -> str:
            return api.post("/api/chat", json={"message": message}).json()["job_id"]

        wait_over(post("one [[tokens=2]]"), post("two [[tokens=2]]"))  # two starts: the window is full
        # A minute is long to wait in a test: the window is moved on to its last 6 s, for admission and estimates
        # alike (both read the same starts).
        now = redis_ms()
        r.zadd("qc:starts", {member: now - 54_000 for member in r.zrange("qc:starts", 0, -1)})
        head, second = post("head [[tokens=2]]"), post("second [[tokens=2]]")
        promised: dict[str, list[tuple[int, int]]] = {head: [], second: []}

        def sample() -> bool:
            for job_id, promises in promised.items():
                asked_at = redis_ms()
                job = api.get(f"/api/jobs/{job_id}").json()
                if job["status"] == "queued":
                    promises.append((job["position"], asked_at + job["eta_seconds"] * 1000))
            return all(raw(job_id).get("started_at") for job_id in promised)

        wait_for(sample, timeout=30, interval=0.2, what="both jobs to start")
        wait_over(head, second)
    for job_id, promises in promised.items():
        start = int(raw(job_id)["started_at"])
        assert start - now >= 5000  # it did wait for the window
        early = [(position, start - at) for position, at in promises if at < start - 1500]
        assert promises and not early, (job_id == head, early)
    assert promised[head][0][0] == 0  # at the head of the line, with a free slot: only the window held it
