-- A worker process's once-a-second step, from its janitor: the REAP (reap() in the prelude), its heartbeat, and
-- what the janitor needs to keep invariant 6 — in one round trip. ARGV: cfg, worker id, Dramatiq's key of the
-- tickets it holds, and of the delayed ones.
-- Returns {ids put back, ids ended, tickets missing: waiting jobs beyond the tickets free to admit them (0 or
-- more)}. A ticket running a job (one per lease) will admit no other: it is not counted as free.
local now = now_ms()
local back, ended = reap(now)
redis.call('ZADD', P .. 'workers', now, ARGV[2])
local free = math.max(0, redis.call('HLEN', ARGV[3]) - redis.call('ZCARD', P .. 'leases'))
local missing = redis.call('ZCARD', P .. 'waiting') - free - redis.call('HLEN', ARGV[4])
return {back, ended, math.max(0, missing)}
