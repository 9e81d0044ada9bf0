"""The admission layer: who waits, who runs, in which order. Every decision is one atomic Lua step in Redis.

Dramatiq's Redis broker has no priorities, so Dramatiq messages here are interchangeable *tickets*: a
ticket that a worker runs asks this module for the best waiting job and runs that one. The order is
decided here and nowhere else.

Invariants (each Lua script keeps them; the tests in tests/test_queue*.py check them):

1. A job is in at most one of ``qc:waiting`` (sorted by score), ``qc:leases`` (running, scored by lease
   expiry) and ``qc:delayed`` (backing off before a retry, scored by the latest time it must be back).
2. ``score = level * 10^12 + seq``: strict priority between levels, FIFO within one. A job keeps its score
   for life, so a job that comes back (retry, crash) goes to the front of its level.
3. ``ZCARD qc:leases <= cap``; a job starts only when ``qc:starts`` holds fewer than ``rate`` starts in the
   last 60 s. Holding back never counts as a retry.
4. Every admission increments the job's ``epoch``. Writes from a worker carry its epoch and are ignored
   when it is stale, so a worker that lost its lease (stalled, or presumed dead) can't mix its tokens in.
5. A job reaches exactly one terminal status (completed, failed, cancelled); terminal writes check it and
   count it in ``qc:totals`` in the same step, so the totals always agree with the job records.
6. There are at least as many tickets as waiting and parked jobs. Submission sends one, so does the janitor
   for each job it puts back; it also tops them up once a second (see :mod:`tasks.janitor`); surplus tickets
   find nothing and end.

The position of a job is its ``ZRANK`` in ``qc:waiting`` (O(log n)): the number of jobs that start before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.connection import KEY_PREFIX

PRIORITY_LEVELS = {"high": 0, "normal": 1, "low": 2}
TERMINAL = ("completed", "failed", "cancelled")

WAITING = KEY_PREFIX + "waiting"
LEASES = KEY_PREFIX + "leases"
DELAYED = KEY_PREFIX + "delayed"
STARTS = KEY_PREFIX + "starts"
WAKE = KEY_PREFIX + "wake"
SEQ = KEY_PREFIX + "seq"
EVENTS = KEY_PREFIX + "events"
TOTALS = KEY_PREFIX + "totals"   # jobs submitted and ended, by status
QUEUE_CHANGED = "*queue"  # published on EVENTS when positions may have moved


def job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def stream_key(job_id: str) -> str:
    return f"{KEY_PREFIX}stream:{job_id}"


# Shared Lua prelude: the Redis clock (one clock for every host) and the stream/event helpers.
_PRELUDE = """
local P = '""" + KEY_PREFIX + """'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(id, kind, data, epoch)
  redis.call('XADD', P .. 'stream:' .. id, '*', 'k', kind, 'd', data, 'a', epoch)
end
local function snapshot(job)
  local f = redis.call('HMGET', job, 'status', 'phase', 'progress', 'attempts', 'error', 'error_code')
  return cjson.encode({status=f[1], phase=f[2], progress=tonumber(f[3]) or 0,
                       attempts=tonumber(f[4]) or 0, error=f[5] or cjson.null, error_code=f[6] or cjson.null})
end
"""

SUBMIT = _PRELUDE + """
-- KEYS: job, waiting, seq, totals, conversation, history, user_conversations, conversation_owners
-- ARGV: id, max_waiting, level, history_size, conversation_id, user, field, value, ...
-- One step, so a refused job (queue full) leaves nothing behind. Suggestions have no conversation.
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return {0, 0} end
local now = now_ms()
local seq = redis.call('INCR', KEYS[3])
local score = tonumber(ARGV[3]) * 1000000000000 + seq
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'score', score, 'epoch', 0, 'attempts', 0, 'progress', 0,
           'status', 'queued', 'phase', 'queued', 'created_at', now, unpack(fields))
redis.call('ZADD', KEYS[2], score, ARGV[1])
redis.call('HINCRBY', KEYS[4], 'submitted', 1)
if ARGV[5] ~= '' then
  redis.call('RPUSH', KEYS[5], ARGV[1])
  redis.call('HSETNX', KEYS[8], ARGV[5], ARGV[6])
  redis.call('ZADD', KEYS[7], now, ARGV[5])
  redis.call('LPUSH', KEYS[6], ARGV[1])
  redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[4]) - 1)
