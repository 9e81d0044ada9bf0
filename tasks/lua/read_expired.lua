-- The running jobs whose lease has run out, each with the worker that holds it: main.py kills its own frozen
-- workers among them before the reap grace is over. ARGV: cfg.
-- Returns {ms until the next lease runs out (-1: no other lease), id, worker, id, worker, ...}: main.py looks
-- again then, not on a timer.
local now = now_ms()
local out = {-1}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', job_key(id), 'worker') or ''
end
local upcoming = redis.call('ZRANGEBYSCORE', P .. 'leases', '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if upcoming[2] then out[1] = tonumber(upcoming[2]) - now end
return out
