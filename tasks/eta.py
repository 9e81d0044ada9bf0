"""When will a waiting job start? A pure function of the queue's :class:`Clock`, read from Redis in one step.

The estimate never promises a start sooner than the limits allow:

* **slots**: each of the ``cap`` slots frees when its call has run a (median) service time — a free slot now, a
  running call ``service - elapsed`` from now (a call already running longer than that is given a quarter of a
  service time more: it is not known to be about to end) — and then takes the next job in line every service
  time. With
  every call taking the service time, the job at position ``k`` starts when slot ``k mod cap`` (soonest first)
  has served ``k div cap`` more jobs. So waiting jobs get distinct, growing estimates that count down as the
  running calls progress.
* **rate**: at most ``rate`` starts in any 60 s. The starts already in the window fix when the next ``rate`` may
  happen; every later start is 60 s after the one ``rate`` places before it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

DEFAULT_SERVICE_MS = 10_000.0  # before any call has finished


@dataclass(frozen=True)
class Clock:
    now_ms: int
    cap: int
    rate_per_min: int
    service_ms: float                    # median duration of recent LLM calls
    running_since: tuple[int, ...] = ()  # start times of the calls in flight (ms)
    recent_starts: tuple[int, ...] = ()  # starts in the last minute, oldest first (ms; with a rate only)

    @classmethod
    def of(cls, now_ms: int, cap: int, rate: int, service_times: list[int], running_since: list[int],
           recent_starts: list[int]) -> Clock:
        service = statistics.median(service_times) if service_times else DEFAULT_SERVICE_MS
        return cls(now_ms, cap, rate, float(service), tuple(sorted(running_since)), tuple(sorted(recent_starts)))


def eta_ms(position: int, clock: Clock) -> float:
    """Milliseconds until the job at ``position`` (0 = next) may start."""
    return max(_by_slots(position, clock), _by_rate(position, clock))


def eta_seconds(position: int | None, clock: Clock) -> int | None:
    """Whole seconds (rounded up), or None for a job that is not waiting."""
    if position is None:
        return None
    return math.ceil(eta_ms(position, clock) / 1000)


def _by_slots(position: int, clock: Clock) -> float:
    service, cap = clock.service_ms, max(1, clock.cap)
    busy = [max(service / 4, since + service - clock.now_ms) for since in clock.running_since][:cap]
    frees = sorted([0.0] * (cap - len(busy)) + busy)
    return frees[position % cap] + (position // cap) * service


def _by_rate(position: int, clock: Clock) -> float:
    rate = clock.rate_per_min
    if rate <= 0:
        return 0.0
    window = [s for s in clock.recent_starts if s > clock.now_ms - 60_000]
    nth = position % rate  # this start happens (position div rate) minutes after the nth of the next `rate`
    earlier = len(window) + nth - rate  # the start `rate` places before it, if it is already in the window
    first = clock.now_ms if earlier < 0 else max(clock.now_ms, window[earlier] + 60_000)
    return first - clock.now_ms + (position // rate) * 60_000
