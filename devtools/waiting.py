"""Waiting for a condition instead of sleeping for a guess: the one poll loop of tests, benchmarks and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20, what: str = "", interval: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy and return that value; AssertionError after ``timeout`` seconds
    (a condition that never came is a failed expectation). A predicate may raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)
