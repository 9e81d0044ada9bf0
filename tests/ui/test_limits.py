"""Per-identity limits on real Redis: request budgets (sliding window), priority ceilings, daily quotas, and the
open streams per client."""

import asyncio

import pytest

from tasks.identities import Identity
from tasks.settings import settings
from tasks.store import JobError
from ui import limits

ALICE = Identity("browser", "b:alice", "browser")
BOB = Identity("browser", "b:bob", "browser")


def test_a_user_over_the_limit_is_refused_and_nothing_is_created(r):
    settings.api_rate_per_min = 3

    async def main() -> None:
        for i in range(3):
            await limits.submit_as(ALICE, f"m{i}")
        with pytest.raises(JobError) as refused:
            await limits.submit_as(ALICE, "one too many")
        assert refused.value.status == 429 and refused.value.code == "rate_limited"
        assert 0 < refused.value.params["retry_after"] <= 60
        assert len(r.keys("qc:job:*")) == 3
        await limits.submit_as(BOB, "bob has his own budget")
        assert len(r.keys("qc:job:*")) == 4
    asyncio.run(main())


def test_zero_turns_the_limit_off(r):
    settings.api_rate_per_min = 0

    async def main() -> None:
        for _ in range(50):
            await limits.check("user:carol")
    asyncio.run(main())
    assert not r.keys("qc-limits*")


def test_a_priority_above_the_ceiling_is_refused_not_downgraded(r):
    modest = Identity("key", "k:modest", "modest", max_priority="normal")

    async def main() -> None:
        with pytest.raises(JobError) as refused:
            await limits.submit_as(modest, "urgent!", priority="high")
        assert (refused.value.status, refused.value.code, refused.value.params["allowed"]) == \
            (403, "priority_not_allowed", "normal")
        assert not r.keys("qc:job:*")
        await limits.submit_as(modest, "fine", priority="low")
    asyncio.run(main())


def test_a_daily_quota_ends_the_day_and_says_when(r):
    settings.api_rate_per_min = 0
    metered = Identity("key", "k:metered", "metered", quota_per_day=2)

    async def main() -> None:
        await limits.submit_as(metered, "one")
        await limits.submit_as(metered, "two")
        with pytest.raises(JobError) as refused:
            await limits.submit_as(metered, "three")
        assert (refused.value.status, refused.value.code) == (429, "quota_exceeded")
        assert len(r.keys("qc:job:*")) == 2
    asyncio.run(main())


def test_open_streams_per_client_are_counted_and_released():
    settings.max_streams_per_client = 2
    first, second = limits.stream_slot(ALICE), limits.stream_slot(ALICE)
    with pytest.raises(JobError) as refused:
        limits.stream_slot(ALICE)
    assert (refused.value.status, refused.value.code) == (429, "too_many_streams")
    limits.stream_slot(BOB).release()
    first.release()
    first.release()  # twice is once
    limits.stream_slot(ALICE).release()
    second.release()
    assert not limits.StreamSlot.open


def test_opening_pages_counts_against_the_same_budget_as_the_api(r):
    settings.api_rate_per_min = 3
    closes = [limits.open_page(ALICE, "page 1"), limits.open_page(ALICE, "page 2")]  # the page builder's own way
    asyncio.run(limits.check_identity(ALICE))  # an API request: the third of the minute
    with pytest.raises(JobError) as refused:
        limits.open_page(ALICE, "page 3")
    assert (refused.value.status, refused.value.code) == (429, "rate_limited")
    assert 0 < refused.value.params["retry_after"] <= 60 and "Try again in" in str(refused.value)
    for close in closes:
        close()
    assert not limits.StreamSlot.open
