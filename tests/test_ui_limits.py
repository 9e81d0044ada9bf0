"""Per-client limits on real Redis: the chat box's budget per browser user, the API's per address."""

import pytest

from tasks import jobs
from tasks.settings import settings
from ui import limits


def test_a_user_over_the_limit_is_refused_and_nothing_is_created(r):
    settings.api_rate_per_min = 3
    for i in range(3):
        limits.submit_for_user(f"m{i}", user="alice")
    with pytest.raises(jobs.JobError) as refused:
        limits.submit_for_user("one too many", user="alice")
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert len(r.keys("qc:job:*")) == 3
    limits.submit_for_user("bob has his own budget", user="bob")
    assert len(r.keys("qc:job:*")) == 4


def test_zero_turns_the_limit_off(r):
    settings.api_rate_per_min = 0
    for i in range(50):
        limits.check("user:carol")
    assert not r.keys("qc:rl:*")