end
emit(ARGV[1], 'status', snapshot(KEYS[1]), 0)
redis.call('PUBLISH', P .. 'events', ARGV[1])
redis.call('PUBLISH', P .. 'events', '*queue')
return {1, redis.call('ZRANK', KEYS[2], ARGV[1])}
"""

ADMIT = _PRELUDE + """
-- KEYS: waiting, leases, starts   ARGV: cap, rate_per_min, lease_ttl_ms
-- Returns {'ok', id, epoch} | {'empty'} | {'busy'} | {'rate', ms_until_a_start_is_allowed}
if redis.call('ZCARD', KEYS[1]) == 0 then return {'empty'} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return {'busy'} end
local now = now_ms()
local rate = tonumber(ARGV[2])
if rate > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[3]) >= rate then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    return {'rate', tonumber(oldest[2]) + 60000 - now}
  end
end
local id = redis.call('ZPOPMIN', KEYS[1])[1]
local job = P .. 'job:' .. id
local epoch = redis.call('HINCRBY', job, 'epoch', 1)
redis.call('HINCRBY', job, 'attempts', 1)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), id)
if rate > 0 then redis.call('ZADD', KEYS[3], now, id .. ':' .. epoch) end
redis.call('HSET', job, 'status', 'running', 'phase', 'starting', 'progress', 5, 'cancel', 0)
redis.call('HSETNX', job, 'started_at', now)
emit(id, 'reset', '', epoch)
emit(id, 'status', snapshot(job), epoch)
redis.call('PUBLISH', P .. 'events', '*queue')
redis.call('PUBLISH', P .. 'events', id)
return {'ok', id, epoch}
"""

HEARTBEAT = _PRELUDE + """
-- KEYS: job, leases   ARGV: id, epoch, lease_ttl_ms.  Renews the lease; returns {owned, cancel requested}.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] or not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return {0, 0}
end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[3]), ARGV[1])
return {1, tonumber(redis.call('HGET', KEYS[1], 'cancel')) or 0}
"""

PROGRESS = _PRELUDE + """
-- KEYS: job   ARGV: id, epoch, phase, progress.  Records a phase change for the UI and SSE.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'phase', ARGV[3], 'progress', ARGV[4])
emit(ARGV[1], 'status', snapshot(KEYS[1]), ARGV[2])
redis.call('PUBLISH', P .. 'events', ARGV[1])
return 1
"""

APPEND = _PRELUDE + """
-- KEYS: job   ARGV: id, epoch, kind (token|think), text, progress.  One streamed chunk.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
emit(ARGV[1], ARGV[3], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[1], 'progress', ARGV[5])
redis.call('HSETNX', KEYS[1], 'first_token_at', now_ms())
return 1
"""

FINISH = _PRELUDE + """
-- KEYS: job, leases, wake   ARGV: id, epoch, status, phase, stream_ttl_s, field, value, ...
-- The single way a running job ends. Returns 1 when this call ended it, 0 when it was not ours to end.
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] or status ~= 'running' then return 0 end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
local progress = redis.call('HGET', KEYS[1], 'progress')
if ARGV[3] == 'completed' then progress = 100 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'phase', ARGV[4], 'progress', progress,
           'finished_at', now_ms(), unpack(fields))
