"""A bare Dramatiq actor that only counts: the baseline of the pipeline-throughput benchmark.

Run it exactly like queuechat's workers (``dramatiq benchmarks.noop_actor --processes 2 --threads 8``) on the
same Redis (``REDIS_URL``); each message adds one to :data:`COUNTER`, so the benchmark knows when N messages
have been processed. Its own namespace and queue keep it apart from queuechat's tickets. Dramatiq's default
middleware, nothing of queuechat's: the figure is what Dramatiq itself costs on this machine.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

COUNTER = "bench:noop:processed"
QUEUE = "bench-noop"

broker = RedisBroker(url=os.environ["REDIS_URL"], namespace="bench-noop")
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(os.environ["REDIS_URL"])


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    _client.incr(COUNTER)
