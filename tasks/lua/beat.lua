-- A worker process's heartbeat, from its janitor once a second, and what the janitor needs to keep invariant 6 in
-- the same round trip. ARGV: cfg, worker id, Dramatiq's key of the tickets it holds, and of the delayed ones.
-- Returns how many tickets are missing: waiting jobs beyond the live tickets (0 or more).
redis.call('ZADD', P .. 'workers', now_ms(), ARGV[2])
local missing = redis.call('ZCARD', P .. 'waiting') - redis.call('HLEN', ARGV[3]) - redis.call('HLEN', ARGV[4])
return math.max(0, missing)