redis.call('HINCRBY', P .. 'totals', ARGV[3], 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], 0, 99)
emit(ARGV[1], 'done', snapshot(KEYS[1]), ARGV[2])
redis.call('EXPIRE', P .. 'stream:' .. ARGV[1], tonumber(ARGV[5]))
redis.call('PUBLISH', P .. 'events', ARGV[1])
redis.call('PUBLISH', P .. 'events', '*queue')
return 1
"""

BACK_OFF = _PRELUDE + """
-- KEYS: job, leases, delayed, wake   ARGV: id, epoch, deadline_ms_from_now, error
-- A transient failure: free the slot and park the job until its retry ticket (or the janitor) returns it.
-- Returns 1 (parked), 0 (not this worker's job any more) or -1: a cancel is pending, so the job is not parked
-- (ADMIT would clear the flag and run it again) and the worker ends it as cancelled instead.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  return 0
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return -1 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'phase', 'retrying', 'error', ARGV[4])
redis.call('LPUSH', KEYS[4], ARGV[1])
redis.call('LTRIM', KEYS[4], 0, 99)
emit(ARGV[1], 'status', snapshot(KEYS[1]), ARGV[2])
redis.call('PUBLISH', P .. 'events', ARGV[1])
redis.call('PUBLISH', P .. 'events', '*queue')
return 1
"""

RETURN = _PRELUDE + """
-- KEYS: job, delayed, waiting   ARGV: id.  A retry ticket brings its parked job back to its old place.
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'score'), ARGV[1])
redis.call('HSET', KEYS[1], 'phase', 'queued')
emit(ARGV[1], 'status', snapshot(KEYS[1]), redis.call('HGET', KEYS[1], 'epoch'))
redis.call('PUBLISH', P .. 'events', ARGV[1])
redis.call('PUBLISH', P .. 'events', '*queue')
return 1
"""

CANCEL = _PRELUDE + """
-- KEYS: job, waiting, delayed, leases   ARGV: id
-- Returns 'missing' | 'final' | 'cancelled' (was waiting) | 'cancelling' (running: its worker stops it)
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'final' end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 or redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'phase', 'cancelled', 'finished_at', now_ms())
  redis.call('HINCRBY', P .. 'totals', 'cancelled', 1)
  emit(ARGV[1], 'done', snapshot(KEYS[1]), redis.call('HGET', KEYS[1], 'epoch'))
  redis.call('PUBLISH', P .. 'events', ARGV[1])
  redis.call('PUBLISH', P .. 'events', '*queue')
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'cancel', 1)
redis.call('PUBLISH', P .. 'events', ARGV[1])
return 'cancelling'
"""

REAP = _PRELUDE + """
-- KEYS: leases, waiting, delayed, wake   ARGV: stream_ttl_s
-- Jobs whose worker stopped renewing (killed, stalled) and parked jobs whose retry ticket never came back
-- return to the front of their level with a new epoch; a cancel that was pending is honoured instead.
-- Returns {ids put back (each gets a ticket at once), ids ended as cancelled (each to be counted)}.
local now = now_ms()
local back = {}
local ended = {}
local function requeue(id, from)
  redis.call('ZREM', from, id)
  local job = P .. 'job:' .. id
  if redis.call('HGET', job, 'cancel') == '1' then
    redis.call('HSET', job, 'status', 'cancelled', 'phase', 'cancelled', 'finished_at', now)
    redis.call('HINCRBY', P .. 'totals', 'cancelled', 1)
    emit(id, 'done', snapshot(job), redis.call('HGET', job, 'epoch'))
    redis.call('EXPIRE', P .. 'stream:' .. id, tonumber(ARGV[1]))
    ended[#ended + 1] = id
  elseif redis.call('HGET', job, 'status') == 'running' or redis.call('HGET', job, 'phase') == 'retrying' then
    local epoch = redis.call('HINCRBY', job, 'epoch', 1)
    redis.call('HSET', job, 'status', 'queued', 'phase', 'recovering')
    redis.call('ZADD', KEYS[2], redis.call('HGET', job, 'score'), id)
    emit(id, 'status', snapshot(job), epoch)
    back[#back + 1] = id
  end
  redis.call('PUBLISH', P .. 'events', id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do requeue(id, KEYS[1]) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do requeue(id, KEYS[3]) end
if #back > 0 then
  redis.call('LPUSH', KEYS[4], unpack(back))
  redis.call('LTRIM', KEYS[4], 0, 99)
  redis.call('PUBLISH', P .. 'events', '*queue')
end
return {back, ended}
"""


@dataclass(frozen=True)
class Admission:
    """What the admission step decided for a ticket."""

    outcome: str  # ok | empty | busy | rate
    job_id: str | None = None
    epoch: int = 0
    retry_in_ms: int = 0


def parse_admission(reply: list) -> Admission:
    outcome = reply[0]
    if outcome == "ok":
        return Admission("ok", reply[1], int(reply[2]))
    if outcome == "rate":
        return Admission("rate", retry_in_ms=int(reply[1]))
    return Admission(outcome)


class Scripts:
    """The Lua steps registered on one client (sync or asyncio): ``Scripts(client).admit(...)``."""

    def __init__(self, client) -> None:
        self.submit = client.register_script(SUBMIT)
        self.admit = client.register_script(ADMIT)
        self.heartbeat = client.register_script(HEARTBEAT)
        self.progress = client.register_script(PROGRESS)
        self.append = client.register_script(APPEND)
        self.finish = client.register_script(FINISH)
        self.back_off = client.register_script(BACK_OFF)
        self.return_ = client.register_script(RETURN)
        self.cancel = client.register_script(CANCEL)
        self.reap = client.register_script(REAP)


def position(client, job_id: str) -> int | None:
    """Jobs that start before this one (0 = next), or None when it is not waiting. O(log n)."""
    return client.zrank(WAITING, job_id)
