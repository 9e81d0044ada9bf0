-- Release the leases of a worker process that is known to be dead (main.py saw it exit: the kernel closed its
-- LLM connections with it). Its leases are dated past the reap grace, so that the REAP that follows puts its
-- jobs back at once, instead of after the lease and the grace have run out. A job admitted again since (to
-- another worker) names that worker, and is left alone. ARGV: cfg, worker id. Returns how many were released.
local now, released = now_ms(), 0
for _, id in ipairs(redis.call('ZRANGE', P .. 'leases', 0, -1)) do
  if redis.call('HGET', job_key(id), 'worker') == ARGV[2] then
    redis.call('ZADD', P .. 'leases', 'XX', now - CFG.reap_grace_ms - 1, id)
    released = released + 1
  end
end
return released
